"""Whole-slide pairs: a pyramidal TIFF written here, opened by OpenSlide as a generic tiled
TIFF; tissue mask, tissue locations and the same location read at several scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("openslide", reason="needs the wsi extra: pip install 'mpcs[wsi]'")
pytest.importorskip("tifffile")

from mpcs.core.errors import DataError  # noqa: E402
from mpcs.data.pairs.wsi import (
    WSIOptions,
    WSIPairData,
    list_slides,
    open_slide,
    otsu_threshold,
    read_view,
    slide_mpp,
    tissue_mask,
    write_pyramid_tiff,
)

MPP = 0.5


def _slide_rgb() -> np.ndarray:
    """White glass with one pink tissue rectangle holding a checkerboard of 4-pixel purple
    squares (fine structure visible only at high magnification) in its left half."""
    rgb = np.full((768, 1024, 3), 245, np.uint8)
    rgb[128:640, 256:896] = (225, 150, 190)
    yy, xx = np.mgrid[128:640, 256:576]
    checker = ((yy // 4 + xx // 4) % 2).astype(bool)
    block = rgb[128:640, 256:576]
    block[checker] = (90, 40, 120)
    return rgb


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pyramid_tiff(tmp_path_factory.mktemp("wsi") / "slide-01.tif", _slide_rgb(), MPP)


def test_openslide_reads_the_written_pyramid_with_its_resolution(slide_path: Path) -> None:
    slide = open_slide(slide_path)
    assert slide.level_count == 3
    assert slide.level_dimensions[0] == (1024, 768)
    assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
    assert slide_mpp(slide, slide_path, None) == (pytest.approx(MPP), True)


def test_missing_resolution_needs_an_assumption(tmp_path: Path) -> None:
    path = write_pyramid_tiff(tmp_path / "nompp.tif", _slide_rgb()[:256, :256], None, levels=1)
    slide = open_slide(path)
    with pytest.raises(DataError, match="assume_mpp"):
        slide_mpp(slide, path, None)
    assert slide_mpp(slide, path, 0.25) == (0.25, False)


def test_unreadable_slide_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide")
    with pytest.raises(DataError, match="broken.svs"):
        open_slide(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no whole-slide image"):
        list_slides(tmp_path / "empty")


def test_otsu_separates_two_modes() -> None:
    values = np.concatenate([np.full(100, 10), np.full(100, 200)]).astype(np.uint8)
    assert 10 <= otsu_threshold(values) < 200


def test_tissue_mask_finds_the_tissue_not_the_glass(slide_path: Path) -> None:
    mask, ds = tissue_mask(open_slide(slide_path), max_side=256)
    assert ds == pytest.approx(4.0)
    assert mask.shape == (192, 256)
    truth = np.zeros_like(mask)
    truth[32:160, 64:224] = True
    assert (mask == truth).mean() > 0.97


def test_same_location_at_several_scales_is_nested(slide_path: Path) -> None:
    slide = open_slide(slide_path)
    centre = (416.0, 384.0)  # inside the checkerboard
    # 32 px at 4 µm/px = 128 µm = 256 level-0 px (read from level 2); at 0.5 µm/px = 32 px.
    wide = read_view(slide, centre, 4.0, MPP, 32)
    close = read_view(slide, centre, 0.5, MPP, 32)
    assert wide.shape == close.shape == (3, 32, 32)
    # Zoomed in, the 4-px squares are resolved: strong contrast; zoomed out they average out.
    assert close[0].std() > 3 * wide[0].std()
    # The close view is the middle eighth of the wide view: same mean colour there.
    level0 = _slide_rgb()[int(centre[1]) - 16:int(centre[1]) + 16,
                          int(centre[0]) - 16:int(centre[0]) + 16].transpose(2, 0, 1)
    assert np.abs(close.astype(int) - level0.astype(int)).mean() < 2


def test_pair_data_samples_tissue_and_reads_pairs(slide_path: Path) -> None:
    opts = WSIOptions(mpp_at_1x=2.0, locations_per_slide=10, min_tissue=0.9, mask_max_side=256)
    data = WSIPairData(list_slides(slide_path.parent), 32, opts, max_scale=4.0, seed=0)
    assert len(data) == 10
    assert set(data.samples["patient_id"]) == {"slide-01"}
    # Every location's widest field (32 px * 2 µm = 64 µm = 128 level-0 px) is on tissue.
    assert data.samples["x"].between(256 + 64 - 8, 896 - 64 + 8).all()
    assert data.samples["y"].between(128 + 64 - 8, 640 - 64 + 8).all()
    v1, v2 = data.views(np.arange(4), np.ones(4), np.full(4, 4.0))
    assert v1.shape == v2.shape == (4, 3, 32, 32)
    assert v1.dtype == v2.dtype == torch.uint8
    np.testing.assert_array_equal(data.stack(0, [1.0, 4.0])[1], v2[0].numpy())
    data.close()


def test_slide_without_tissue_is_left_out_with_a_reason(tmp_path: Path) -> None:
    blank = write_pyramid_tiff(tmp_path / "blank.tif",
                               np.full((256, 256, 3), 250, np.uint8), MPP, levels=2)
    with pytest.raises(DataError, match="no tissue location"):
        WSIPairData([blank], 32, WSIOptions(mask_max_side=128))


@pytest.mark.slow
def test_pretrain_on_a_generated_slide(slide_path: Path, tmp_path: Path) -> None:
    from mpcs.config import resolve
    from mpcs.engine.pretrain import load_pretrained, pretrain
    from tests.conftest import TINY_OVERRIDES

    cfg = resolve(preset="cpu-small", overrides=[
        *TINY_OVERRIDES, "data.source=wsi", "pairs.strategy=continuous",
        "pairs.scale_range=[1, 4]", "wsi.mpp_at_1x=2.0", "wsi.locations_per_slide=8",
        "wsi.mask_max_side=256", "method=vicreg", "train.threads=1"])
    summary = pretrain(cfg, slide_path.parent, tmp_path / "run", progress=False)
    assert summary["pair_samples"] == 8 and summary["global_step"] == 2
    assert (tmp_path / "run" / "pretrain_patients.txt").read_text().split() == ["slide-01"]
    assert load_pretrained(summary["checkpoint"]).encoder is not None
