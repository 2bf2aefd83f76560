"""The method registry: every objective builds from a configuration, gives a finite loss
whose gradient reaches the encoder, and MPCS stays what it was."""

from __future__ import annotations

import pytest
import torch

from mpcs.config import resolve
from mpcs.core.errors import ConfigError
from mpcs.data.transforms import AugmentConfig, UniformPairAugment
from mpcs.losses import NTXentLoss
from mpcs.methods import BYOLMethod, create_method, list_methods
from mpcs.methods.byol import cosine_momentum
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
    """Same state dict keys as MPCSModel and the same loss as model(cat) -> NT-Xent."""
    from mpcs.engine.pretrain import build_model

    cfg = _cfg("mpcs")
    torch.manual_seed(0)
    model = build_model(cfg)
    method = create_method("mpcs", cfg)
    assert list(method.state_dict()) == list(model.state_dict())
    method.load_state_dict(model.state_dict())
    x1, x2 = _views()
    _, z = model(torch.cat([x1, x2]))
    expected = NTXentLoss(cfg["loss"]["temperature"])(z[:6], z[6:])
    torch.testing.assert_close(method(x1, x2), expected)


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

    from mpcs.engine.pretrain import load_pretrained, pretrain
    from mpcs.inference import load_model

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
def test_compare_methods_writes_the_table(tmp_path) -> None:
    import pandas as pd

    from mpcs.data.synth.breakhis import SynthConfig
    from mpcs.evaluation.methods_compare import compare_methods

    results = compare_methods(
        tmp_path, ["mpcs", "vicreg"], epochs=1,
        overrides=["data.input_size=32", "train.batch_size=8", "train.threads=1",
                   "schedule.warmup_epochs=0"],
        synth=SynthConfig(patients=8, samples_per_patient=2, image_size=(48, 32), seed=2),
        progress=False)
    assert list(results["method"].unique()) == ["random init", "MPCS-OP", "VICReg (mag. pairs)"]
    assert results["ila"].between(0, 1).all() and (results["test_images"] > 0).all()
    table = (tmp_path / "methods.md").read_text()
    assert "| VICReg (mag. pairs) |" in table and "| random init |" in table
    runs = pd.read_csv(tmp_path / "methods_runs.csv")
    assert list(runs["preset"]) == ["cpu-small", "cpu-small-vicreg"]
    with pytest.raises(ConfigError, match="unknown method"):
        compare_methods(tmp_path / "x", ["moco"])
