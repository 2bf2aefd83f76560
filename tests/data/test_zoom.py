"""Synthetic magnification (nested crop-and-resize) and continuous-scale pair sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mpcs.core.errors import ConfigError, DataError
from mpcs.data.pairs.samplers import (
    MAGNIFICATION_SCALES,
    ContinuousPair,
    create_pair_sampler,
    relative_scale,
)
from mpcs.data.pairs.zoom import (
    ZoomPairData,
    centred_boxes,
    decode_square,
    default_base_size,
    zoom_image_table,
    zoom_pair,
)
from mpcs.data.transforms.geometry import crop_resize


def test_crop_resize_identity_and_area_average() -> None:
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(1, 3, 1, 1)
    same = crop_resize(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 8)
    torch.testing.assert_close(same, x)
    half = crop_resize(x, torch.tensor([[0.0, 0.0, 8.0, 8.0]]), 4)
    expected = x.view(1, 3, 4, 2, 4, 2).mean(dim=(3, 5))  # 2x2 block means: no aliasing
    torch.testing.assert_close(half, expected)
    corner = crop_resize(x, torch.tensor([[4.0, 4.0, 8.0, 8.0]]), 4)
    torch.testing.assert_close(corner, x[:, :, 4:, 4:])


def test_zoom_pair_is_nested_around_a_common_centre() -> None:
    base = torch.rand(3, 3, 64, 64)
    s1, s2 = np.array([1.0, 2.0, 4.0]), np.array([4.0, 4.0, 2.0])
    v1, v2 = zoom_pair(base, s1, s2, 16, np.random.default_rng(0))
    cx, cy = _centres(s1, s2, 64, np.random.default_rng(0))
    for i in range(3):
        # Zooming view 1 further by s2/s1 around the same centre gives view 2.
        box = centred_boxes(cx[i:i + 1], cy[i:i + 1], np.array([s2[i]]), 64)
        torch.testing.assert_close(v2[i:i + 1], crop_resize(base[i:i + 1], box, 16))
    assert v1.shape == v2.shape == (3, 3, 16, 16)


def _centres(s1, s2, base, rng):
    half = base / (2 * np.minimum(s1, s2))
    u, v = rng.uniform(0, 1, (len(s1), 2)).T
    return half + u * (base - 2 * half), half + v * (base - 2 * half)


def test_zoom_keeps_the_wider_field_inside_the_image() -> None:
    base = torch.zeros(200, 1, 32, 32)
    base[:, :, 0, :] = base[:, :, -1, :] = base[:, :, :, 0] = base[:, :, :, -1] = 1.0  # frame
    rng = np.random.default_rng(1)
    v1, _ = zoom_pair(base, np.ones(200), np.full(200, 2.0), 32, rng)
    # scale 1 is the whole image whatever the centre: the frame is always fully visible
    torch.testing.assert_close(v1, base)
    with pytest.raises(ValueError, match=">= 1"):
        zoom_pair(base[:1], np.array([0.5]), np.array([2.0]), 8, rng)


def test_decode_square_keeps_aspect_and_centre(tmp_path: Path) -> None:
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, 20:60] = 255  # the central square is white
    Image.fromarray(img).save(tmp_path / "a.png")
    out = decode_square(tmp_path / "a.png", 20)
    assert out.shape == (3, 20, 20)
    assert out.min() > 200


def test_zoom_image_table_patients_from_folders_or_stems(tmp_path: Path) -> None:
    for rel in ("p1/x.png", "p1/sub/y.png", "p2/z.jpg", "loose.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / rel)
    (tmp_path / "notes.txt").write_text("not an image")
    table = zoom_image_table(tmp_path)
    got = {Path(p).name: pid for p, pid in zip(table["path"], table["patient_id"], strict=True)}
    assert got == {"x.png": "p1", "y.png": "p1", "z.jpg": "p2", "loose.png": "loose"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        zoom_image_table(tmp_path / "empty")


def test_zoom_image_table_of_breakhis_takes_each_patients_lowest_magnification(
        tiny_breakhis: Path) -> None:
    table = zoom_image_table(tiny_breakhis)  # the default: every patient has 40X here
    assert len(table) == 12 and all("-40-" in Path(p).name for p in table["path"])
    assert table["patient_id"].nunique() == 4
    assert len(zoom_image_table(tiny_breakhis, "all")) == 48
    only = zoom_image_table(tiny_breakhis, "200X")
    assert len(only) == 12 and all("-200-" in Path(p).name for p in only["path"])


def test_zoom_pair_data_bad_image_policy(tmp_path: Path) -> None:
    Image.fromarray(np.full((30, 30, 3), 128, np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"broken")
    table = zoom_image_table(tmp_path)
    with pytest.raises(DataError, match="bad.png"):
        ZoomPairData(table, 16, 32, progress=False)
    data = ZoomPairData(table, 16, 32, progress=False, on_bad_image="skip")
    assert len(data) == 1 and data.dropped[0][0].endswith("bad.png")
    v1, v2 = data.views(np.array([0, 0]), np.array([1.0, 1.5]), np.array([2.0, 1.0]),
                        np.random.default_rng(0))
    assert v1.shape == (2, 3, 16, 16) and float(v1.max()) <= 1.0


def test_default_base_size() -> None:
    assert default_base_size(48, 4.0) == 192
    assert default_base_size(224, 10.0) == 1024


# ----------------------------------------------------------------- continuous scale pairs


def test_continuous_scales_are_log_uniform_in_range_and_distinct() -> None:
    sampler = create_pair_sampler("continuous", scale_range=(1.0, 16.0), min_ratio=1.5)
    s1, s2 = sampler.sample_scales(20000, np.random.default_rng(0))
    for s in (s1, s2):
        assert s.min() >= 1.0 and s.max() <= 16.0
        # log-uniform: the marginal of log2(s) over [0, 4] is symmetric with mean 2
        assert np.log2(s).mean() == pytest.approx(2.0, abs=0.05)
    ratio = relative_scale(s1, s2)
    assert (np.maximum(ratio, 1 / ratio) >= 1.5 - 1e-12).all()
    assert (ratio > 1).mean() == pytest.approx(0.5, abs=0.02)  # both directions


def test_continuous_sampler_refuses_impossible_ranges_and_breakhis_indices() -> None:
    with pytest.raises(ConfigError, match="widen the range"):
        ContinuousPair((1.0, 1.2), 1.25)
    with pytest.raises(ConfigError, match="0 < min < max"):
        ContinuousPair((2.0, 1.0))
    with pytest.raises(ConfigError, match="data.source=zoom or wsi"):
        ContinuousPair().sample(4, np.random.default_rng(0))


@pytest.mark.parametrize("name,pairs", [
    ("fixed", {(5.0, 10.0)}),
    ("ordered", {(1.0, 2.5), (2.5, 5.0), (5.0, 10.0), (10.0, 5.0)}),
])
def test_discrete_strategies_are_special_cases_of_scale_pairs(name, pairs) -> None:
    s1, s2 = create_pair_sampler(name).sample_scales(200, np.random.default_rng(0))
    assert set(zip(s1.tolist(), s2.tolist(), strict=True)) == pairs
    assert set(MAGNIFICATION_SCALES.tolist()) >= set(s1.tolist())


def test_view_specs_fix_the_common_centre() -> None:
    from mpcs.data.pairs.samplers import ScaleViewSampler

    sampler = ScaleViewSampler(create_pair_sampler("continuous", (1.0, 4.0), 1.25))
    a, b = sampler.sample(5, np.random.default_rng(3))
    assert a.shape == b.shape == (5, 3)
    np.testing.assert_array_equal(a[:, 1:], b[:, 1:])  # one centre per pair
    base = torch.rand(5, 3, 32, 32)
    v1, v2 = zoom_pair(base, a[:, 0], b[:, 0], 8, uv=a[:, 1:])
    w1, w2 = zoom_pair(base, a[:, 0], b[:, 0], 8, uv=a[:, 1:])
    torch.testing.assert_close(v1, w1)  # deterministic given the specs
    same = ScaleViewSampler(create_pair_sampler("ordered"), same_image=True)
    a, b = same.sample(8, np.random.default_rng(0))
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_pretrain_on_zoomed_single_scale_images_logs_pair_scales(tiny_breakhis: Path,
                                                                 tmp_path: Path) -> None:
    import csv

    from mpcs.config import resolve
    from mpcs.engine.pretrain import pretrain
    from tests.conftest import TINY_OVERRIDES

    cfg = resolve(preset="cpu-small", overrides=[
        *TINY_OVERRIDES, "data.source=zoom", "pairs.strategy=continuous",
        "pairs.scale_range=[1, 4]", "pairs.min_ratio=1.5", "pairs.log_scales=true",
        "train.threads=1"])
    summary = pretrain(cfg, tiny_breakhis, tmp_path / "run", progress=False)
    assert summary["pair_samples"] == 12  # the 40X image of each of the 12 samples
    rows = list(csv.DictReader((tmp_path / "run" / "pair_scales.csv").open()))
    assert len(rows) == 12  # three steps of four pairs
    for r in rows:
        s1, s2, rel = float(r["scale1"]), float(r["scale2"]), float(r["relative_scale"])
        assert 1 <= s1 <= 4 and 1 <= s2 <= 4 and rel == pytest.approx(s2 / s1)
        assert max(rel, 1 / rel) >= 1.5 - 1e-9


def test_continuous_pairs_on_breakhis_are_refused_before_training() -> None:
    from mpcs.config import resolve

    with pytest.raises(ConfigError, match="data.source=zoom or wsi"):
        resolve(preset="cpu-small", overrides=["pairs.strategy=continuous"])


def test_pair_scale_rows_for_breakhis_indices_and_view_specs() -> None:
    from mpcs.data.pairs.sources import pair_scale_rows

    rows = pair_scale_rows(1, 7, np.array([3, 5]), np.array([0, 3]), np.array([1, 2]))
    assert rows == [(1, 7, 3, 1.0, 2.5, 2.5), (1, 7, 5, 10.0, 5.0, 0.5)]
    specs1 = np.array([[2.0, 0.1, 0.2]])
    specs2 = np.array([[3.0, 0.1, 0.2]])
    assert pair_scale_rows(2, 1, np.array([0]), specs1, specs2) == [(2, 1, 0, 2.0, 3.0, 1.5)]


def test_pair_scale_log_drops_redone_epochs_after_a_crash(tmp_path: Path) -> None:
    from mpcs.engine.pair_data import StepPlan
    from mpcs.engine.pair_data import log_pair_scales as _log_pair_scales

    plan = StepPlan(np.array([0, 1]), np.array([0, 1]), np.array([1, 2]))
    _log_pair_scales(tmp_path, 1, 0, [plan])
    _log_pair_scales(tmp_path, 2, 1, [plan])
    _log_pair_scales(tmp_path, 2, 1, [plan])  # epoch 2 redone after --resume
    lines = (tmp_path / "pair_scales.csv").read_text().splitlines()
    assert [x.split(",")[0] for x in lines] == ["epoch", "1", "1", "2", "2"]
