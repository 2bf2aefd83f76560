"""Grad-CAM: maps of the input's size in [0, 1], class-dependent, localised; files and CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mpcs.config import resolve
from mpcs.core.errors import CheckpointError, ConfigError
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.engine.finetune import Classifier, finetune, linear_eval
from mpcs.models import create_encoder
from mpcs.viz.gradcam import (
    CamImage,
    GradCAM,
    explain,
    find_target_layer,
    gradcam_images,
    normalise_maps,
    overlay,
    resolve_target_layer,
)

torch.set_num_threads(1)

# 64 px: a 2x2 map for ResNet-18 (32 px would give 1x1, a flat map).
FT = ["data.input_size=64", "train.epochs=1", "train.batch_size=8", "train.threads=1",
      "linear.epochs=2", "data.use_cache=false"]


def _parts(data: Path):
    manifest = scan_breakhis(data)
    benign = sorted(manifest.loc[manifest["label"] == "benign", "patient_id"].unique())
    malignant = sorted(manifest.loc[manifest["label"] == "malignant", "patient_id"].unique())
    split = {"train": [benign[0], malignant[0]], "val": [benign[1]], "test": [malignant[1]]}
    return [manifest[manifest["patient_id"].isin(split[k])].reset_index(drop=True)
            for k in ("train", "val", "test")]


@pytest.fixture(scope="module")
def two_checkpoints(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> tuple[Path, Path]:
    """A fine-tuned and a linear-eval best.pt (tiny, random init, 64 px)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gradcam")
    cfg = resolve(preset="finetune-cpu-small", kind="finetune", overrides=FT)
    train, val, test = _parts(tiny_breakhis)
    finetune(cfg, train, val, test, out / "ft", init="none", progress=False)
    linear_eval(cfg, train, val, test, out / "lin", init="none", progress=False)
    return out / "ft" / "best.pt", out / "lin" / "best.pt"


@pytest.fixture
def images(tiny_breakhis: Path, tmp_path: Path) -> list[Path]:
    """Two benign and two malignant BreakHis-named images."""
    picked = []
    for label in ("benign", "malignant"):
        picked += sorted((tiny_breakhis).rglob(f"SOB_{label[0].upper()}_*-40-*.png"))[:2]
    assert len(picked) == 4
    return picked


# --------------------------------------------------------------------------- the map


class QuadrantNet(nn.Module):
    """Logits that depend on the top-right quadrant of the input only: the input is masked
    to that quadrant, then conv (the Grad-CAM target) -> ReLU -> mean -> linear."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        mask = torch.zeros(1, 1, size, size)
        mask[..., : size // 2, size // 2:] = 1.0  # rows 0..15 (top), columns 16..31 (right)
        self.register_buffer("mask", mask)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.fc.weight.copy_(torch.tensor([[-1.0, -1.0, -1.0, -1.0], [1.0, 1.0, 1.0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.conv(x * self.mask))
        return self.fc(a.mean(dim=(2, 3)))


def test_cam_peaks_in_the_only_quadrant_the_logit_sees() -> None:
    torch.manual_seed(0)
    net = QuadrantNet(32)
    x = torch.rand(3, 3, 32, 32) + 0.1  # positive everywhere: every quadrant has content
    with GradCAM(net, net.conv) as cam:
        maps, probs = cam(x, target=1)
    assert maps.shape == (3, 32, 32)
    for m in maps:
        row, col = np.unravel_index(int(m.argmax()), m.shape)
        assert row < 16 and col >= 16, (row, col)  # top-right, not its transpose
        inside = m[:15, 17:].mean()
        outside = torch.cat([m[17:, :].flatten(), m[:, :15].flatten()]).mean()
        assert inside > 0.5 and outside < 0.05
    assert torch.allclose(probs.sum(dim=1), torch.ones(3))


def test_cam_changes_with_the_target_class() -> None:
    torch.manual_seed(0)
    model = Classifier(create_encoder("resnet18"), input_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    with GradCAM(model) as cam:
        c0, p = cam(x, target=0)
        c1, _ = cam(x, target=1)
        pred, _ = cam(x)
    assert not torch.allclose(c0, c1, atol=1e-3)
    k = p.argmax(dim=1)
    for i in range(2):
        torch.testing.assert_close(pred[i], (c0 if k[i] == 0 else c1)[i])


@pytest.mark.parametrize("name, last, auto", [("resnet18", "layer4", "layer3"),
                                              ("resnet50_dilated", "layer4", "layer4"),
                                              ("efficientnet_b0", "bn2", "blocks.4"),
                                              ("tf_efficientnet_lite0", "bn2", "blocks.4")])
def test_cam_shape_and_range_for_each_encoder_family(name: str, last: str, auto: str) -> None:
    torch.manual_seed(0)
    encoder = create_encoder(name)
    modules = dict(encoder.model.named_modules())
    assert find_target_layer(encoder, 64, layer="last") is modules[last]
    # at 64 px the last map is 2x2 except for the dilated ResNet (stride 8: 8x8)
    assert find_target_layer(encoder, 64) is modules[auto]
    model = Classifier(encoder, input_size=64).eval()
    x = torch.randn(2, 3, 64, 48)
    with GradCAM(model) as cam:
        maps, probs = cam(x)
    assert maps.shape == (2, 64, 48)
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    assert maps.flatten(1).max(dim=1).values.min() == pytest.approx(1.0)
    assert probs.shape == (2, 2)


@pytest.mark.parametrize("name", ["resnet18", "resnet10t"])
def test_auto_layer_localises_where_the_last_stage_is_1x1(name: str) -> None:
    """At 32 px (as in ``mpcs demo``) layer4 is 1x1: its Grad-CAM is flat; "auto" takes the
    deepest stage with a map of at least 4x4 and gives a real map of the input's size."""
    torch.manual_seed(0)
    model = Classifier(create_encoder(name), input_size=32).eval()
    x = torch.randn(3, 3, 32, 32)
    with GradCAM(model, "last") as cam:
        flat, _ = cam(x)
    assert cam.layer is not None and cam.layer.name == "layer4" and cam.layer.is_last
    assert cam.map_size == (1, 1)
    assert flat.abs().max() == 0  # no localisation at all
    with GradCAM(model) as cam:  # default: auto
        maps, probs = cam(x)
    chosen = cam.layer
    assert chosen is not None and chosen.name in ("layer2", "layer3") and not chosen.is_last
    assert min(chosen.map_size) >= 4 and cam.map_size == chosen.map_size
    assert chosen.last_size == (1, 1)
    assert chosen.describe() == f"{chosen.name}, {chosen.map_size[0]}x{chosen.map_size[1]}"
    assert maps.shape == (3, 32, 32) and probs.shape == (3, 2)
    for m in maps:
        assert m.max() == pytest.approx(1.0)  # scaled, not all zeros
        assert m.min() == 0.0 and m.std() > 0.05
        assert len(torch.unique(m.round(decimals=3))) > 50  # a spatial pattern, not a step


def test_auto_layer_is_the_last_stage_when_its_map_is_big_enough() -> None:
    encoder = create_encoder("resnet18")
    for size, last in ((128, (4, 4)), (224, (7, 7))):
        auto = resolve_target_layer(encoder, "auto", size)
        assert auto.is_last and auto.name == "layer4" and auto.map_size == last
        assert auto.module is resolve_target_layer(encoder, "last", size).module
    model = Classifier(encoder, input_size=128)
    with GradCAM(model) as cam:
        cam(torch.randn(1, 3, 128, 128))
    assert cam.layer is not None and cam.layer.is_last and cam.map_size == (4, 4)
    # a stricter min_size moves "auto" one stage up
    assert resolve_target_layer(encoder, "auto", 128, min_size=8).name == "layer3"


def test_layer_by_module_name_and_unknown_names() -> None:
    encoder = create_encoder("resnet18")
    modules = dict(encoder.model.named_modules())
    chosen = resolve_target_layer(encoder, "layer3", 32)
    assert chosen.module is modules["layer3"] and chosen.map_size == (2, 2)
    assert not chosen.is_last
    assert resolve_target_layer(encoder, "encoder.model.layer3.1", 32).module \
        is modules["layer3.1"]
    with pytest.raises(ConfigError, match=r"'layer9'.*auto, last, layer1, layer2, layer3, "
                                          r"layer4"):
        find_target_layer(encoder, 32, layer="layer9")
    with pytest.raises(ConfigError, match="not a .B, C, h, w. map"):
        find_target_layer(encoder, 32, layer="global_pool")
    model = Classifier(encoder, input_size=32)
    with pytest.raises(ConfigError, match="layer9"):
        GradCAM(model, "layer9")


def test_layer_note_names_only_intermediate_layers() -> None:
    item = CamImage(Path("a.png"), np.zeros((4, 4, 3), np.uint8), None, {}, "",
                    layer="layer2", map_size=(8, 8), last_layer=False)
    assert item.layer_note == "layer2, 8x8"
    item.last_layer = True
    assert item.layer_note == ""


def test_report_caption_names_intermediate_layers() -> None:
    from mpcs.evaluation.figures import _layer_caption

    def item(layer: str, last: bool) -> CamImage:
        return CamImage(Path("a.png"), np.zeros((4, 4, 3), np.uint8), None, {}, "",
                        layer=layer, map_size=(4, 4), last_layer=last)

    assert _layer_caption({"A": item("layer4", True), "B": item("layer4", True)}) == ""
    both = _layer_caption({"A": item("layer2", False), "B": item("layer2", False)})
    assert "layer2, 4x4 of both models" in both and "less class-specific" in both
    mixed = _layer_caption({"A": item("layer2", False), "B": item("bn2", True)})
    assert "A: layer2, 4x4; B: last stage" in mixed


def test_cam_works_with_a_frozen_encoder_and_keeps_train_mode() -> None:
    torch.manual_seed(0)
    model = Classifier(create_encoder("resnet18"), input_size=64)
    model.requires_grad_(False)  # as in linear evaluation
    model.train()
    with GradCAM(model) as cam:
        maps, _ = cam(torch.randn(1, 3, 64, 64))
    assert maps.max() == pytest.approx(1.0)
    assert model.training  # restored
    assert all(p.grad is None for p in model.parameters())


def test_normalise_maps_flat_and_noise() -> None:
    flat = torch.full((1, 8, 8), 3.0) + 1e-7 * torch.randn(1, 8, 8)  # rounding noise only
    assert normalise_maps(flat).abs().max() == 0
    ramp = torch.arange(16.0).reshape(1, 4, 4)
    out = normalise_maps(ramp)
    assert out.min() == 0 and out.max() == 1


def test_bad_targets_are_refused() -> None:
    net = QuadrantNet(32)
    with GradCAM(net, net.conv) as cam, pytest.raises(ConfigError, match="out of range"):
        cam(torch.rand(1, 3, 32, 32), target=5)
    with pytest.raises(ConfigError, match="target_layer"):
        GradCAM(net)


def test_overlay_colours_high_and_low_activation() -> None:
    rgb = np.full((20, 30, 3), 128, np.uint8)
    cam = np.zeros((5, 5), np.float32)
    cam[:, 3:] = 1.0
    out = overlay(rgb, cam)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert out[10, 29, 0] > out[10, 29, 2]  # hot: red
    assert out[10, 0, 2] > out[10, 0, 0]    # cold: blue


# --------------------------------------------------------------------------- files


@pytest.mark.slow
def test_explain_gives_predicted_and_true_maps(two_checkpoints: tuple[Path, Path],
                                               images: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "slide_7.png"
    shutil.copy(images[0], other)
    label, items = explain(two_checkpoints[0], [*images, other], max_side=96)
    assert len(items) == 5
    for item in items[:4]:
        assert item.true_label in ("benign", "malignant")
        assert set(item.cams) == {item.predicted, item.true_label}
        assert sum(item.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        for m in item.cams.values():
            assert m.shape == item.rgb.shape[:2]  # the displayed image's size (aspect kept)
            assert m.min() >= 0 and m.max() <= 1
        assert max(item.rgb.shape[:2]) <= 96
    assert items[4].true_label is None and list(items[4].cams) == [items[4].predicted]
    assert label == "Random init"
    # 64 px: the last stage is 2x2, "auto" explains the deepest 4x4 stage and says so
    assert {(i.layer, i.map_size, i.last_layer) for i in items} == {("layer3", (4, 4), False)}
    _, last = explain(two_checkpoints[0], images[:1], "predicted", max_side=96, layer="last")
    assert (last[0].layer, last[0].map_size, last[0].layer_note) == ("layer4", (2, 2), "")


@pytest.mark.slow
def test_gradcam_images_writes_per_image_pngs_and_a_grid(two_checkpoints: tuple[Path, Path],
                                                         images: list[Path],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "cams"
    paths = gradcam_images(list(two_checkpoints), images, out, class_mode="malignant",
                           labels=["fine-tuned", "linear"], max_side=96)
    assert [p.name for p in paths[:-1]] == [f"{f.stem}.png" for f in images]
    assert paths[-1] == out / "gradcam_grid.png"
    for p in paths:
        with Image.open(p) as im:
            im.verify()
    with Image.open(paths[-1]) as grid, Image.open(paths[0]) as one:
        # the grid has 4 image rows and 3 columns; a per-image PNG has 2 checkpoint rows
        assert grid.size[1] > one.size[1] and grid.size[0] > 200
        assert np.asarray(grid.convert("L")).std() > 5


def test_gradcam_refuses_pretraining_checkpoints_and_unknown_classes(
        two_checkpoints: tuple[Path, Path], images: list[Path], tmp_path: Path) -> None:
    pre = tmp_path / "last.pt"  # what load_finetuned sees of a pre-training checkpoint
    torch.save({"kind": "mpcs-pretrain", "model": {}, "config": {}}, pre)
    with pytest.raises(CheckpointError, match="fine-tuned"):
        gradcam_images(pre, images, tmp_path / "x")
    with pytest.raises(ConfigError, match="tumour"):
        gradcam_images(two_checkpoints[0], images, tmp_path / "x", class_mode="tumour")
    with pytest.raises(ConfigError, match="label"):
        gradcam_images(two_checkpoints[0], images, tmp_path / "x", labels=["a", "b"])
    with pytest.raises(ConfigError, match="layer9.*layer1, layer2"):
        gradcam_images(two_checkpoints[0], images, tmp_path / "x", layer="layer9")


@pytest.mark.slow
def test_cli_gradcam(two_checkpoints: tuple[Path, Path], images: list[Path],
                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from mpcs.cli import main

    folder = tmp_path / "imgs"
    folder.mkdir()
    for f in images[:2]:
        shutil.copy(f, folder / f.name)
    out = tmp_path / "out"
    rc = main(["gradcam", "--checkpoint", str(two_checkpoints[0]), "--checkpoint",
               str(two_checkpoints[1]), "--images", str(folder), "--out", str(out),
               "--class", "true"])
    assert rc == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        [f"{f.stem}.png" for f in images[:2]] + ["gradcam_grid.png"])
    assert "comparison grid" in capsys.readouterr().out
    rc = main(["gradcam", "--checkpoint", str(two_checkpoints[0]), "--images", str(folder),
               "--out", str(out), "--class", "nonsense"])
    assert rc == 2
    rc = main(["gradcam", "--checkpoint", str(two_checkpoints[0]), "--images", str(folder),
               "--out", str(out), "--layer", "layer9"])
    assert rc == 2
    assert "layer9" in capsys.readouterr().err
    rc = main(["gradcam", "--checkpoint", str(two_checkpoints[0]), "--images", str(folder),
               "--out", str(tmp_path / "last"), "--layer", "last"])
    assert rc == 0
