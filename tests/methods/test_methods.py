"""The method registry: every objective builds from a configuration, gives a finite loss
whose gradient reaches the encoder, and MPCS stays what it was."""

from __future__ import annotations

import json

import pytest
import torch

from mpcs.config import resolve
from mpcs.core.errors import ConfigError
from mpcs.data.transforms import AugmentConfig, UniformPairAugment
from mpcs.engine.pretrain import build_model
from mpcs.losses import NTXentLoss
from mpcs.methods import (
    BYOLMethod,
    MPCSMethod,
    PairMethod,
    create_method,
    list_methods,
    method_class,
    register_method,
)
from mpcs.methods.byol import cosine_momentum
from mpcs.models import create_mpcs_model
from tests.conftest import TINY_OVERRIDES

ALL = ["mpcs", "simclr", "byol", "simsiam", "barlow_twins", "vicreg"]


def _cfg(method: str, *extra: str) -> dict:
    return resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, f"method={method}",
                                                  "model.channels_last=false", *extra])


def _views(n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randn(n, 3, 32, 32, generator=g)


def test_registry_lists_every_method() -> None:
    assert sorted(list_methods()) == sorted(ALL)
    with pytest.raises(ConfigError, match="unknown method 'moco'"):
        create_method("moco", _cfg("mpcs"))
    with pytest.raises(ConfigError, match="method"):
        _cfg("moco")


def test_each_method_describes_its_own_loss() -> None:
    cfg = resolve(kind="pretrain")
    expected = {"mpcs": "NT-Xent", "simclr": "NT-Xent", "byol": "BYOL", "simsiam": "SimSiam",
                "barlow_twins": "Barlow Twins", "vicreg": "VICReg"}
    assert set(expected) == set(list_methods())
    for name, loss in expected.items():
        cls = method_class(name)
        text = cls.describe({**cfg, "method": name})
        assert cls.name == name and text["loss"].startswith(loss), (name, text)
        assert text["method"] and (name == "mpcs") == text["method"].startswith("MPCS")
    loss = method_class("mpcs").describe({**cfg, "loss": {"temperature": 0.25}})["loss"]
    assert loss == "NT-Xent, temperature 0.25"
    with pytest.raises(ConfigError, match="unknown method 'moco'"):
        method_class("moco")


def test_a_registration_needs_a_new_name() -> None:
    class Nameless(MPCSMethod):
        name = ""

    with pytest.raises(ValueError, match="Nameless has no name"):
        register_method(Nameless)
    with pytest.raises(ValueError, match="'mpcs' is registered already"):
        register_method(MPCSMethod)
    assert sorted(list_methods()) == sorted(ALL)


@pytest.mark.parametrize("name", ALL)
def test_each_method_trains_its_encoder(name: str) -> None:
    torch.manual_seed(0)
    method = create_method(name, _cfg(name))
    x1, x2 = _views()
    loss = method(x1, x2)
    assert loss.shape == () and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in method.encoder.parameters()]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)
    assert method.head is not None and hasattr(method.encoder, "mean")


def test_mpcs_method_equals_the_original_training_step() -> None:
    """The engine builds MPCS through the registry: same state dict keys as MPCSModel, and
    bit for bit the loss and gradients of the training step before the method contract
    (MPCSModel on the concatenated views -> NT-Xent on the float32 projections)."""
    cfg = _cfg("mpcs", "model.channels_last=true")
    m = cfg["model"]
    torch.manual_seed(0)
    old = create_mpcs_model(m["encoder"], weights="none", head_hidden=m["head_hidden"],
                            head_out=m["head_out"], channels_last=True)
    torch.manual_seed(0)
    method = build_model(cfg)
    assert type(method).name == "mpcs"
    assert list(method.state_dict()) == list(old.state_dict())
    for k, v in old.state_dict().items():  # same initialisation from the same seed
        assert torch.equal(method.state_dict()[k], v), k
    x1, x2 = _views()
    x = torch.cat([x1, x2]).contiguous(memory_format=torch.channels_last)
    _, z = old(x)
    expected = NTXentLoss(cfg["loss"]["temperature"])(z[:6].float(), z[6:].float())
    expected.backward()
    loss = method(x1, x2)
    loss.backward()
    assert torch.equal(loss, expected)
    for (name, p), q in zip(method.named_parameters(), old.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("name", ALL)
def test_views_of_a_slice_are_the_slice_of_the_views(name: str) -> None:
    """Under torchrun each rank makes the views of its rows of the global batch from the
    same generator state: together they are one process's views of the whole batch."""
    method = create_method(name, _cfg(name))
    aug = UniformPairAugment(AugmentConfig(brightness=0.3, hue=0.05), 32)
    g = torch.Generator().manual_seed(1)
    v1 = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=g)
    v2 = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8, generator=g)
    full = method.make_views(aug, v1, v2, torch.Generator().manual_seed(0))
    parts = [method.make_views(aug, v1[i:i + 3], v2[i:i + 3], torch.Generator().manual_seed(0),
                               global_pairs=6, first=i) for i in (0, 3)]
    for view in (0, 1):
        torch.testing.assert_close(torch.cat([p[view] for p in parts]), full[view],
                                   rtol=0, atol=1e-6)


def test_every_method_says_what_torchrun_needs() -> None:
    """use_global_batch is part of the contract (abstract): the losses with batch
    statistics gather them from all ranks; per-pair losses have nothing to gather."""
    gathering = {"mpcs", "simclr", "barlow_twins", "vicreg"}
    for name in ALL:
        method = create_method(name, _cfg(name))
        method.use_global_batch(True)
        assert getattr(method.loss_fn, "gather_distributed", False) == (name in gathering)
        method.use_global_batch(False)
        assert not getattr(method.loss_fn, "gather_distributed", False)

    class Incomplete(PairMethod):
        def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
            return x1.sum()

    m = create_method("mpcs", _cfg("mpcs"))
    with pytest.raises(TypeError, match="use_global_batch"):
        Incomplete(m.encoder, m.head)


def test_byol_target_is_a_moving_average_without_gradients() -> None:
    method = create_method("byol", _cfg("byol", "ssl.momentum=0.9"))
    assert isinstance(method, BYOLMethod)
    assert not any(p.requires_grad for p in method.target_encoder.parameters())
    online = next(method.encoder.parameters())
    target = next(method.target_encoder.parameters())
    torch.testing.assert_close(online, target)
    before = target.detach().clone()
    with torch.no_grad():
        online.add_(1.0)
    method.after_step(0, 100)  # momentum 0.9 at step 0
    torch.testing.assert_close(target, before + 0.1)
    assert method.loggable()["momentum"] == pytest.approx(0.9)


def test_byol_momentum_schedule_is_cosine_to_one() -> None:
    assert cosine_momentum(0, 10, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(5, 10, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(10, 10, 0.99) == pytest.approx(1.0)


def test_simclr_views_come_from_the_same_image_with_independent_augmentations() -> None:
    method = create_method("simclr", _cfg("simclr"))
    assert method.same_image and not create_method("mpcs", _cfg("mpcs")).same_image
    aug = UniformPairAugment(AugmentConfig(), 32)
    v = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    a, b = method.make_views(aug, v, v, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == (4, 3, 32, 32)
    assert not torch.allclose(a, b)  # independent crops and transforms
    # MPCS makes both views with ONE parameter set: identical inputs stay identical
    m1, m2 = create_method("mpcs", _cfg("mpcs")).make_views(aug, v, v,
                                                            torch.Generator().manual_seed(0))
    torch.testing.assert_close(m1, m2)


def test_method_options_are_validated() -> None:
    with pytest.raises(ConfigError, match="ssl.momentum"):
        _cfg("byol", "ssl.momentum=1.5")
    with pytest.raises(ConfigError, match="vicreg_weights"):
        _cfg("vicreg", "ssl.vicreg_weights=[1, 2]")
    with pytest.raises(ConfigError, match="simclr_crop_scale"):
        _cfg("simclr", "ssl.simclr_crop_scale=[0.5, 2]")


def test_simsiam_projector_ends_in_batchnorm() -> None:
    method = create_method("simsiam", _cfg("simsiam"))
    last = list(method.head.modules())[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and not last.affine


@pytest.mark.slow
@pytest.mark.parametrize("name", ["byol", "simclr"])
def test_pretrain_runs_each_special_method_and_reloads_it(name: str, tiny_breakhis,
                                                          tmp_path) -> None:
    """BYOL (momentum target, after_step) and SimCLR (its own views) through the real
    training loop; the checkpoint rebuilds the method and serves inference."""
    import json

    from mpcs.engine.loading import load_model
    from mpcs.engine.pretrain import load_pretrained, pretrain

    cfg = _cfg(name, "train.epochs=2", "train.threads=1")
    summary = pretrain(cfg, tiny_breakhis, tmp_path / "run", progress=False)
    assert summary["global_step"] == 6 and summary["final_loss"] == summary["final_loss"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2]
    model = load_pretrained(summary["checkpoint"])
    assert type(model).name == name
    fresh = create_method(name, _cfg(name))
    changed = [not torch.equal(a, b) for a, b in zip(model.encoder.state_dict().values(),
                                                     fresh.encoder.state_dict().values(),
                                                     strict=True)]
    assert any(changed)  # the encoder was trained
    if name == "byol":
        assert lines[-1]["momentum"] == pytest.approx(1.0)  # cosine schedule reached 1
    loaded = load_model(summary["checkpoint"])
    assert loaded.head is not None and loaded.input_size == 32


@pytest.mark.slow
def test_compare_methods_writes_the_table(tmp_path, monkeypatch, caplog) -> None:
    import pandas as pd

    from mpcs.data.synth.breakhis import SynthConfig
    from mpcs.evaluation.methods_compare import compare_methods

    overrides = ["data.input_size=32", "train.batch_size=8", "train.threads=1",
                 "schedule.warmup_epochs=0"]
    synth = SynthConfig(patients=8, samples_per_patient=2, image_size=(48, 32), seed=2)
    results = compare_methods(tmp_path, ["mpcs", "vicreg"], epochs=1, overrides=overrides,
                              synth=synth, progress=False)
    assert list(results["method"].unique()) == ["random init", "MPCS-OP", "VICReg (mag. pairs)"]
    assert results["ila"].between(0, 1).all() and (results["test_images"] > 0).all()
    table = (tmp_path / "methods.md").read_text()
    assert "| VICReg (mag. pairs) |" in table and "| random init |" in table
    runs = pd.read_csv(tmp_path / "methods_runs.csv")
    assert list(runs["preset"]) == ["cpu-small", "cpu-small-vicreg"]
    info = json.loads((tmp_path / "run.json").read_text())
    assert info["seed"] == 2 and info["versions"]["torch"] and "git_commit" in info
    assert "methods:\n- mpcs\n- vicreg" in (tmp_path / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="unknown method"):
        compare_methods(tmp_path / "x", ["moco"])
    # a second run into the same folder: refused before any work, naming --resume ...
    with pytest.raises(ConfigError, match="runs of mpcs, vicreg.*add --resume"):
        compare_methods(tmp_path, ["mpcs"], epochs=1, overrides=overrides, synth=synth,
                        progress=False)
    # ... which keeps the finished methods (same checkpoints, same rows) and adds new ones
    before = {m: (tmp_path / "runs" / m / "checkpoints" / "last.pt").stat().st_mtime_ns
              for m in ("mpcs", "vicreg")}
    again = compare_methods(tmp_path, ["mpcs", "vicreg", "byol"], epochs=1,
                            overrides=overrides, synth=synth, progress=False, resume=True)
    assert {m: (tmp_path / "runs" / m / "checkpoints" / "last.pt").stat().st_mtime_ns
            for m in ("mpcs", "vicreg")} == before
    pd.testing.assert_frame_equal(again[again["method"] != "BYOL (mag. pairs)"]
                                  .reset_index(drop=True), results)
    rerun = pd.read_csv(tmp_path / "methods_runs.csv")
    assert list(rerun["preset"]) == ["cpu-small", "cpu-small-vicreg", "cpu-small-byol"]
    assert rerun["seconds"].iloc[:2].tolist() == runs["seconds"].tolist()
    assert not rerun["continued"].any()
    # other settings: refused before any pre-training, naming the method and the setting
    stamp = (tmp_path / "runs" / "byol" / "checkpoints" / "last.pt").stat().st_mtime_ns
    with pytest.raises(ConfigError, match=r"(?s)compare-methods --resume: byol: .*"
                       r"train\.epochs: 1 != 2"):
        compare_methods(tmp_path, ["byol", "mpcs"], epochs=2, overrides=overrides,
                        synth=synth, progress=False, resume=True)
    assert (tmp_path / "runs" / "byol" / "checkpoints" / "last.pt").stat().st_mtime_ns == stamp
    # a run whose end was not recorded (interrupted) is continued, and the table says so;
    # the folder given another way (relative, from its parent) is the same comparison
    (tmp_path / "runs" / "vicreg" / "compare.json").unlink()
    monkeypatch.chdir(tmp_path.parent)
    compare_methods(tmp_path.name, ["vicreg"], epochs=1, overrides=overrides, synth=synth,
                    progress=False, resume=True)
    assert pd.read_csv(tmp_path / "methods_runs.csv")["continued"].tolist() == [True]
    assert len(json.loads((tmp_path / "run.json").read_text())["resumed"]) == 2
    # a damaged record is named, and its run continued rather than trusted
    record = tmp_path / "runs" / "mpcs" / "compare.json"
    record.write_text("{")
    compare_methods(tmp_path.name, ["mpcs"], epochs=1, overrides=overrides, synth=synth,
                    progress=False, resume=True)
    assert f"{tmp_path.name}/runs/mpcs/compare.json: unreadable (JSONDecodeError" in caplog.text
    assert pd.read_csv(tmp_path / "methods_runs.csv")["continued"].tolist() == [True]
    assert json.loads(record.read_text())["row"]["method"] == "MPCS-OP"
    assert "(last part)" in (tmp_path / "methods.md").read_text()
