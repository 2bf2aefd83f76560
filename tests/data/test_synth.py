"""Tests for mpcs.data.synth: the procedural BreakHis stand-in and its archive layout."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mpcs.core.errors import ConfigError
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.datasets.breakhis import complete_samples, scan_breakhis
from mpcs.data.datasets.breakhis_names import SUBTYPE_LABEL, SUBTYPES
from mpcs.data.synth.breakhis import (
    SynthConfig,
    parse_image_size,
    patient_specs,
    render_sample,
    write_breakhis,
)

TINY = SynthConfig(patients=4, samples_per_patient=2, image_size=(48, 32), seed=5)
# histology_slides/breast/<class>/SOB/<type folder>/SOB_<B|M>_<T>_<yy>-<slide>/<mag>/<file>
LAYOUT = re.compile(
    r"histology_slides/breast/(?P<label>benign|malignant)/SOB/(?P<folder>[a-z_]+)/"
    r"SOB_(?P<l1>[BM])_(?P<t1>[A-Z]+)_(?P<pid>\d\d-\w+)/(?P<mag>\d+X)/"
    r"SOB_(?P<l2>[BM])_(?P<t2>[A-Z]+)-(?P<pid2>\d\d-\w+)-(?P<m2>\d+)-(?P<seq>\d{3})\.png"
)


def write(out: Path, cfg: SynthConfig = TINY) -> Path:
    return write_breakhis(out, cfg, progress=False, workers=2)


def png_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write(tmp_path_factory.mktemp("synth-tiny"))


# --------------------------------------------------------------------------- layout


def test_writes_the_official_layout(tiny: Path) -> None:
    assert tiny.name == "BreaKHis_v1"
    files = [p for p in tiny.rglob("*") if p.is_file()]
    pngs = [p for p in files if p.suffix == ".png"]
    others = [p.name for p in files if p.suffix != ".png"]
    assert others == ["mpcs-synth.json"]
    assert len(pngs) == 4 * 2 * 4
    for p in pngs:
        rel = p.relative_to(tiny).as_posix()
        m = LAYOUT.fullmatch(rel)
        assert m, rel
        code = m["t1"]
        assert m["l1"] == m["l2"] == ("B" if m["label"] == "benign" else "M")
        assert m["t2"] == code and m["pid2"] == m["pid"]
        assert SUBTYPE_LABEL[code] == m["label"] and SUBTYPES[code] == m["folder"]
        assert m["mag"] == f"{m['m2']}X" and m["mag"] in MAGNIFICATIONS
        with Image.open(p) as img:
            assert img.mode == "RGB" and img.size == (48, 32)


def test_scan_breakhis_parses_the_synthetic_set(tiny: Path) -> None:
    df = scan_breakhis(tiny.parent)  # the folder given to write_breakhis is accepted too
    assert len(df) == 32 and df.attrs["skipped"] == []
    assert df["patient_id"].nunique() == 4
    assert (df.groupby("patient_id")["label"].nunique() == 1).all()
    labels = df.groupby("patient_id")["label"].first()
    assert sorted(labels.value_counts().items()) == [("benign", 2), ("malignant", 2)]
    # Subtypes cycle within each class: patients 0,2 benign A,F; 1,3 malignant DC,LC.
    assert set(df["subtype"]) == {"A", "F", "DC", "LC"}
    assert df["magnification"].value_counts().to_dict() == {m: 8 for m in MAGNIFICATIONS}
    assert sorted(set(df["sequence"])) == [1, 2]
    assert (df["width"] == 48).all() and (df["height"] == 32).all()
    samples = complete_samples(df)
    assert len(samples) == 8
    assert samples[[f"path_{m}" for m in MAGNIFICATIONS]].notna().all().all()
    assert samples["sample_key"].is_unique


def test_all_subtypes_appear_with_enough_patients() -> None:
    specs = patient_specs(SynthConfig(patients=8))
    assert [s.label for s in specs] == ["benign", "malignant"] * 4
    assert {s.subtype for s in specs} == set(SUBTYPES)
    assert len({s.patient_id for s in specs}) == 8
    for s in specs:
        assert SUBTYPES[s.subtype] == s.subtype_folder and SUBTYPE_LABEL[s.subtype] == s.label


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_different_seed_different_bytes(tiny: Path, tmp_path: Path) -> None:
    again = png_files(write(tmp_path / "again"))
    assert again == png_files(tiny)
    other = png_files(write(tmp_path / "other", SynthConfig(patients=4, samples_per_patient=2,
                                                            image_size=(48, 32), seed=6)))
    assert other.keys() == again.keys()
    assert all(other[k] != again[k] for k in again)


def test_a_sample_does_not_depend_on_how_many_are_generated() -> None:
    two = SynthConfig(patients=4, samples_per_patient=2, image_size=(48, 32), seed=5)
    three = SynthConfig(patients=6, samples_per_patient=3, image_size=(48, 32), seed=5)
    for p2, p3 in zip(patient_specs(two), patient_specs(three), strict=False):
        assert p2 == p3
        for s in range(2):
            a, b = render_sample(two, p2, s), render_sample(three, p3, s)
            assert all(np.array_equal(a[m], b[m]) for m in MAGNIFICATIONS)
    # ... and different samples of one patient are different images.
    p = patient_specs(two)[0]
    a, b = render_sample(two, p, 0), render_sample(two, p, 1)
    assert not np.array_equal(a["40X"], b["40X"])


def test_written_files_of_a_sample_match_for_2_and_3_samples(tiny: Path, tmp_path: Path) -> None:
    three = png_files(write(tmp_path / "three", SynthConfig(
        patients=4, samples_per_patient=3, image_size=(48, 32), seed=5)))
    two = png_files(tiny)
    assert len(three) == 48 and set(two) < set(three)
    assert all(three[k] == v for k, v in two.items())


# --------------------------------------------------------------------------- image content


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64).mean(axis=2)


def _down(img: np.ndarray, k: int) -> np.ndarray:
    h, w = img.shape
    return img[: h // k * k, : w // k * k].reshape(h // k, k, w // k, k).mean(axis=(1, 3))


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def large_samples() -> list[dict[str, np.ndarray]]:
    cfg = SynthConfig(patients=4, samples_per_patient=1, image_size=(200, 132), seed=3)
    return [render_sample(cfg, p, 0) for p in patient_specs(cfg)]


def test_200x_is_the_central_half_of_100x(large_samples: list) -> None:
    # 200X at 200x132 covers the central 100x66 pixels of the 100X image.
    for i, sample in enumerate(large_samples):
        zoomed = _down(_gray(sample["200X"]), 2)
        centre = _gray(sample["100X"])[33:99, 50:150]
        other = _gray(large_samples[(i + 1) % 4]["100X"])[33:99, 50:150]
        same, diff = _corr(zoomed, centre), _corr(zoomed, other)
        assert same > 0.8, (i, same)
        assert same > diff + 0.4, (i, same, diff)


def test_400x_is_the_central_half_of_200x(large_samples: list) -> None:
    for sample in large_samples:
        zoomed = _down(_gray(sample["400X"]), 2)
        assert _corr(zoomed, _gray(sample["200X"])[33:99, 50:150]) > 0.8


def test_400x_is_the_central_tenth_of_40x(large_samples: list) -> None:
    # 400X downsampled by 10 is 20x13 pixels: the central 20x13 of the 40X image.
    for i, sample in enumerate(large_samples):
        zoomed = _down(_gray(sample["400X"]), 10)
        centre = _gray(sample["40X"])[59:72, 90:110]
        other = _gray(large_samples[(i + 1) % 4]["40X"])[59:72, 90:110]
        same, diff = _corr(zoomed, centre), _corr(zoomed, other)
        assert same > 0.6, (i, same)
        assert same > diff + 0.3, (i, same, diff)


def test_magnifications_are_not_just_copies(large_samples: list) -> None:
    # A wider field at lower magnification: the whole 100X image is not the 200X image.
    s = large_samples[0]
    assert _corr(_gray(s["100X"]), _gray(s["200X"])) < 0.7


def test_malignant_is_darker_in_hematoxylin_but_classes_overlap() -> None:
    # Red-channel optical density: hematoxylin absorbs red (OD 0.65), eosin hardly (0.07),
    # so it measures nuclear stain. Malignant nuclei are larger, darker and more crowded.
    cfg = SynthConfig(patients=12, samples_per_patient=2, image_size=(48, 32), seed=0)
    od: dict[str, list[float]] = {"benign": [], "malignant": []}
    for p in patient_specs(cfg):
        for s in range(2):
            images = render_sample(cfg, p, s)
            for mag in MAGNIFICATIONS:
                red = images[mag][..., 0].astype(np.float64)
                od[p.label].append(float(-np.log((red + 1) / 256).mean()))
    benign, malignant = np.array(od["benign"]), np.array(od["malignant"])
    assert malignant.mean() > 1.3 * benign.mean()
    # ... but not separable by this single cue: some malignant images are lighter than some
    # benign ones (the task should not be trivial).
    assert malignant.min() < benign.max()
    auc = (malignant[:, None] > benign[None, :]).mean()
    # Per-image stain uptake and exposure blur this cue further (measured AUC about 0.67).
    assert 0.6 < auc < 0.95, auc


def test_images_look_like_h_and_e() -> None:
    cfg = SynthConfig(patients=2, samples_per_patient=1, image_size=(64, 42), seed=1)
    for p in patient_specs(cfg):
        for mag, img in render_sample(cfg, p, 0).items():
            assert img.dtype == np.uint8 and img.shape == (42, 64, 3), mag
            mean = img.reshape(-1, 3).mean(0)
            # Pink/purple: green is absorbed most (eosin and hematoxylin both absorb it).
            assert mean[1] < mean[0] and mean[1] < mean[2], (mag, mean)
            assert img.std() > 5, mag  # structure, not a flat colour


# --------------------------------------------------------------------------- re-runs


def test_rerun_with_same_config_does_not_regenerate(tmp_path: Path) -> None:
    cfg = SynthConfig(patients=2, samples_per_patient=1, image_size=(32, 24), seed=2)
    root = write(tmp_path, cfg)
    files = sorted(root.rglob("*.png"))
    old = 1_000_000_000
    for f in files:
        os.utime(f, ns=(old, old))
    assert write(tmp_path, cfg) == root
    assert all(f.stat().st_mtime_ns == old for f in files)


def test_rerun_with_different_config_raises(tmp_path: Path) -> None:
    cfg = SynthConfig(patients=2, samples_per_patient=1, image_size=(32, 24), seed=2)
    write(tmp_path, cfg)
    before = png_files(tmp_path / "BreaKHis_v1")
    for changed in (SynthConfig(patients=2, samples_per_patient=1, image_size=(32, 24), seed=3),
                    SynthConfig(patients=2, samples_per_patient=2, image_size=(32, 24), seed=2),
                    SynthConfig(patients=2, samples_per_patient=1, image_size=(24, 24), seed=2)):
        with pytest.raises(ConfigError, match="different synthetic data set"):
            write(tmp_path, changed)
    assert png_files(tmp_path / "BreaKHis_v1") == before


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("cfg", "match"),
    [(SynthConfig(patients=1), "patients"), (SynthConfig(patients=0), "patients"),
     (SynthConfig(samples_per_patient=0), "samples_per_patient"),
     (SynthConfig(image_size=(15, 32)), "image_size"),
     (SynthConfig(image_size=(32, 15)), "image_size")],
)
def test_invalid_configs_raise(cfg: SynthConfig, match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg.validate()
    with pytest.raises(ConfigError, match=match):
        write_breakhis(tmp_path, cfg, progress=False)
    assert not (tmp_path / "BreaKHis_v1").exists()


def test_smallest_valid_config() -> None:
    SynthConfig(patients=2, samples_per_patient=1, image_size=(16, 16)).validate()


@pytest.mark.parametrize(("text", "size"),
                         [("175x115", (175, 115)), ("48X32", (48, 32)), ("16x16", (16, 16))])
def test_parse_image_size(text: str, size: tuple[int, int]) -> None:
    assert parse_image_size(text) == size


@pytest.mark.parametrize("text", ["175", "175x", "x115", "175x115x3", "axb", "175,115", "",
                                  "17.5x11"])
def test_parse_image_size_rejects_bad_strings(text: str) -> None:
    with pytest.raises(ConfigError, match="WIDTHxHEIGHT"):
        parse_image_size(text)
