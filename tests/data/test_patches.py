"""Patch extraction (grid, pixels, cache) and majority voting: one mechanism for all sets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mpcs.core.errors import ConfigError, DataError
from mpcs.data.patches import (
    PatchSpec,
    extract_patches,
    image_manifest,
    majority_vote,
    patch_grid,
)
from mpcs.data.splits import make_splits


def _write(path: Path, width: int, height: int, seed: int) -> np.ndarray:
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return rgb


def test_grid_matches_the_papers_patch_counts() -> None:
    assert len(patch_grid(2048, 1536, 512, 256)) == 7 * 5      # BACH, 50 % overlap
    assert len(patch_grid(2048, 1536, 512, 512)) == 4 * 3
    assert len(patch_grid(896, 768, 224, 224)) == 4 * 3        # BCC, no overlap
    assert all(x + 224 <= 896 and y + 224 <= 768 for x, y in patch_grid(896, 768, 224, 224))
    with pytest.raises(ValueError, match="smaller"):
        patch_grid(100, 300, 128, 64)
    with pytest.raises(ConfigError):
        PatchSpec(224, 0)


def test_patches_hold_the_source_pixels_and_are_cached(tmp_path: Path) -> None:
    a = _write(tmp_path / "data" / "a.tif", 70, 50, 0)
    _write(tmp_path / "data" / "b.tif", 40, 40, 1)
    images = image_manifest([tmp_path / "data" / "a.tif", tmp_path / "data" / "b.tif"],
                            ["x", "y"], tmp_path / "data")
    assert images["image_id"].tolist() == ["a.tif", "b.tif"]
    spec = PatchSpec(20, 10)
    frame = extract_patches(images, spec, cache_dir=tmp_path / "cache", progress=False)
    per_image = frame.groupby("image_id").size().to_dict()
    assert per_image == {"a.tif": 6 * 4, "b.tif": 3 * 3}
    # patient_id is the image: the train/val/test machinery keeps an image's patches together
    assert (frame["patient_id"] == frame["image_id"]).all()
    row = frame[(frame["image_id"] == "a.tif") & (frame["x"] == 30) & (frame["y"] == 20)]
    patch = np.asarray(Image.open(row["path"].iloc[0]))
    np.testing.assert_array_equal(patch, a[20:40, 30:50])

    # A second call reuses the cached files; a changed image is cut again.
    first = {p: os.stat(p).st_mtime_ns for p in frame["path"]}
    again = extract_patches(images, spec, cache_dir=tmp_path / "cache", progress=False)
    assert again["path"].tolist() == frame["path"].tolist()
    assert {p: os.stat(p).st_mtime_ns for p in again["path"]} == first
    new = _write(tmp_path / "data" / "a.tif", 70, 50, 7)
    changed = extract_patches(images, spec, cache_dir=tmp_path / "cache", progress=False)
    row = changed[(changed["image_id"] == "a.tif") & (changed["x"] == 0) & (changed["y"] == 0)]
    np.testing.assert_array_equal(np.asarray(Image.open(row["path"].iloc[0])), new[:20, :20])


def test_an_image_smaller_than_a_patch_is_named(tmp_path: Path) -> None:
    _write(tmp_path / "small.tif", 30, 30, 0)
    images = image_manifest([tmp_path / "small.tif"], ["x"], tmp_path)
    with pytest.raises(DataError, match="small.tif"):
        extract_patches(images, PatchSpec(64, 64), cache_dir=tmp_path / "c", progress=False)


def test_majority_vote_and_its_tie_break() -> None:
    classes = ["Normal", "Benign", "InSitu", "Invasive"]
    probs = np.array([
        [0.7, 0.1, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7],   # a: 2 x Normal
        [0.4, 0.5, 0.05, 0.05], [0.45, 0.05, 0.05, 0.45],                   # b: tie
        [0.1, 0.2, 0.6, 0.1]])                                               # c: one patch
    # b: Benign 1 vote, Normal 1 vote (argmax of [.45,.05,.05,.45] is the first, Normal);
    # mean probability of Normal (0.425) beats Benign (0.275).
    votes = majority_vote(["a", "a", "a", "b", "b", "c"], probs, classes)
    assert votes["image_id"].tolist() == ["a", "b", "c"]
    assert votes["prediction"].tolist() == ["Normal", "Normal", "InSitu"]
    assert votes["n_patches"].tolist() == [3, 2, 1]
    assert votes.loc[0, "votes_Normal"] == 2 and votes.loc[0, "votes_Invasive"] == 1
    np.testing.assert_allclose(votes.loc[1, "prob_Benign"], 0.275)
    # the tie goes to the higher mean probability, whatever the class order
    flipped = majority_vote(["b", "b"], np.array([[0.1, 0.9], [0.8, 0.2]]), ["x", "y"])
    assert flipped["prediction"].tolist() == ["y"]
    with pytest.raises(ValueError):
        majority_vote(["a"], np.ones((2, 4)), classes)


def test_image_manifest_splits_at_image_level(tmp_path: Path) -> None:
    paths = [tmp_path / f"{label}{i}.tif" for label in ("b", "m") for i in range(6)]
    images = image_manifest(paths, ["benign"] * 6 + ["malignant"] * 6, tmp_path)
    splits = make_splits(images, folds=3, seed=0, label_fractions=[0.5, 1.0],
                         stratify="label", fraction_by_magnification=False)
    tested = []
    for k in range(3):
        fold = splits.fold(k)
        assert not set(fold.train) & set(fold.test) and not set(fold.val) & set(fold.test)
        tested += fold.test
        half = set(splits.frame(images, k, "train", fraction=0.5)["image_id"])
        full = set(splits.frame(images, k, "train", fraction=1.0)["image_id"])
        assert half < full  # nested label fractions
        test = splits.frame(images, k, "test")
        assert set(test["label"]) == {"benign", "malignant"}  # stratified by class
    assert sorted(tested) == sorted(images["image_id"])
    assert isinstance(images, pd.DataFrame) and images.attrs["root"] == str(tmp_path.resolve())
