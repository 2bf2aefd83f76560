"""Tests for mpcs.data.breakhis: names, root discovery, validated scanning, samples, summaries."""

from __future__ import annotations

import logging
import string
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from mpcs.core.errors import DataError
from mpcs.core.vocab import CLASSES, MAGNIFICATIONS
from mpcs.data.datasets.breakhis import COLUMNS, complete_samples, find_breakhis_root, scan_breakhis
from mpcs.data.datasets.breakhis_names import SUBTYPE_LABEL, SUBTYPES, BreakHisName, parse_filename
from mpcs.data.datasets.breakhis_summary import format_summary, summarize

REAL_BREAKHIS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "breakhis"


def real_root() -> Path:
    """The real BreakHis subset, or skip the test with a reason."""
    if not (REAL_BREAKHIS / "histology_slides" / "breast").is_dir():
        pytest.skip(f"real BreakHis sample data not found at {REAL_BREAKHIS}")
    return REAL_BREAKHIS


# --------------------------------------------------------------------------- synthetic trees


def breast_dir(tmp_path: Path) -> Path:
    """The ``breast`` folder of a synthetic archive under ``tmp_path``."""
    return tmp_path / "BreaKHis_v1" / "histology_slides" / "breast"


def add_image(
    tmp_path: Path,
    code: str = "A",
    patient: str = "14-100",
    mag: str = "100X",
    seq: int = 1,
    *,
    size: tuple[int, int] = (8, 6),
    file_name: str | None = None,
    label_dir: str | None = None,
    subtype_dir: str | None = None,
    patient_dir: str | None = None,
    mag_dir: str | None = None,
) -> Path:
    """Write a small PNG where the official layout puts it; any folder can be overridden."""
    label = SUBTYPE_LABEL[code]
    letter = "B" if label == "benign" else "M"
    folder = (
        breast_dir(tmp_path)
        / (label_dir or label)
        / "SOB"
        / (subtype_dir or SUBTYPES[code])
        / (patient_dir or f"SOB_{letter}_{code}_{patient}")
        / (mag_dir or mag)
    )
    folder.mkdir(parents=True, exist_ok=True)
    name = file_name or f"SOB_{letter}_{code}-{patient}-{mag[:-1]}-{seq:03d}.png"
    path = folder / name
    Image.new("RGB", size, (200, 120, 180)).save(path)
    return path


def small_tree(tmp_path: Path) -> list[Path]:
    """A valid tree: two benign and one malignant patient."""
    return [
        add_image(tmp_path, "A", "14-100", "100X", 1),
        add_image(tmp_path, "A", "14-100", "40X", 2),
        add_image(tmp_path, "F", "14-200AB", "200X", 1),
        add_image(tmp_path, "DC", "15-300", "400X", 7),
    ]


def scan_error(path: Path, **kwargs: object) -> str:
    """Scan ``path``, expect a DataError, and return its message."""
    with pytest.raises(DataError) as info:
        scan_breakhis(path, **kwargs)
    return str(info.value)


# --------------------------------------------------------------------------- parse_filename


def test_parse_filename_example() -> None:
    name = parse_filename("SOB_B_A-14-22549AB-100-001.png")
    assert name == BreakHisName(
        label="benign",
        subtype="A",
        year="14",
        slide="22549AB",
        patient_id="14-22549AB",
        magnification="100X",
        sequence=1,
    )
    assert name.patient_folder == "SOB_B_A_14-22549AB"
    assert name.filename() == "SOB_B_A-14-22549AB-100-001.png"


def test_parse_filename_ignores_folders_and_extension_case() -> None:
    name = parse_filename("some/dir/SOB_M_PC-15-190EF-400-033.PNG")
    assert (name.label, name.subtype, name.magnification, name.sequence) == (
        "malignant",
        "PC",
        "400X",
        33,
    )


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("image.png", "not a BreakHis image name"),
        ("SOB_X_A-14-1-100-001.png", "class letter"),
        ("SOB_B_ZZ-14-1-100-001.png", "unknown tumour type"),
        ("SOB_B_DC-14-1-100-001.png", "disagrees with tumour type"),
        ("SOB_M_A-14-1-100-001.png", "disagrees with tumour type"),
        ("SOB_B_A-2014-1-100-001.png", "year"),
        ("SOB_B_A-14-1_2-100-001.png", "slide id"),
        ("SOB_B_A-14-1-50-001.png", "magnification"),
        ("SOB_B_A-14-1-100-0a1.png", "sequence number"),
        ("SOB_B_A-14-1-100-001.gif", "extension"),
        ("SOB_B_A-14-1-100-001", "not a BreakHis image name"),
    ],
)
def test_parse_filename_rejects_with_reason(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_filename(name)
    assert name in str(info.value)


subtype_codes = st.sampled_from(sorted(SUBTYPES))
slides = st.from_regex(r"[0-9]{1,6}[A-Z]{0,2}", fullmatch=True)
years = st.from_regex(r"[0-9]{2}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    code=subtype_codes,
    year=years,
    slide=slides,
    mag=st.sampled_from(MAGNIFICATIONS),
    seq=st.integers(min_value=0, max_value=99999),
    ext=st.sampled_from([".png", ".jpg", ".tif", ".PNG"]),
)
def test_parse_filename_round_trips(
    code: str, year: str, slide: str, mag: str, seq: int, ext: str
) -> None:
    expected = BreakHisName(
        label=SUBTYPE_LABEL[code],
        subtype=code,
        year=year,
        slide=slide,
        patient_id=f"{year}-{slide}",
        magnification=mag,
        sequence=seq,
    )
    assert parse_filename(expected.filename(ext)) == expected


name_like = st.builds(
    "".join,
    st.lists(
        st.sampled_from(["SOB", "_", "-", "B", "M", "A", "DC", "14", "100", "001", ".png", "X"])
        | st.text(alphabet=string.printable + "٣é\x00", max_size=3),
        max_size=12,
    ),
)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60) | name_like)
def test_parse_filename_only_raises_value_error(text: str) -> None:
    try:
        name = parse_filename(text)
    except ValueError:
        return
    assert name.label in CLASSES
    assert name.magnification in MAGNIFICATIONS
    assert parse_filename(name.filename()) == name


# --------------------------------------------------------------------------- real subset


def test_real_subset_manifest() -> None:
    df = scan_breakhis(real_root())
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 87
    assert df["patient_id"].nunique() == 16
    patients = df.drop_duplicates("patient_id")["label"].value_counts()
    assert patients.to_dict() == {"benign": 8, "malignant": 8}
    assert df["label"].value_counts().to_dict() == {"benign": 43, "malignant": 44}
    assert df["magnification"].value_counts().to_dict() == {
        "40X": 8,
        "100X": 77,
        "200X": 1,
        "400X": 1,
    }
    assert set(df["subtype"]) == set(SUBTYPES)
    assert (df["width"] == 700).all() and (df["height"] == 460).all()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in df["path"])
    assert df.attrs["skipped"] == []
    row = df.iloc[0]
    assert row["sample_key"] == f"{row['patient_id']}/{row['sequence']:03d}"


def test_real_subset_has_no_complete_sample() -> None:
    df = scan_breakhis(real_root())
    fibro = df[df["patient_id"] == "14-25197"]
    assert set(fibro["magnification"]) == set(MAGNIFICATIONS)  # one patient, four mags ...
    assert complete_samples(df).empty  # ... but never the same sequence number
    assert list(complete_samples(df).columns) == [
        "sample_key",
        "patient_id",
        "label",
        "subtype",
        "path_40X",
        "path_100X",
        "path_200X",
        "path_400X",
    ]
    summary = summarize(df)
    assert summary["complete_samples"] == 0
    assert summary["incomplete_samples"] == df["sample_key"].nunique()


def test_real_subset_any_entry_folder_gives_the_same_manifest() -> None:
    root = real_root()
    reference = scan_breakhis(root)
    for folder in [root / "histology_slides", root / "histology_slides" / "breast"]:
        assert find_breakhis_root(folder) == (root / "histology_slides" / "breast").resolve()
        pd.testing.assert_frame_equal(scan_breakhis(folder), reference)


def test_real_subset_summary_text() -> None:
    df = scan_breakhis(real_root())
    summary = summarize(df)
    assert summary["images"] == 87
    assert summary["patients"] == 16
    assert summary["images_per_class"] == {"benign": 43, "malignant": 44}
    assert summary["patients_per_class"] == {"benign": 8, "malignant": 8}
    assert summary["images_per_magnification"] == {"40X": 8, "100X": 77, "200X": 1, "400X": 1}
    by_mag = summary["class_by_magnification"]
    assert sum(by_mag["benign"].values()) == 43 and sum(by_mag["malignant"].values()) == 44
    text = format_summary(summary)
    first = text.splitlines()[0]
    assert first.startswith("BreakHis at ") and first.endswith(": 87 images, 16 patients")
    for word in ["benign", "malignant", "40X", "400X", "ductal_carcinoma", "Complete"]:
        assert word in text


def test_real_subset_is_sorted_by_patient_magnification_sequence() -> None:
    df = scan_breakhis(real_root())
    order = df["magnification"].map(MAGNIFICATIONS.index)
    keys = list(zip(df["patient_id"], order, df["sequence"], strict=True))
    assert keys == sorted(keys)


# --------------------------------------------------------------------------- root discovery


def test_root_accepts_every_level_of_the_archive(tmp_path: Path) -> None:
    small_tree(tmp_path)
    breast = breast_dir(tmp_path).resolve()
    for folder in [tmp_path, tmp_path / "BreaKHis_v1", breast.parent, breast]:
        assert find_breakhis_root(folder) == breast
        assert find_breakhis_root(str(folder)) == breast


def test_root_error_names_the_folder_and_layout(tmp_path: Path) -> None:
    empty = tmp_path / "empty_dataset_folder"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        find_breakhis_root(empty)
    message = str(info.value)
    assert "empty_dataset_folder" in message
    assert "histology_slides" in message and "benign" in message
    assert "empty_dataset_folder" in scan_error(empty)


def test_root_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found") as info:
        find_breakhis_root(tmp_path / "nowhere_here")
    assert "nowhere_here" in str(info.value)
    file = tmp_path / "a_file.png"
    file.write_bytes(b"x")
    with pytest.raises(DataError, match="is a file") as info:
        find_breakhis_root(file)
    assert "a_file.png" in str(info.value)


def test_empty_breast_folder_says_where_it_looked(tmp_path: Path) -> None:
    (breast_dir(tmp_path) / "benign" / "SOB").mkdir(parents=True)
    message = scan_error(tmp_path)
    assert "no BreakHis images found" in message
    assert str(breast_dir(tmp_path).resolve()) in message


# --------------------------------------------------------------------------- scanning


def test_synthetic_tree_manifest(tmp_path: Path) -> None:
    small_tree(tmp_path)
    df = scan_breakhis(tmp_path)
    assert list(df.columns) == list(COLUMNS)
    assert list(df["patient_id"]) == ["14-100", "14-100", "14-200AB", "15-300"]
    assert list(df["magnification"]) == ["40X", "100X", "200X", "400X"]
    assert list(df["sample_key"]) == ["14-100/002", "14-100/001", "14-200AB/001", "15-300/007"]
    assert df["sequence"].dtype == "int64" and df["width"].dtype == "int64"
    assert list(df["label"]) == ["benign", "benign", "benign", "malignant"]
    assert list(df["subtype"]) == ["A", "A", "F", "DC"]
    assert (df["width"] == 8).all() and (df["height"] == 6).all()
    assert df.attrs["root"] == str(breast_dir(tmp_path).resolve())


def test_700x456_images_are_valid(tmp_path: Path) -> None:
    add_image(tmp_path, size=(700, 460))
    add_image(tmp_path, seq=2, size=(700, 456))
    df = scan_breakhis(tmp_path)
    assert sorted(df["height"]) == [456, 460]


def test_scan_without_image_checks(tmp_path: Path) -> None:
    small_tree(tmp_path)
    bad = add_image(tmp_path, seq=9)
    bad.write_bytes(b"")
    df = scan_breakhis(tmp_path, check_images=False)
    assert len(df) == 5
    assert df["width"].isna().all() and df["height"].isna().all()


def test_invalid_on_bad_image_value(tmp_path: Path) -> None:
    small_tree(tmp_path)
    with pytest.raises(ValueError, match="on_bad_image"):
        scan_breakhis(tmp_path, on_bad_image="ignore")


@pytest.mark.parametrize(
    ("override", "folder_kind"),
    [
        ({"label_dir": "malignant"}, "class folder"),
        ({"subtype_dir": "fibroadenoma"}, "tumour type folder"),
        ({"patient_dir": "SOB_B_A_14-999"}, "patient folder"),
        ({"mag_dir": "40X"}, "magnification folder"),
    ],
)
def test_file_name_disagreeing_with_folder(
    tmp_path: Path, override: dict[str, str], folder_kind: str
) -> None:
    small_tree(tmp_path)
    bad = add_image(tmp_path, "A", "14-555", "100X", 3, **override)
    message = scan_error(tmp_path)
    assert bad.name in message
    assert folder_kind in message and "disagree" in message
    df = scan_breakhis(tmp_path, on_bad_image="skip")
    assert len(df) == 4
    assert [path for path, _ in df.attrs["skipped"]] == [str(bad.resolve())]
    assert folder_kind in df.attrs["skipped"][0][1]


def test_unparsable_image_name(tmp_path: Path) -> None:
    small_tree(tmp_path)
    bad = add_image(tmp_path, file_name="scan_0001.png")
    message = scan_error(tmp_path)
    assert "scan_0001.png" in message and "not a BreakHis name" in message
    df = scan_breakhis(tmp_path, on_bad_image="skip")
    assert [path for path, _ in df.attrs["skipped"]] == [str(bad.resolve())]


def test_image_at_the_wrong_depth(tmp_path: Path) -> None:
    small_tree(tmp_path)
    stray = breast_dir(tmp_path) / "benign" / "SOB_B_A-14-100-100-005.png"
    Image.new("RGB", (4, 4)).save(stray)
    message = scan_error(tmp_path)
    assert stray.name in message and "expected place" in message


def test_patient_under_two_subtypes_always_fails(tmp_path: Path) -> None:
    first = add_image(tmp_path, "A", "14-777", "100X", 1)
    second = add_image(tmp_path, "F", "14-777", "100X", 2)
    for mode in ["error", "skip"]:
        message = scan_error(tmp_path, on_bad_image=mode)
        assert "14-777" in message and "tumour types" in message
        assert first.name in message and second.name in message


def test_patient_under_two_classes_fails(tmp_path: Path) -> None:
    first = add_image(tmp_path, "A", "14-777", "100X", 1)
    second = add_image(tmp_path, "DC", "14-777", "100X", 2)
    message = scan_error(tmp_path)
    assert "14-777" in message and "classes" in message
    assert first.name in message and second.name in message


def test_known_archive_quirk_patient_in_ductal_and_lobular(tmp_path: Path) -> None:
    for code in ["DC", "LC"]:
        for mag in MAGNIFICATIONS:
            add_image(tmp_path, code, "14-13412", mag, 1)
    df = scan_breakhis(tmp_path)
    assert df["patient_id"].unique().tolist() == ["14-13412"]
    assert df.attrs["multi_subtype_patients"] == {"14-13412": ["DC", "LC"]}
    assert set(df["sample_key"]) == {"14-13412/DC/001", "14-13412/LC/001"}
    samples = complete_samples(df)
    assert list(samples["sample_key"]) == ["14-13412/DC/001", "14-13412/LC/001"]
    assert list(samples["subtype"]) == ["DC", "LC"]


def test_zero_byte_image(tmp_path: Path) -> None:
    small_tree(tmp_path)
    bad = add_image(tmp_path, seq=9)
    bad.write_bytes(b"")
    message = scan_error(tmp_path)
    assert bad.name in message and "file is empty (0 bytes)" in message


def test_truncated_png(tmp_path: Path) -> None:
    small_tree(tmp_path)
    bad = add_image(tmp_path, seq=9, size=(64, 64))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    message = scan_error(tmp_path)
    assert bad.name in message and "truncated or corrupt image" in message


def test_non_image_with_png_extension(tmp_path: Path) -> None:
    small_tree(tmp_path)
    bad = add_image(tmp_path, seq=9)
    bad.write_text("<html>not really a png</html>")
    message = scan_error(tmp_path)
    assert bad.name in message and "not an image file" in message


def test_skip_mode_lists_and_logs_skipped_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    small_tree(tmp_path)
    empty = add_image(tmp_path, seq=8)
    empty.write_bytes(b"")
    junk = add_image(tmp_path, seq=9)
    junk.write_text("junk")
    with caplog.at_level(logging.WARNING, logger="mpcs.data.datasets.breakhis"):
        df = scan_breakhis(tmp_path, on_bad_image="skip")
    assert len(df) == 4
    skipped = dict(df.attrs["skipped"])
    assert set(skipped) == {str(empty.resolve()), str(junk.resolve())}
    assert "empty" in skipped[str(empty.resolve())]
    assert "not an image file" in skipped[str(junk.resolve())]
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert empty.name in logged and junk.name in logged
    assert summarize(df)["skipped"] == 2
    assert "Skipped" in format_summary(summarize(df))


def test_skip_mode_with_nothing_usable(tmp_path: Path) -> None:
    bad = add_image(tmp_path)
    bad.write_bytes(b"")
    message = scan_error(tmp_path, on_bad_image="skip")
    assert "no BreakHis images found" in message and "1 unusable" in message


def test_stray_files_are_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    paths = small_tree(tmp_path)
    folder = paths[0].parent
    for name in ["Thumbs.db", ".DS_Store", "desktop.ini", "notes.txt", "counts.csv", "README.md"]:
        (folder / name).write_text("stray")
    (folder / "._SOB_B_A-14-100-100-001.png").write_bytes(b"\x00\x05\x16\x07")
    hidden = folder / ".thumbnails"
    hidden.mkdir()
    (hidden / "SOB_B_A-14-100-100-001.png").write_bytes(b"")
    (breast_dir(tmp_path) / "archive.zip").write_bytes(b"PK")
    with caplog.at_level(logging.DEBUG, logger="mpcs.data.datasets.breakhis"):
        df = scan_breakhis(tmp_path)
    assert len(df) == 4
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "Thumbs.db" in messages and "notes.txt" in messages
    assert "archive.zip" in messages  # unknown non-image files are reported, not fatal


# --------------------------------------------------------------------------- samples


def test_complete_samples_finds_a_four_magnification_sample(tmp_path: Path) -> None:
    small_tree(tmp_path)
    paths = {mag: add_image(tmp_path, "TA", "14-3411F", mag, 5) for mag in MAGNIFICATIONS}
    add_image(tmp_path, "TA", "14-3411F", "40X", 6)  # incomplete: 40X only
    df = scan_breakhis(tmp_path)
    samples = complete_samples(df)
    assert len(samples) == 1
    row = samples.iloc[0]
    assert row["sample_key"] == "14-3411F/005"
    assert (row["patient_id"], row["label"], row["subtype"]) == ("14-3411F", "benign", "TA")
    for mag, path in paths.items():
        assert row[f"path_{mag}"] == str(path.resolve())
    summary = summarize(df)
    assert summary["complete_samples"] == 1
    assert summary["incomplete_samples"] == df["sample_key"].nunique() - 1
    assert "Complete 4-magnification samples: 1" in format_summary(summary)


def test_duplicate_sample_and_magnification(tmp_path: Path) -> None:
    first = add_image(tmp_path, "A", "14-100", "100X", 1)
    second = add_image(tmp_path, "A", "14-100", "100X", file_name="SOB_B_A-14-100-100-0001.png")
    df = scan_breakhis(tmp_path)
    assert list(df["sample_key"]) == ["14-100/001", "14-100/001"]
    with pytest.raises(DataError) as info:
        complete_samples(df)
    message = str(info.value)
    assert first.name in message and second.name in message and "14-100/001" in message


def test_complete_samples_of_empty_manifest() -> None:
    empty = pd.DataFrame(columns=list(COLUMNS))
    assert complete_samples(empty).empty
