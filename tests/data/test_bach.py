"""BACH reader (official ICIAR 2018 layout, ground-truth CSV) and its synthetic stand-in."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mpcs.cli import main
from mpcs.core.errors import DataError
from mpcs.data.datasets.bach import BACH_CLASSES, GROUND_TRUTH, scan_bach
from mpcs.data.patches import PatchSpec, extract_patches
from mpcs.data.synth.transfer import write_bach


@pytest.fixture(scope="module")
def tiny_bach(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bach(tmp_path_factory.mktemp("bach"), images_per_class=2, image_size=(64, 48),
                      seed=2, progress=False)


def test_scan_reads_the_official_layout(tiny_bach: Path) -> None:
    images = scan_bach(tiny_bach)
    assert len(images) == 8
    assert images["label"].value_counts().to_dict() == {c: 2 for c in BACH_CLASSES}
    assert "Benign/b001.tif" in set(images["image_id"])
    assert (images["patient_id"] == images["image_id"]).all()  # folds split by photo
    for row in images.itertuples():
        assert Path(row.path).parent.name == row.label
        with Image.open(row.path) as im:
            assert im.size == (64, 48) and im.mode == "RGB"
    # The Photos folder, the challenge folder and its parent all work.
    for root in (tiny_bach / "Photos", tiny_bach, tiny_bach.parent):
        assert scan_bach(root)["image_id"].tolist() == images["image_id"].tolist()
    # The photos cut into 32x32 patches with 50 % overlap: 3 x 2 per photo.
    patches = extract_patches(images, PatchSpec(32, 16), progress=False)
    assert len(patches) == 8 * 3 * 2


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst / "Photos"


def test_ground_truth_must_agree_with_the_folders(tiny_bach: Path, tmp_path: Path) -> None:
    photos = _copy(tiny_bach, tmp_path / "a")
    truth = photos / GROUND_TRUTH
    lines = truth.read_text().splitlines()
    truth.write_text("\n".join(line.replace("b001.tif,Benign", "b001.tif,Invasive")
                               for line in lines) + "\n")
    with pytest.raises(DataError, match="b001.tif.*Invasive"):
        scan_bach(photos)
    truth.write_text("\n".join(line for line in lines if not line.startswith("n002")) + "\n")
    with pytest.raises(DataError, match="n002.tif: not listed"):
        scan_bach(photos)
    truth.unlink()  # without the CSV the folders give the labels
    assert len(scan_bach(photos)) == 8


def test_missing_layout_is_explained(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no BACH photos"):
        scan_bach(tmp_path)
    (tmp_path / "Photos" / "Benign").mkdir(parents=True)
    with pytest.raises(DataError, match="no .tif"):
        scan_bach(tmp_path)


def test_cli_synth_writes_a_bach_set(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--dataset", "bach", "--out", str(tmp_path), "--images-per-class",
                 "1", "--image-size", "40x32", "--quiet"]) == 0
    assert "bach" in capsys.readouterr().out
    images = scan_bach(tmp_path)
    assert sorted(images["label"]) == sorted(BACH_CLASSES)
