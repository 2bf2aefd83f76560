"""Reinhard / Macenko stain normalisation (torchstain) and the fallback for blank patches."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mpcs.core.errors import ConfigError, DataError
from mpcs.data.patches import PatchSpec, extract_patches, image_manifest
from mpcs.data.stain import StainNormaliser, build_normaliser, tissue_fraction
from mpcs.data.synth.transfer import BCC_GRADES, render_image


@pytest.fixture(scope="module")
def he_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A reference and a differently stained H&E-like image (synthetic, 96x96)."""
    root = tmp_path_factory.mktemp("stain")
    out = {}
    for name, seed in (("reference", 3), ("other", 11)):
        rgb = render_image(BCC_GRADES["malignant"], (96, 96), seed, 0)
        # denser staining than the generator's default; "other" bluer and darker still
        scale = [0.55, 0.6, 0.8] if name == "other" else [0.75, 0.75, 0.75]
        rgb = np.clip(rgb.astype(float) * scale, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / f"{name}.tif")
        out[name] = root / f"{name}.tif"
    return out


@pytest.mark.parametrize(("method", "ratio"), [("reinhard", 0.5), ("macenko", 0.8)])
def test_normalisation_moves_colours_towards_the_reference(he_images, method, ratio) -> None:
    ref = np.asarray(Image.open(he_images["reference"])).reshape(-1, 3).astype(float)
    raw = np.asarray(Image.open(he_images["other"]))
    norm = StainNormaliser(method, he_images["reference"])
    out, ok = norm.normalise(raw)
    assert ok and out.shape == raw.shape and out.dtype == np.uint8
    before = np.abs(raw.reshape(-1, 3).mean(0) - ref.mean(0)).sum()
    after = np.abs(out.reshape(-1, 3).astype(float).mean(0) - ref.mean(0)).sum()
    assert after < ratio * before
    if method == "reinhard":  # matching LAB statistics leaves the reference as it is
        same, ok = norm.normalise(ref.reshape(96, 96, 3).astype(np.uint8))
        assert ok and np.abs(same.astype(float).reshape(-1, 3) - ref).mean() < 3


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_a_blank_patch_falls_back_to_the_raw_pixels(he_images, method) -> None:
    norm = StainNormaliser(method, he_images["reference"])
    blank = np.full((32, 32, 3), 245, np.uint8)
    out, ok = norm.normalise(blank)
    assert not ok
    np.testing.assert_array_equal(out, blank)
    assert tissue_fraction(blank) == 0.0


def test_fallbacks_are_counted_and_logged(he_images, tmp_path, caplog) -> None:
    tissue = np.asarray(Image.open(he_images["other"]))
    half = np.concatenate([tissue[:, :48], np.full((96, 48, 3), 250, np.uint8)], axis=1)
    Image.fromarray(half).save(tmp_path / "half.tif")
    images = image_manifest([tmp_path / "half.tif"], ["x"], tmp_path)
    norm = build_normaliser("macenko", he_images["reference"])
    with caplog.at_level(logging.INFO, logger="mpcs.data.patches"):
        frame = extract_patches(images, PatchSpec(48, 48), norm, cache_dir=tmp_path / "c",
                                progress=False)
    # the right-hand column of patches is blank
    assert frame["stain_fallback"].tolist() == [False, True, False, True]
    assert frame.attrs["stain_fallbacks"] == 2
    assert "2 of 4 patches fell back" in caplog.text
    blank = np.asarray(Image.open(frame["path"].iloc[1]))
    np.testing.assert_array_equal(blank, half[:48, 48:])
    # the raw patches live in another cache folder than the normalised ones
    raw = extract_patches(images, PatchSpec(48, 48), None, cache_dir=tmp_path / "c",
                          progress=False)
    assert raw["path"].iloc[0] != frame["path"].iloc[0]
    assert not np.array_equal(np.asarray(Image.open(raw["path"].iloc[0])),
                              np.asarray(Image.open(frame["path"].iloc[0])))


def test_bad_settings_are_explicit(he_images, tmp_path) -> None:
    assert build_normaliser("none", None) is None
    with pytest.raises(ConfigError, match="reference"):
        build_normaliser("reinhard", tmp_path / "missing.tif")
    with pytest.raises(ConfigError, match="one of"):
        StainNormaliser("vahadane", he_images["reference"])
    Image.fromarray(np.full((32, 32, 3), 250, np.uint8)).save(tmp_path / "white.tif")
    with pytest.raises(DataError, match="white.tif"):
        StainNormaliser("macenko", tmp_path / "white.tif")
