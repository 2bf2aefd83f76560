"""The BACH / BCC transfer grid: image-level folds, patches, voting, resume and report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mpcs.cli import main
from mpcs.config import resolve
from mpcs.core.errors import ConfigError
from mpcs.data.cache import load_images
from mpcs.data.datasets.bach import BACH_CLASSES
from mpcs.data.patches import majority_vote
from mpcs.data.splits import Splits
from mpcs.data.synth.transfer import write_bach, write_bcc
from mpcs.data.transforms import tta_views
from mpcs.engine.finetune import load_finetuned
from mpcs.engine.pretrain import pretrain
from mpcs.evaluation import transfer as tr
from mpcs.evaluation.report import write_report
from mpcs.metrics import classification_scores
from tests.conftest import TINY_OVERRIDES

FINETUNE_TINY = ["data.input_size=32", "train.epochs=1", "train.batch_size=32",
                 "linear.epochs=2", "model.encoder=resnet18", "train.threads=1"]


@pytest.fixture(scope="module")
def tiny_bcc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bcc(tmp_path_factory.mktemp("bcc"), images_per_class=6, image_size=(96, 96),
                     seed=4, progress=False)


@pytest.fixture(scope="module")
def op_checkpoint(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, "train.threads=1"])
    run = tmp_path_factory.mktemp("pre") / "op"
    pretrain(cfg, tiny_breakhis, run, progress=False)
    return run / "checkpoints" / "last.pt"


def bcc_experiment(**extra) -> dict:
    return resolve(kind="experiment", preset="bcc-cpu-small", overrides=[
        "folds=2", "methods=[op]", "transfer.patch_size=48",
        f"finetune_overrides={FINETUNE_TINY}", *[f"{k}={v}" for k, v in extra.items()]])


@pytest.mark.slow
def test_bcc_grid_votes_resumes_and_reports(tiny_bcc: Path, op_checkpoint: Path,
                                            tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "exp"
    cfg = bcc_experiment(**{"transfer.pretrained": f"[{op_checkpoint.parent.parent}]",
                            "transfer.tta": "flips", "keep_checkpoints": "fold0"})
    table = tr.run_transfer(cfg, tiny_bcc, out, progress=False)
    assert (table["status"] == "done").all(), table
    assert len(table) == 2 * 2 * 2  # folds x (random init, MPCS-OP) x (finetune, linear)
    assert set(table["method"]) == {"Random init", "MPCS-OP"}

    splits = Splits.load(out / "splits.json")
    for k in range(2):
        fold = splits.fold(k)
        cell = tr.cell_dir(out, k, "MPCS-OP", "linear", 1.0)
        meta = json.loads((cell / "cell.json").read_text())
        assert meta["init"] == str(op_checkpoint) and meta["dataset"] == "bcc"
        # every patch of an image is in one part only; parts are whole images
        parts = json.loads((cell / "run.json").read_text())["parts"]
        for part in ("train", "val", "test"):
            assert set(parts[part]["patient_ids"]) == set(fold.part(part))
        assert parts["train"]["images"] == 4 * len(fold.train)  # 4 patches of 48 per image
        # one image-wise prediction per test image, by majority vote over its patches
        patches = pd.read_csv(cell / "test_patches.csv")
        images = pd.read_csv(cell / "test_images.csv")
        assert sorted(images["image_id"]) == sorted(fold.test)
        probs = patches[["prob_benign", "prob_malignant"]].to_numpy()
        votes = majority_vote(patches["image_id"], probs, ["benign", "malignant"])
        assert votes["prediction"].tolist() == images["prediction"].tolist()
        if k > 0:  # keep_checkpoints=fold0: later folds keep predictions, not models
            assert not list((out / f"fold{k}").rglob("*.pt"))
            continue
        # test-time flips: the mean over the four flipped views of the selected model
        model, _ = load_finetuned(cell / "best.pt")
        pix = torch.from_numpy(np.array(load_images(patches["path"][:3].tolist(), 32)))
        views = [pix, pix.flip(-1), pix.flip(-2), pix.flip(-1).flip(-2)]
        expected = np.mean([model.predict_proba(v.contiguous()) for v in views], axis=0)
        np.testing.assert_allclose(probs[:3], expected, atol=1e-5)

    # Resume: finished cells are skipped; a cell without cell.json is redone alone.
    with pytest.raises(ConfigError, match="--resume"):
        tr.run_transfer(cfg, tiny_bcc, out, progress=False)
    with pytest.raises(ConfigError, match="transfer.patch_size: 48 != 64"):
        tr.run_transfer({**cfg, "transfer": {**cfg["transfer"], "patch_size": 64}}, tiny_bcc,
                        out, resume=True, progress=False)
    interrupted = tr.cell_dir(out, 1, "Random init", "finetune", 1.0)
    (interrupted / "cell.json").unlink()
    calls = []
    real = tr.finetune
    monkeypatch.setattr(tr, "finetune", lambda *a, **k: (calls.append(a[4]), real(*a, **k)))
    again = tr.run_transfer(cfg, tiny_bcc, out, resume=True, progress=False)
    assert calls == [interrupted]
    assert again[again["status"] == "done"]["cell"].tolist() == [str(interrupted)]

    csv_path, md_path = write_report(out, figures=False)
    results = pd.read_csv(csv_path)
    assert len(results) == 8
    for col in ("test_image_accuracy", "test_image_precision", "test_image_recall",
                "val_patch_accuracy", "test_patch_accuracy"):
        assert results[col].between(0, 1).all()
    # recomputed from the saved image-wise predictions
    row = results[(results["fold"] == 0) & (results["method"] == "MPCS-OP")
                  & (results["mode"] == "finetune")].iloc[0]
    images = pd.read_csv(tr.cell_dir(out, 0, "MPCS-OP", "finetune", 1.0) / "test_images.csv")
    assert row["test_image_accuracy"] == pytest.approx(
        (images["label"] == images["prediction"]).mean())
    text = md_path.read_text()
    assert "Table 9 layout" in text and "linear accuracy" in text and "finetune recall" in text
    assert "| MPCS-OP |" in text and "| Random init |" in text


@pytest.mark.slow
def test_bach_grid_from_the_cli_has_four_classes_and_nested_fractions(tmp_path: Path) -> None:
    data = write_bach(tmp_path / "data", images_per_class=4, image_size=(64, 64), seed=5,
                      progress=False)
    out = tmp_path / "exp"
    argv = ["experiment", "--data", str(data), "--out", str(out), "--preset", "bach-cpu-small",
            "--quiet", "--set", "folds=2", "--set", "label_fractions=[0.5, 1.0]",
            "--set", "transfer.patch_size=32", "--set", "transfer.patch_stride=16",
            "--set", f"finetune_overrides={FINETUNE_TINY}"]
    assert main(argv) == 0
    for k in range(2):
        half = json.loads((tr.cell_dir(out, k, "Random init", "finetune", 0.5) / "cell.json")
                          .read_text())
        full = json.loads((tr.cell_dir(out, k, "Random init", "finetune", 1.0) / "cell.json")
                          .read_text())
        assert half["n_train_images"] < full["n_train_images"]
        assert full["n_train_patches"] == 9 * full["n_train_images"]  # 3 x 3 per photo
    cell = tr.cell_dir(out, 0, "Random init", "finetune", 1.0)
    preds = pd.read_csv(cell / "test_predictions.csv")
    probs = preds[[f"prob_{c}" for c in BACH_CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (preds["prediction"] == np.array(BACH_CLASSES)[probs.argmax(axis=1)]).all()
    assert (cell / "val_predictions.csv").exists()
    model, _ = load_finetuned(cell / "best.pt")
    assert model.class_names == list(BACH_CLASSES)
    _, md_path = write_report(out, figures=False)
    text = md_path.read_text()
    assert "Table 7 layout" in text and "Table 8 layout" in text and "| 50% |" in text


def test_scores_views_and_settings() -> None:
    s = classification_scores(["a", "b", "c", "c"], ["a", "b", "c", "a"], "abc", None)
    assert s["accuracy"] == 0.75
    assert s["recall"] == pytest.approx((1 + 1 + 0.5) / 3)  # macro average
    x = torch.arange(2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    for kind, n in (("none", 1), ("flips", 4), ("dihedral", 8)):
        outs = [v(x) for v in tta_views(kind)]
        assert len(outs) == n and torch.equal(outs[0], x)
        assert len({tuple(o.flatten().tolist()) for o in outs}) == n  # all distinct
    with pytest.raises(ConfigError, match="stain_reference"):
        bcc_experiment(**{"transfer.stain_norm": "reinhard"})
    with pytest.raises(ConfigError, match="mode"):
        resolve(kind="experiment", preset="experiment-cpu-small", overrides=["mode=both"])
    with pytest.raises(ConfigError, match="dataset"):
        bcc_experiment(dataset="camelyon")


def test_missing_mpcs_encoders_are_refused_before_training(tiny_bcc: Path, tmp_path) -> None:
    cfg = bcc_experiment()
    with pytest.raises(ConfigError, match="pretrain_data"):
        tr.run_transfer(cfg, tiny_bcc, tmp_path / "exp", progress=False)
    assert not list((tmp_path / "exp").rglob("cell.json"))
    with pytest.raises(ConfigError, match="neither a checkpoint"):
        tr.run_transfer(bcc_experiment(**{"transfer.pretrained": f"[{tmp_path}]"}), tiny_bcc,
                        tmp_path / "exp2", progress=False)


def test_transfer_refuses_a_checkpoint_of_another_method(tmp_path: Path) -> None:
    # A BYOL encoder must not be reported under an MPCS pair-strategy name.
    from mpcs.core.checkpoint import save_checkpoint
    from mpcs.evaluation.transfer import _strategy_and_encoder

    cfg = {"method": "byol", "pairs": {"strategy": "ordered"}, "model": {"encoder": "resnet18"}}
    save_checkpoint({"kind": "mpcs-pretrain", "config": cfg}, tmp_path / "byol.pt")
    with pytest.raises(ConfigError, match="method=byol"):
        _strategy_and_encoder(tmp_path / "byol.pt")
    save_checkpoint({"kind": "mpcs-pretrain", "config": {**cfg, "method": "mpcs"}},
                    tmp_path / "op.pt")
    assert _strategy_and_encoder(tmp_path / "op.pt") == ("MPCS-OP", "resnet18")
