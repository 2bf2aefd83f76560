"""UCSB breast cancer cell images: labels from names, patches of the real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mpcs.cli import main
from mpcs.core.errors import DataError
from mpcs.data.datasets.bcc import BCC_CLASSES, BCC_IMAGE_SIZE, parse_bcc_name, scan_bcc
from mpcs.data.images import load_rgb
from mpcs.data.patches import PatchSpec, extract_patches
from tests.conftest import SHARED_DATA


@pytest.fixture
def shared_bcc() -> Path:
    path = SHARED_DATA / "bcc"
    if not path.is_dir():
        pytest.skip(f"real BCC images not found at {path} (only in the project's workspace)")
    return path


def test_labels_come_from_the_names() -> None:
    assert parse_bcc_name("ytma10_010704_benign1_ccd.tif") == "benign"
    assert parse_bcc_name("YTMA23_022103_MALIGNANT2_ccd.TIF") == "malignant"
    for bad in ("ytma10_010704_benign1.tif", "benign1_ccd.tif", "ytma10_010704_normal1_ccd.tif"):
        with pytest.raises(ValueError, match="not a BCC image name"):
            parse_bcc_name(bad)


def test_real_images_are_read_and_cut(shared_bcc: Path, tmp_path: Path) -> None:
    images = scan_bcc(shared_bcc)
    assert len(images) == 12
    assert images["label"].value_counts().to_dict() == {"benign": 6, "malignant": 6}
    assert all(lab in name for lab, name in zip(images["label"], images["image_id"],
                                                  strict=True))
    first = images.iloc[0]
    rgb = np.asarray(load_rgb(first["path"]))
    assert rgb.shape == (BCC_IMAGE_SIZE[1], BCC_IMAGE_SIZE[0], 3)
    # 224x224 non-overlapping patches: 4 x 3 per 896x768 image, pixels as in the TIFF (RGB,
    # no channel swap).
    patches = extract_patches(images.iloc[:2], PatchSpec(224, 224), cache_dir=tmp_path,
                              progress=False)
    assert patches.groupby("image_id").size().tolist() == [12, 12]
    row = patches[(patches["x"] == 448) & (patches["y"] == 224)].iloc[0]
    np.testing.assert_array_equal(np.asarray(Image.open(row["path"])),
                                  rgb[224:448, 448:672])


def test_other_files_are_ignored_and_empty_folders_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no BCC image"):
        scan_bcc(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "notes.tif")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
        tmp_path / "ytma1_0101_malignant1_ccd.tif")
    assert scan_bcc(tmp_path)["image_id"].tolist() == ["ytma1_0101_malignant1_ccd.tif"]


def test_cli_synth_writes_a_bcc_set(tmp_path: Path) -> None:
    assert main(["synth", "--dataset", "bcc", "--out", str(tmp_path), "--images-per-class",
                 "2", "--image-size", "48x40", "--quiet"]) == 0
    images = scan_bcc(tmp_path / "bcc")
    assert images["label"].value_counts().to_dict() == {c: 2 for c in BCC_CLASSES}
    with Image.open(images["path"].iloc[0]) as im:
        assert im.size == (48, 40)
