"""Tests for mpcs.engine.finetune: fine-tuning, linear evaluation, model selection on val only,
test evaluated once, leakage checks, best.pt round trip, init from a pre-training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

import mpcs.engine.downstream as downstream
import mpcs.engine.finetune as ft
import mpcs.engine.linear as linear
from mpcs.config import FINETUNE_DEFAULTS, preset_names, resolve
from mpcs.core.errors import CheckpointError, ConfigError, DataError
from mpcs.data.cache import load_images
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
from mpcs.data.transforms import FinetuneAugment, random_resized_crop
from mpcs.engine.finetune import Evaluation, check_parts, finetune, linear_eval, load_finetuned
from mpcs.engine.pretrain import load_pretrained, pretrain
from mpcs.engine.scoring import better
from mpcs.models import create_encoder
from tests.conftest import TINY_OVERRIDES

torch.set_num_threads(1)

TINY = ["data.input_size=32", "train.batch_size=4", "train.eval_batch_size=16",
        "train.epochs=2", "linear.epochs=3", "linear.batch_size=8", "train.device=cpu",
        "schedule.warmup_epochs=0"]


def tiny_cfg(*extra: str, cache: Path | None = None) -> dict:
    more = [f"data.cache_dir={cache}"] if cache else ["data.use_cache=false"]
    return resolve(preset="finetune-cpu-small", overrides=[*TINY, *more, *extra])


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 patients (benign/malignant alternating) x 2 samples x 4 magnifications, 48x32."""
    out = tmp_path_factory.mktemp("ft-synth")
    return write_breakhis(out, SynthConfig(patients=6, samples_per_patient=2,
                                           image_size=(48, 32), seed=3), progress=False)


@pytest.fixture(scope="module")
def parts(synth: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Split by patient by hand: 2 patients (one per class) in each of train, val, test."""
    manifest = scan_breakhis(synth)
    patients = sorted(manifest["patient_id"].unique())
    benign = sorted(manifest.loc[manifest["label"] == "benign", "patient_id"].unique())
    malignant = sorted(manifest.loc[manifest["label"] == "malignant", "patient_id"].unique())
    assert len(patients) == 6 and len(benign) == len(malignant) == 3
    split = {"train": [benign[0], malignant[0]], "val": [benign[1], malignant[1]],
             "test": [benign[2], malignant[2]]}
    return tuple(manifest[manifest["patient_id"].isin(split[k])].reset_index(drop=True)
                 for k in ("train", "val", "test"))


@pytest.fixture(scope="module")
def finetune_run(parts, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ft-run")
    cfg = tiny_cfg(cache=out / "cache")
    train, val, test = parts
    return out / "run", finetune(cfg, train, val, test, out / "run", init="none",
                                 progress=False)


# --------------------------------------------------------------------------- configuration


def test_finetune_presets_hold_the_paper_values() -> None:
    assert {"finetune-paper", "finetune-cpu-small"} <= set(preset_names("finetune"))
    assert not {"finetune-paper", "finetune-cpu-small"} & set(preset_names("pretrain"))
    cfg = resolve(preset="finetune-paper")
    assert cfg["kind"] == "finetune" and cfg["name"] == "finetune-paper"
    assert cfg["optim"] == {"name": "adam", "lr": 2e-5, "weight_decay": 0.0, "momentum": 0.9}
    assert cfg["train"]["batch_size"] == 32 and cfg["data"]["input_size"] == 224
    assert cfg["model"]["dropout"] == 0.3
    assert cfg["train"]["select_by"] == "val_ila" and cfg["train"]["patience"] > 0
    small = resolve(preset="finetune-cpu-small", kind="finetune")
    assert small["model"]["encoder"] == "resnet18" and small["data"]["input_size"] == 64
    assert small["optim"]["lr"] == 1e-3 and small["train"]["batch_size"] == 32
    assert resolve(kind="finetune")["optim"]["lr"] == FINETUNE_DEFAULTS["optim"]["lr"]


def test_kinds_do_not_mix(tmp_path) -> None:
    plain = tmp_path / "ft.yaml"
    plain.write_text("train: {epochs: 3}\nmodel: {dropout: 0.5}\n")
    cfg = resolve(config_file=plain, kind="finetune")
    assert cfg["kind"] == "finetune" and cfg["model"]["dropout"] == 0.5
    with pytest.raises(ConfigError, match="unknown config key 'model.dropout'"):
        resolve(config_file=plain)  # no kind key and none asked for: pre-training
    declared = tmp_path / "declared.yaml"
    declared.write_text("kind: finetune\ntrain: {epochs: 3}\n")
    assert resolve(config_file=declared)["kind"] == "finetune"
    with pytest.raises(ConfigError, match="not a pretrain"):
        resolve(config_file=declared, kind="pretrain")
    with pytest.raises(ConfigError, match="finetune configuration, not a pretrain"):
        resolve(preset="finetune-paper", kind="pretrain")
    with pytest.raises(ConfigError, match="pretrain configuration, not a finetune"):
        resolve(preset="cpu-small", kind="finetune")
    with pytest.raises(ConfigError, match="unknown config key 'pairs'"):
        resolve(preset="finetune-paper", overrides=["pairs.strategy=op"])
    with pytest.raises(ConfigError, match="fine-tuning configuration"):
        finetune(resolve(preset="cpu-small"), None, None, None, "x", init="none")


@pytest.mark.parametrize(
    ("override", "match"),
    [("model.dropout=1.0", "dropout"), ("train.select_by=test_ila", "select_by"),
     ("augment.crop_scale=[0.5]", "crop_scale"), ("augment.crop_scale=[0.9, 0.5]", "crop_scale"),
     ("optim.name=lars", "optim.name"), ("train.patience=-1", "patience"),
     ("linear.lr=0", "linear.lr"), ("kind=pretrain", "kind")],
)
def test_finetune_config_validation(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        resolve(preset="finetune-paper", overrides=[override])


# --------------------------------------------------------------------------- parts and leakage


def test_test_patient_in_train_is_a_data_error_naming_the_patient(parts, tmp_path) -> None:
    train, val, test = parts
    leaked = test[test["patient_id"] == test["patient_id"].iloc[0]]
    bad_train = pd.concat([train, leaked.iloc[:1]])
    with pytest.raises(DataError, match="leakage") as info:
        finetune(tiny_cfg(), bad_train, val, test, tmp_path / "run", init="none",
                 progress=False)
    assert test["patient_id"].iloc[0] in str(info.value)
    assert not (tmp_path / "run" / "best.pt").exists()
    with pytest.raises(DataError, match="test patient"):
        check_parts(train, pd.concat([val, leaked]), test)
    with pytest.raises(DataError, match=str(val["patient_id"].iloc[0])):
        check_parts(pd.concat([train, val.iloc[:1]]), val, test)


def test_empty_parts_unknown_labels_and_single_class(parts, caplog) -> None:
    train, val, test = parts
    for i, name in enumerate(("train", "val", "test")):
        args = [train, val, test]
        args[i] = args[i].iloc[:0]
        with pytest.raises(ConfigError, match=f"the {name} part is empty"):
            check_parts(*args)
    with pytest.raises(ConfigError, match="label"):
        check_parts(train.drop(columns="label"), val, test)
    weird = train.assign(label="normal")
    with pytest.raises(DataError, match="normal"):
        check_parts(weird, val, test)
    caplog.clear()
    check_parts(train, val, test)
    assert not caplog.records  # two classes in every part: nothing to say
    check_parts(train[train["label"] == "benign"], val, test)
    assert "the train part holds a single class (benign" in caplog.text
    caplog.clear()
    one = val[val["patient_id"] == val.loc[val["label"] == "malignant", "patient_id"].iloc[0]]
    check_parts(train, one, test)
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert (f"the val part holds a single class (malignant: {len(one)} images of 1 patient): "
            "the epoch is selected on one class's images only") in caplog.text


# --------------------------------------------------------------------------- augmentation


def test_augmentation_draws_parameters_per_image() -> None:
    cfg = resolve(preset="finetune-paper")["augment"]
    aug = FinetuneAugment(cfg, 24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    img = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8)
    x = aug(img.repeat(6, 1, 1, 1), torch.Generator().manual_seed(0))
    assert x.shape == (6, 3, 24, 24) and x.dtype == torch.float32
    assert all(not torch.allclose(x[0], x[i]) for i in range(1, 6))
    again = aug(img.repeat(6, 1, 1, 1), torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_random_resized_crop_with_full_scale_is_the_identity() -> None:
    x = torch.rand(3, 3, 16, 16)
    out = random_resized_crop(x, 16, (1.0, 1.0), (1.0, 1.0), torch.Generator().manual_seed(1))
    assert torch.allclose(out, x, atol=1e-5)
    crop = random_resized_crop(x, 8, (0.25, 0.25), (1.0, 1.0), torch.Generator().manual_seed(1))
    assert crop.shape == (3, 3, 8, 8)


def test_better_breaks_ties_as_configured() -> None:
    def ev(loss: float, ila: float) -> Evaluation:
        return Evaluation("val", loss, np.zeros((1, 2)), np.zeros(1), ila, ila)

    assert better(ev(1.0, 0.5), None, "val_ila")
    assert better(ev(9.0, 0.6), ev(1.0, 0.5), "val_ila")
    assert better(ev(0.9, 0.5), ev(1.0, 0.5), "val_ila")
    assert not better(ev(1.0, 0.5), ev(1.0, 0.5), "val_ila")
    assert not better(ev(0.9, 0.4), ev(1.0, 0.5), "val_ila")
    assert better(ev(0.9, 0.1), ev(1.0, 0.5), "val_loss")
    assert better(ev(1.0, 0.6), ev(1.0, 0.5), "val_loss")
    assert not better(ev(1.1, 0.9), ev(1.0, 0.5), "val_loss")


# --------------------------------------------------------------------------- fine-tuning


def test_finetune_writes_every_output(finetune_run, parts) -> None:
    run, summary = finetune_run
    _, _, test = parts
    for name in ("config.yaml", "run.json", "metrics.jsonl", "best.pt", "test_predictions.csv",
                 "test_metrics.json"):
        assert (run / name).is_file(), name
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["kind"] == "finetune"
    info = json.loads((run / "run.json").read_text())
    assert info["mode"] == "finetune" and info["init"] == "none"
    assert info["parts"]["test"]["patient_ids"] == sorted(test["patient_id"].unique())
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    for r in lines:
        assert {"train_loss", "val_loss", "val_ila", "val_pla", "lr", "seconds"} <= set(r)
    preds = pd.read_csv(run / "test_predictions.csv")
    assert list(preds.columns) == ["path", "patient_id", "magnification", "label",
                                   "probability", "prediction"]
    assert len(preds) == len(test) and sorted(preds["path"]) == sorted(test["path"])
    assert preds["probability"].between(0, 1).all()
    assert (preds["prediction"] == np.where(preds["probability"] > 0.5, "malignant",
                                            "benign")).all()
    metrics = json.loads((run / "test_metrics.json").read_text())
    assert metrics["n_images"] == len(test) == 16 and metrics["n_patients"] == 2
    assert metrics["ila"] == pytest.approx((preds["prediction"] == preds["label"]).mean())
    assert set(metrics["per_magnification"]) == {"40X", "100X", "200X", "400X"}
    assert summary["test_ila"] == metrics["ila"] and summary["test_pla"] == metrics["pla"]
    assert summary["selected_epoch"] == metrics["selected_epoch"] in (1, 2)
    assert summary["checkpoint"] == str(run / "best.pt")


def test_load_finetuned_reproduces_the_test_probabilities(finetune_run) -> None:
    run, _ = finetune_run
    model, meta = load_finetuned(run / "best.pt")
    assert meta["kind"] == "mpcs-finetune" and meta["class_names"] == ["benign", "malignant"]
    assert meta["encoder_name"] == "resnet18" and meta["input_size"] == 32
    assert meta["epoch"] == json.loads((run / "test_metrics.json").read_text())[
        "selected_epoch"]
    assert not model.training and model.head.dropout.p == 0.3
    preds = pd.read_csv(run / "test_predictions.csv")
    pixels = load_images(list(preds["path"][:5]), 32, cache_dir=None, progress=False)
    proba = model.predict_proba(pixels)[:, 1]
    np.testing.assert_allclose(proba, preds["probability"][:5], atol=1e-5)


def test_load_finetuned_refuses_other_files(tmp_path) -> None:
    other = tmp_path / "pre.pt"
    torch.save({"kind": "mpcs-pretrain", "model": {}}, other)
    with pytest.raises(CheckpointError, match="not an mpcs fine-tuned"):
        load_finetuned(other)
    (tmp_path / "junk.pt").write_text("junk")
    with pytest.raises(CheckpointError):
        load_finetuned(tmp_path / "junk.pt")


def _spy_evaluate(monkeypatch: pytest.MonkeyPatch, script: list[float] | None = None
                  ) -> list[tuple[str, dict]]:
    """Record (part name, model state) at every evaluate call; optionally replace the val
    ILA of successive epochs by ``script`` (to make the best val epoch known in advance)."""
    calls: list[tuple[str, dict]] = []
    real = ft.evaluate  # the same function in both modes

    def spy(model, part, *args, **kwargs):
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        calls.append((part.name, state))
        ev = real(model, part, *args, **kwargs)
        if script is not None and part.name == "val":
            n_val = sum(1 for name, _ in calls if name == "val")
            ev.ila = script[n_val - 1]
        return ev

    monkeypatch.setattr(ft, "evaluate", spy)
    monkeypatch.setattr(linear, "evaluate", spy)
    return calls


def test_model_selection_uses_val_only_and_tests_once(parts, tmp_path, monkeypatch) -> None:
    train, val, test = parts
    calls = _spy_evaluate(monkeypatch, script=[0.5, 0.9, 0.7, 0.6, 0.95, 0.99])
    cfg = tiny_cfg("train.epochs=6", "train.patience=2", "train.batch_size=8")
    summary = finetune(cfg, train, val, test, tmp_path, init="none", progress=False)
    names = [name for name, _ in calls]
    # epochs 1-4: the best val ILA is at epoch 2, no better one in 2 epochs -> early stop.
    assert names == ["val"] * 4 + ["test"]
    assert summary["selected_epoch"] == 2 and summary["epochs_run"] == 4
    assert summary["stopped_early"]
    # The test part is evaluated with exactly the weights that were validated at epoch 2.
    val_states = [s for name, s in calls if name == "val"]
    test_state = calls[-1][1]
    assert all(torch.equal(test_state[k], val_states[1][k]) for k in test_state)
    assert not all(torch.equal(test_state[k], val_states[3][k]) for k in test_state)
    # ... and the selected epoch is the best val epoch of metrics.jsonl.
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = max(lines, key=lambda r: (r["val_ila"], -r["val_loss"], -r["epoch"]))
    assert best["epoch"] == summary["selected_epoch"]
    assert [r["improved"] for r in lines] == [True, True, False, False]
    assert json.loads((tmp_path / "test_metrics.json").read_text())["selected_epoch"] == 2
    _, meta = load_finetuned(tmp_path / "best.pt")
    assert meta["epoch"] == 2


def test_min_steps_keeps_a_small_set_training_past_its_patience(parts, tmp_path,
                                                                monkeypatch) -> None:
    # The same val scores as above stop at epoch 4 with patience 2; train.min_steps=20 at 4
    # steps per epoch (16 training images, batch 4) needs 5 epochs: the budget of 3 epochs
    # grows to 5 and early stopping waits for step 20.
    train, val, test = parts
    calls = _spy_evaluate(monkeypatch, script=[0.5, 0.9, 0.7, 0.6, 0.95, 0.99])
    cfg = tiny_cfg("train.epochs=3", "train.patience=2", "train.min_steps=20")
    summary = finetune(cfg, train, val, test, tmp_path, init="none", progress=False)
    assert [n for n, _ in calls] == ["val"] * 5 + ["test"]
    assert summary["epochs_run"] == 5 and summary["selected_epoch"] == 5
    assert not summary["stopped_early"]
    assert ft.epoch_budget(3, 20, 4) == 5 and ft.epoch_budget(30, 20, 4) == 30


def test_selection_by_val_loss_matches_metrics(parts, tmp_path, monkeypatch) -> None:
    train, val, test = parts
    calls = _spy_evaluate(monkeypatch)
    cfg = tiny_cfg("train.epochs=3", "train.select_by=val_loss", "train.patience=0",
                   "train.batch_size=8")
    summary = finetune(cfg, train, val, test, tmp_path, init="none", progress=False)
    assert [n for n, _ in calls] == ["val"] * 3 + ["test"]
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    best = min(lines, key=lambda r: (r["val_loss"], -r["val_ila"], r["epoch"]))
    assert summary["selected_epoch"] == best["epoch"]
    assert summary["val_loss"] == best["val_loss"]


def _brightness_set(root: Path, patients: int, per_patient: int, seed: int) -> pd.DataFrame:
    """Dark textured images are benign, bright ones malignant: an easy problem."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        label = "benign" if p % 2 == 0 else "malignant"
        base = 70 if label == "benign" else 180
        for i in range(per_patient):
            img = np.clip(base + rng.normal(0, 25, (24, 24, 3)), 0, 255).astype(np.uint8)
            path = root / f"s{seed}-p{p}-{i}.png"
            Image.fromarray(img).save(path)
            rows.append({"path": str(path), "patient_id": f"{seed}-{p}", "label": label,
                         "magnification": "40X"})
    return pd.DataFrame(rows)


def test_finetune_learns_an_easy_problem(tmp_path) -> None:
    train = _brightness_set(tmp_path, 4, 6, seed=1)
    val = _brightness_set(tmp_path, 2, 6, seed=2)
    test = _brightness_set(tmp_path, 2, 6, seed=3)
    cfg = tiny_cfg("data.input_size=24", "train.batch_size=8", "train.epochs=3",
                   "train.patience=0", "schedule.name=constant")
    summary = finetune(cfg, train, val, test, tmp_path / "run", init="none", progress=False)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    assert summary["val_ila"] >= 0.9
    assert summary["test_ila"] >= 0.9


# --------------------------------------------------------------------------- linear evaluation


def test_linear_eval_freezes_the_backbone_and_caches_features(parts, tmp_path,
                                                              monkeypatch) -> None:
    train, val, test = parts
    torch.manual_seed(5)
    enc = create_encoder("resnet18")
    enc.train()
    with torch.no_grad():  # move the BN statistics away from their defaults
        enc(torch.randn(4, 3, 32, 32) * 2 + 1)
    original = {k: v.clone() for k, v in enc.state_dict().items()}
    weights = tmp_path / "encoder.pt"
    torch.save(enc.state_dict(), weights)

    bn_modes: list[bool] = []
    real_init = ft.init_encoder

    def init_spy(init, cfg):
        encoder, info = real_init(init, cfg)
        for m in encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.register_forward_pre_hook(lambda mod, _: bn_modes.append(mod.training))
        return encoder, info

    grads: list[dict[str, bool]] = []
    real_opt = linear.build_optimizer

    def opt_spy(model, cfg):
        grads.append({n: p.requires_grad for n, p in model.named_parameters()})
        opt = real_opt(model, cfg)
        head = {id(p) for p in model.head.parameters()}
        assert {id(p) for g in opt.param_groups for p in g["params"]} == head
        return opt

    extracted: list[int] = []
    real_extract = linear.extract_features

    def extract_spy(encoder, pixels, *args, **kwargs):
        extracted.append(len(pixels))
        return real_extract(encoder, pixels, *args, **kwargs)

    monkeypatch.setattr(downstream, "init_encoder", init_spy)
    monkeypatch.setattr(linear, "build_optimizer", opt_spy)
    monkeypatch.setattr(linear, "extract_features", extract_spy)
    calls = _spy_evaluate(monkeypatch)
    out = tmp_path / "linear"
    first = linear_eval(tiny_cfg(), train, val, test, out, init=str(weights), progress=False)

    assert grads and all(not g for n, g in grads[0].items() if n.startswith("encoder."))
    assert all(g for n, g in grads[0].items() if n.startswith("head."))
    assert bn_modes and not any(bn_modes)  # the encoder only ever ran in eval mode
    assert extracted == [len(train), len(val), len(test)]
    assert [n for n, _ in calls] == ["val"] * first["epochs_run"] + ["test"]
    assert len(list(out.glob("features_*.npy"))) == 3

    model, meta = load_finetuned(out / "best.pt")
    assert meta["mode"] == "linear" and meta["init_kind"] == "state-dict"
    after = {k.removeprefix("encoder."): v for k, v in model.state_dict().items()
             if k.startswith("encoder.")}
    assert after.keys() == original.keys()
    for k, v in original.items():  # weights AND running statistics unchanged
        assert torch.equal(after[k], v), k
    preds = pd.read_csv(out / "test_predictions.csv")
    pixels = load_images(list(preds["path"]), 32, cache_dir=None, progress=False)
    np.testing.assert_allclose(model.predict_proba(pixels)[:, 1], preds["probability"],
                               atol=1e-5)

    extracted.clear()  # a run in the folder is replaced only on request; caches stay
    second = linear_eval(tiny_cfg(), train, val, test, out, init=str(weights), progress=False,
                         overwrite=True)
    assert extracted == []  # every part's features came from the cache
    assert not list(tmp_path.glob("linear.replaced-*"))  # deleted once the new run finished
    assert second["test_ila"] == first["test_ila"]
    assert second["selected_epoch"] == first["selected_epoch"]


# --------------------------------------------------------------------------- init from MPCS


def test_finetune_starts_from_the_pretrained_encoder(synth, parts, tmp_path,
                                                     monkeypatch) -> None:
    train, val, test = parts
    pre_cfg = resolve(preset="cpu-small", overrides=[
        *TINY_OVERRIDES, "train.device=cpu",
        f"data.patients={sorted(train['patient_id'].unique())}"])
    summary = pretrain(pre_cfg, synth, tmp_path / "pre", progress=False)
    ckpt = Path(summary["checkpoint"])
    expected = load_pretrained(ckpt).encoder.state_dict()

    captured: list[dict] = []
    real_init = ft.init_encoder

    def init_spy(init, cfg):
        encoder, info = real_init(init, cfg)
        captured.append({k: v.detach().clone() for k, v in encoder.state_dict().items()})
        return encoder, info

    monkeypatch.setattr(downstream, "init_encoder", init_spy)
    out = tmp_path / "ft"
    cfg = tiny_cfg("train.epochs=1", "train.batch_size=8")
    result = finetune(cfg, train, val, test, out, init=str(ckpt), progress=False)
    assert captured[0].keys() == expected.keys()
    assert all(torch.equal(captured[0][k], expected[k]) for k in expected)
    # ... and not from a random init with the same seed.
    torch.manual_seed(0)
    random_init = create_encoder("resnet18").state_dict()
    assert not all(torch.equal(random_init[k], expected[k]) for k in expected)
    info = json.loads((out / "run.json").read_text())
    assert info["init_kind"] == "mpcs-pretrain" and info["init"] == str(ckpt.resolve())
    _, meta = load_finetuned(result["checkpoint"])
    assert meta["init_kind"] == "mpcs-pretrain"
    with pytest.raises(ConfigError, match="neither"):  # a new folder: out holds a run
        finetune(tiny_cfg(), train, val, test, tmp_path / "ft2", init=str(tmp_path / "missing.pt"),
                 progress=False)
    # the pre-training run's folder instead of its checkpoint: named, with the file it holds
    with pytest.raises(CheckpointError, match=f"is a folder.*did you mean {ckpt}"):
        finetune(tiny_cfg(), train, val, test, tmp_path / "ft3", init=str(ckpt.parents[1]),
                 progress=False)
