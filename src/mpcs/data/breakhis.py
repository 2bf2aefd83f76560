"""BreakHis v1: file-name parsing, folder discovery, validated scanning and summaries.

The official archive unpacks as::

    BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<tumour type>/
        SOB_<B|M>_<T>_<year>-<slide>/<mag>X/SOB_<B|M>_<T>-<year>-<slide>-<mag>-<seq>.png

for example ``.../benign/SOB/adenosis/SOB_B_A_14-22549AB/100X/SOB_B_A-14-22549AB-100-001.png``.
The patient id is ``<year>-<slide>`` (``14-22549AB``). Following the MPCS paper's code, a
*sample* is keyed by (patient id, sequence number): the images of one patient that share a
sequence number at different magnifications form one sample (BreakHis does not promise that
they show the same region; it is the paper's operational definition).

Known quirk of the official archive: patient ``14-13412`` has a slide folder under both
``ductal_carcinoma`` and ``lobular_carcinoma`` (82 slide folders, 81 distinct patient ids).
:func:`scan_breakhis` accepts exactly this case (listed in
:data:`KNOWN_MULTI_SUBTYPE_PATIENTS`), keeps the patient id shared (so both folders stay on
the same side of a patient-level split), and qualifies its sample keys by tumour type
(``14-13412/DC/001``) so the two folders' images never merge into one sample. Any other
patient under two tumour types or two classes is an error.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mpcs.data.images import check_image, is_image_file, is_stray_file
from mpcs.errors import DataError

__all__ = [
    "CLASSES",
    "COLUMNS",
    "KNOWN_MULTI_SUBTYPE_PATIENTS",
    "MAGNIFICATIONS",
    "SUBTYPES",
    "SUBTYPE_LABEL",
    "BreakHisName",
    "complete_samples",
    "find_breakhis_root",
    "format_summary",
    "magnification_samples",
    "parse_filename",
    "scan_breakhis",
    "summarize",
]

logger = logging.getLogger(__name__)

MAGNIFICATIONS: tuple[str, ...] = ("40X", "100X", "200X", "400X")
CLASSES: tuple[str, ...] = ("benign", "malignant")

#: Tumour-type code -> folder name in the official archive.
SUBTYPES: dict[str, str] = {
    "A": "adenosis",
    "F": "fibroadenoma",
    "PT": "phyllodes_tumor",
    "TA": "tubular_adenoma",
    "DC": "ductal_carcinoma",
    "LC": "lobular_carcinoma",
    "MC": "mucinous_carcinoma",
    "PC": "papillary_carcinoma",
}

#: Tumour-type code -> class.
SUBTYPE_LABEL: dict[str, str] = {
    "A": "benign",
    "F": "benign",
    "PT": "benign",
    "TA": "benign",
    "DC": "malignant",
    "LC": "malignant",
    "MC": "malignant",
    "PC": "malignant",
}

#: Patients that the official archive itself files under more than one tumour type.
KNOWN_MULTI_SUBTYPE_PATIENTS: dict[str, frozenset[str]] = {
    "14-13412": frozenset({"DC", "LC"}),
}

#: Columns of the manifest returned by :func:`scan_breakhis`, in order.
COLUMNS: tuple[str, ...] = (
    "path",
    "patient_id",
    "label",
    "subtype",
    "magnification",
    "sequence",
    "sample_key",
    "width",
    "height",
)

_CLASS_LETTER = {"benign": "B", "malignant": "M"}
_LETTER_CLASS = {letter: label for label, letter in _CLASS_LETTER.items()}
_MAG_ORDER = {mag: index for index, mag in enumerate(MAGNIFICATIONS)}
_PROCEDURE_FOLDER = "SOB"
_ARCHIVE_FOLDER = "BreaKHis_v1"
_EXPECTED_LAYOUT = (
    "BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<tumour type>/"
    "SOB_<B|M>_<type>_<year>-<slide>/<mag>X/SOB_<B|M>_<type>-<year>-<slide>-<mag>-<seq>.png"
)
_NAME_PATTERN = re.compile(
    r"SOB_(?P<letter>[^_]*)_(?P<code>[^-]*)-(?P<year>[^-]*)-(?P<slide>[^-]*)"
    r"-(?P<mag>[^-]*)-(?P<seq>[^.]*)(?P<ext>\.[^.]*)"
)
_YEAR = re.compile(r"[0-9]{2}")
_SLIDE = re.compile(r"[0-9A-Za-z]+")
_SEQUENCE = re.compile(r"[0-9]+")


# --------------------------------------------------------------------------- file names


@dataclass(frozen=True)
class BreakHisName:
    """The fields encoded in a BreakHis image file name."""

    label: str
    """``"benign"`` or ``"malignant"``."""
    subtype: str
    """Tumour-type code, a key of :data:`SUBTYPES` (``"A"``, ``"DC"``, ...)."""
    year: str
    """Two-digit year, e.g. ``"14"``."""
    slide: str
    """Slide id, digits possibly followed by letters, e.g. ``"22549AB"``."""
    patient_id: str
    """``"<year>-<slide>"``, e.g. ``"14-22549AB"``."""
    magnification: str
    """One of :data:`MAGNIFICATIONS`, e.g. ``"100X"``."""
    sequence: int
    """Image sequence number within the patient and magnification."""

    @property
    def class_letter(self) -> str:
        """``"B"`` for benign, ``"M"`` for malignant."""
        return _CLASS_LETTER[self.label]

    @property
    def patient_folder(self) -> str:
        """Name of the slide folder holding this image, e.g. ``"SOB_B_A_14-22549AB"``."""
        return f"SOB_{self.class_letter}_{self.subtype}_{self.patient_id}"

    def filename(self, extension: str = ".png") -> str:
        """The canonical file name, e.g. ``"SOB_B_A-14-22549AB-100-001.png"``."""
        mag = self.magnification.removesuffix("X")
        return (
            f"SOB_{self.class_letter}_{self.subtype}-{self.patient_id}"
            f"-{mag}-{self.sequence:03d}{extension}"
        )


def parse_filename(name: str) -> BreakHisName:
    """Parse a BreakHis image file name such as ``"SOB_B_A-14-22549AB-100-001.png"``.

    A leading folder path is ignored. The extension may be any of the image extensions
    (case-insensitive); the class letter must agree with the tumour type.

    Raises:
        ValueError: with the reason, if the name does not follow the BreakHis pattern.
    """
    if not isinstance(name, str):
        raise TypeError(f"expected a file name string, got {type(name).__name__}")
    base = re.split(r"[\\/]", name)[-1]
    match = _NAME_PATTERN.fullmatch(base)
    if match is None:
        raise ValueError(
            f"{base!r} is not a BreakHis image name "
            "(expected SOB_<B|M>_<type>-<year>-<slide>-<mag>-<seq>.png, "
            "e.g. SOB_B_A-14-22549AB-100-001.png)"
        )
    return _name_from_parts(base, match.groupdict())


def _name_from_parts(base: str, parts: dict[str, str]) -> BreakHisName:
    """Validate the regex groups of a file name and build the :class:`BreakHisName`."""
    letter, code, mag = parts["letter"], parts["code"], parts["mag"]
    if letter not in _LETTER_CLASS:
        raise ValueError(f"{base!r}: class letter {letter!r} is not B or M")
    if code not in SUBTYPES:
        known = ", ".join(SUBTYPES)
        raise ValueError(f"{base!r}: unknown tumour type {code!r} (expected one of {known})")
    label = _LETTER_CLASS[letter]
    if SUBTYPE_LABEL[code] != label:
        raise ValueError(
            f"{base!r}: class letter {letter} ({label}) disagrees with tumour type {code} "
            f"({SUBTYPE_LABEL[code]})"
        )
    if not _YEAR.fullmatch(parts["year"]):
        raise ValueError(f"{base!r}: year {parts['year']!r} is not two digits")
    if not _SLIDE.fullmatch(parts["slide"]):
        raise ValueError(f"{base!r}: slide id {parts['slide']!r} is not letters and digits")
    if f"{mag}X" not in _MAG_ORDER:
        raise ValueError(f"{base!r}: magnification {mag!r} is not one of 40, 100, 200, 400")
    if not _SEQUENCE.fullmatch(parts["seq"]):
        raise ValueError(f"{base!r}: sequence number {parts['seq']!r} is not digits")
    if not is_image_file(base):
        raise ValueError(f"{base!r}: extension {parts['ext']!r} is not an image extension")
    return BreakHisName(
        label=label,
        subtype=code,
        year=parts["year"],
        slide=parts["slide"],
        patient_id=f"{parts['year']}-{parts['slide']}",
        magnification=f"{mag}X",
        sequence=int(parts["seq"]),
    )


# --------------------------------------------------------------------------- finding the root


def _is_breast_folder(path: Path) -> bool:
    """True if ``path`` is a folder with a ``benign`` or ``malignant`` subfolder."""
    return path.is_dir() and any((path / label).is_dir() for label in CLASSES)


def _root_candidates(path: Path) -> list[Path]:
    """Folders that may be the ``breast`` folder, for a path given by the user."""
    candidates = [
        path,
        path / "breast",
        path / "histology_slides" / "breast",
        path / _ARCHIVE_FOLDER / "histology_slides" / "breast",
    ]
    if path.is_dir():
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            is_archive = entry.name.lower() == _ARCHIVE_FOLDER.lower()
            if is_archive and entry.name != _ARCHIVE_FOLDER and entry.is_dir():
                candidates.append(Path(entry.path) / "histology_slides" / "breast")
    return candidates


def find_breakhis_root(path: str | os.PathLike[str]) -> Path:
    """Return the ``breast`` folder of a BreakHis tree, given any folder around it.

    Accepted: the ``breast`` folder itself, ``histology_slides``, the archive root
    ``BreaKHis_v1``, a folder that directly contains ``histology_slides``, or a folder that
    contains ``BreaKHis_v1``. The ``breast`` folder is recognised by its ``benign`` /
    ``malignant`` subfolders.

    Raises:
        DataError: if the path does not exist, is not a folder, or no ``breast`` folder is
            found; the message lists where it looked and the expected layout.
    """
    given = Path(path).expanduser()
    if not given.exists():
        raise DataError(f"{given}: folder not found")
    if not given.is_dir():
        raise DataError(f"{given}: is a file, not a dataset folder")
    given = given.resolve()
    candidates = _root_candidates(given)
    for candidate in candidates:
        if _is_breast_folder(candidate):
            return candidate
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise DataError(
        f"{given}: no BreakHis dataset found (looked for a 'breast' folder with benign/ or "
        f"malignant/ subfolders at: {looked}; expected the official layout {_EXPECTED_LAYOUT})"
    )


# --------------------------------------------------------------------------- scanning


def _walk_files(root: Path) -> Iterator[Path]:
    """Yield every non-stray file below ``root`` in a deterministic order.

    Hidden folders are not entered; stray files (see :data:`mpcs.data.images.STRAY_FILES`)
    are skipped with a debug message.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        hidden = [d for d in dirnames if d.startswith(".")]
        for name in hidden:
            logger.debug("ignoring hidden folder %s", os.path.join(dirpath, name))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if is_stray_file(name):
                logger.debug("ignoring stray file %s", os.path.join(dirpath, name))
                continue
            yield Path(dirpath, name)


def _layout_problem(relative: tuple[str, ...], name: BreakHisName) -> str | None:
    """Describe how a parsed file name disagrees with its folders, or return None."""
    if len(relative) != 6:
        return (
            "is not at the expected place in the tree (expected "
            "breast/<class>/SOB/<tumour type>/<patient folder>/<mag>X/<file>)"
        )
    label_dir, procedure_dir, subtype_dir, patient_dir, mag_dir, _ = relative
    checks = (
        ("class folder", label_dir, name.label),
        ("procedure folder", procedure_dir, _PROCEDURE_FOLDER),
        ("tumour type folder", subtype_dir, SUBTYPES[name.subtype]),
        ("patient folder", patient_dir, name.patient_folder),
        ("magnification folder", mag_dir, name.magnification),
    )
    for what, actual, expected in checks:
        if actual != expected:
            return (
                f"file name says {expected!r} but it is in {what} {actual!r} "
                f"(file name and folders disagree)"
            )
    return None


def _row_for(file: Path, root: Path, check_images: bool) -> dict[str, Any]:
    """Validate one image file and return its manifest row.

    Raises:
        DataError: naming the file, for an unparsable name, a name/folder disagreement or
            (when ``check_images``) an unreadable image.
    """
    try:
        name = parse_filename(file.name)
    except ValueError as exc:
        raise DataError(f"{file}: image file name is not a BreakHis name: {exc}") from None
    relative = file.relative_to(root).parts
    problem = _layout_problem(relative, name)
    if problem is not None:
        raise DataError(f"{file}: {problem}")
    width: int | None = None
    height: int | None = None
    if check_images:
        width, height = check_image(file)
    return {
        "path": str(file),
        "patient_id": name.patient_id,
        "label": name.label,
        "subtype": name.subtype,
        "magnification": name.magnification,
        "sequence": name.sequence,
        "width": width,
        "height": height,
    }


def _check_patients(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Check each patient has one class and one tumour type; return allowed exceptions.

    Returns:
        ``{patient_id: sorted tumour types}`` for patients listed in
        :data:`KNOWN_MULTI_SUBTYPE_PATIENTS` that do appear under several tumour types.

    Raises:
        DataError: for a patient under two classes, or under two tumour types (other than
            the archive's known case), naming one file from each.
    """
    examples: dict[str, dict[tuple[str, str], str]] = {}
    for row in rows:
        key = (row["label"], row["subtype"])
        examples.setdefault(row["patient_id"], {}).setdefault(key, row["path"])
    allowed: dict[str, list[str]] = {}
    for patient, by_kind in examples.items():
        if len(by_kind) == 1:
            continue
        labels = {label for label, _ in by_kind}
        subtypes = frozenset(subtype for _, subtype in by_kind)
        if len(labels) == 1 and KNOWN_MULTI_SUBTYPE_PATIENTS.get(patient) == subtypes:
            allowed[patient] = sorted(subtypes)
            continue
        what = "classes" if len(labels) > 1 else "tumour types"
        listing = "; ".join(
            f"{label}/{SUBTYPES[subtype]} (e.g. {path})"
            for (label, subtype), path in sorted(by_kind.items())
        )
        raise DataError(
            f"patient {patient} appears under {len(by_kind)} different {what}: {listing}. "
            "A patient must have a single tumour type; move or rename the misplaced folder."
        )
    return allowed


def _sample_key(row: dict[str, Any], multi_subtype: dict[str, list[str]]) -> str:
    """The paper's sample key ``"<patient>/<seq:03d>"`` (tumour-type qualified if needed)."""
    if row["patient_id"] in multi_subtype:
        return f"{row['patient_id']}/{row['subtype']}/{row['sequence']:03d}"
    return f"{row['patient_id']}/{row['sequence']:03d}"


def _to_frame(rows: list[dict[str, Any]], check_images: bool) -> pd.DataFrame:
    """Build the sorted manifest DataFrame from validated rows."""
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["sequence"] = frame["sequence"].astype("int64")
    size_dtype = "int64" if check_images else "Int64"
    frame["width"] = frame["width"].astype(size_dtype)
    frame["height"] = frame["height"].astype(size_dtype)
    order = frame["magnification"].map(_MAG_ORDER)
    frame = frame.assign(_mag_order=order).sort_values(
        ["patient_id", "_mag_order", "sequence", "subtype", "path"], kind="mergesort"
    )
    return frame.drop(columns="_mag_order").reset_index(drop=True)


def scan_breakhis(
    path: str | os.PathLike[str],
    on_bad_image: str = "error",
    check_images: bool = True,
) -> pd.DataFrame:
    """Scan a BreakHis tree and return a validated manifest, one row per image.

    Args:
        path: any folder accepted by :func:`find_breakhis_root`.
        on_bad_image: ``"error"`` raises :class:`DataError` on the first bad file;
            ``"skip"`` skips unreadable images and image files whose name does not parse
            or disagrees with their folders, logging a warning for each and listing them in
            ``df.attrs["skipped"]`` as ``(path, reason)`` pairs. A patient under two
            classes or tumour types is always an error.
        check_images: run :func:`mpcs.data.images.check_image` on every file (header read
            only; pixel corruption surfaces at load time). If False, ``width`` and
            ``height`` are missing values (nullable ``Int64``).

    Returns:
        DataFrame with columns :data:`COLUMNS`: ``path`` (absolute), ``patient_id``,
        ``label``, ``subtype`` (code), ``magnification`` (``"100X"``), ``sequence`` (int),
        ``sample_key`` (``"<patient_id>/<sequence:03d>"``), ``width``, ``height``; sorted by
        patient, magnification order and sequence. ``df.attrs`` holds ``root`` (the
        ``breast`` folder), ``skipped`` and ``multi_subtype_patients``.

    Raises:
        ValueError: for an invalid ``on_bad_image``.
        DataError: for an invalid dataset, naming the offending file or folder.
    """
    if on_bad_image not in ("error", "skip"):
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    root = find_breakhis_root(path)
    rows: list[dict[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for file in _walk_files(root):
        if not is_image_file(file.name):
            logger.warning("ignoring non-image file %s", file)
            continue
        try:
            rows.append(_row_for(file, root, check_images))
        except DataError as exc:
            if on_bad_image == "error":
                raise
            reason = str(exc).removeprefix(f"{file}: ")
            logger.warning("skipping %s: %s", file, reason)
            skipped.append((str(file), reason))
    if not rows:
        detail = f" ({len(skipped)} unusable images were skipped)" if skipped else ""
        raise DataError(
            f"{root}: no BreakHis images found{detail} (looked for image files laid out as "
            f"{_EXPECTED_LAYOUT})"
        )
    multi_subtype = _check_patients(rows)
    for patient, subtypes in multi_subtype.items():
        logger.info(
            "patient %s is filed under tumour types %s (a known quirk of the official "
            "archive); its sample keys include the tumour type",
            patient,
            ", ".join(subtypes),
        )
    for row in rows:
        row["sample_key"] = _sample_key(row, multi_subtype)
    frame = _to_frame(rows, check_images)
    frame.attrs["root"] = str(root)
    frame.attrs["skipped"] = skipped
    frame.attrs["multi_subtype_patients"] = multi_subtype
    return frame


# --------------------------------------------------------------------------- samples


def _sample_columns() -> list[str]:
    """Columns of the :func:`complete_samples` table."""
    return ["sample_key", "patient_id", "label", "subtype"] + [
        f"path_{mag}" for mag in MAGNIFICATIONS
    ]


def _check_unique_views(df: pd.DataFrame) -> None:
    """Raise :class:`DataError` if a (sample_key, magnification) has more than one image."""
    duplicated = df.duplicated(["sample_key", "magnification"], keep=False)
    if not duplicated.any():
        return
    first = df[duplicated].sort_values(["sample_key", "magnification", "path"]).iloc[0]
    same = df[
        (df["sample_key"] == first["sample_key"])
        & (df["magnification"] == first["magnification"])
    ]
    files = " and ".join(same["path"].astype(str))
    raise DataError(
        f"sample {first['sample_key']} has {len(same)} images at {first['magnification']}: "
        f"{files} (one image per patient, sequence number and magnification expected)"
    )


def complete_samples(df: pd.DataFrame) -> pd.DataFrame:
    """Return the samples present at all four magnifications, one row per sample key.

    Columns: ``sample_key``, ``patient_id``, ``label``, ``subtype`` and ``path_40X``,
    ``path_100X``, ``path_200X``, ``path_400X``; sorted by sample key. The table is empty
    (with these columns) if no sample is complete.

    Raises:
        DataError: if a (sample_key, magnification) has more than one image, naming them.
    """
    columns = _sample_columns()
    if df.empty:
        return pd.DataFrame(columns=columns)
    _check_unique_views(df)
    counts = df.groupby("sample_key")["magnification"].nunique()
    complete_keys = counts[counts == len(MAGNIFICATIONS)].index
    if len(complete_keys) == 0:
        return pd.DataFrame(columns=columns)
    subset = df[df["sample_key"].isin(complete_keys)]
    paths = subset.pivot(index="sample_key", columns="magnification", values="path")
    paths = paths.reindex(columns=list(MAGNIFICATIONS))
    paths.columns = [f"path_{mag}" for mag in MAGNIFICATIONS]
    info = subset.drop_duplicates("sample_key").set_index("sample_key")
    table = info[["patient_id", "label", "subtype"]].join(paths)
    table = table.sort_index().reset_index().rename(columns={"index": "sample_key"})
    return table[columns].reset_index(drop=True)


def magnification_samples(df: pd.DataFrame) -> pd.DataFrame:
    """Every sample with the magnifications it has: one row per sample key, the columns of
    :func:`complete_samples`, ``path_<mag>`` empty (None) where the sample lacks ``mag``.

    Raises:
        DataError: if a (sample_key, magnification) has more than one image, naming them.
    """
    columns = _sample_columns()
    if df.empty:
        return pd.DataFrame(columns=columns)
    _check_unique_views(df)
    paths = df.pivot(index="sample_key", columns="magnification", values="path")
    paths = paths.reindex(columns=list(MAGNIFICATIONS)).astype(object)
    paths = paths.where(paths.notna(), None)
    paths.columns = [f"path_{mag}" for mag in MAGNIFICATIONS]
    info = df.drop_duplicates("sample_key").set_index("sample_key")
    table = info[["patient_id", "label", "subtype"]].join(paths)
    table = table.sort_index().reset_index().rename(columns={"index": "sample_key"})
    return table[columns].reset_index(drop=True)


# --------------------------------------------------------------------------- summaries


def _counts(series: pd.Series, keys: tuple[str, ...] | list[str]) -> dict[str, int]:
    """Value counts of ``series`` for every key in ``keys`` (zero when absent)."""
    counts = series.value_counts()
    return {key: int(counts.get(key, 0)) for key in keys}


def summarize(df: pd.DataFrame) -> dict[str, Any]:
    """Summarise a manifest from :func:`scan_breakhis` as a plain dictionary.

    Keys: ``root``, ``images``, ``images_per_class``, ``images_per_subtype``,
    ``images_per_magnification``, ``class_by_magnification`` (``{class: {mag: n}}``),
    ``patients``, ``patients_per_class``, ``patients_per_subtype``, ``complete_samples``
    (sample keys present at all four magnifications), ``incomplete_samples`` (the other
    sample keys), ``skipped`` (number of skipped files).
    """
    complete = complete_samples(df)
    sample_keys = int(df["sample_key"].nunique()) if not df.empty else 0
    patients = df.drop_duplicates(["patient_id", "label", "subtype"])
    return {
        "root": df.attrs.get("root"),
        "images": len(df),
        "images_per_class": _counts(df["label"], CLASSES),
        "images_per_subtype": _counts(df["subtype"], list(SUBTYPES)),
        "images_per_magnification": _counts(df["magnification"], MAGNIFICATIONS),
        "class_by_magnification": {
            label: _counts(df.loc[df["label"] == label, "magnification"], MAGNIFICATIONS)
            for label in CLASSES
        },
        "patients": int(df["patient_id"].nunique()),
        "patients_per_class": {
            label: int(df.loc[df["label"] == label, "patient_id"].nunique()) for label in CLASSES
        },
        "patients_per_subtype": _counts(patients["subtype"], list(SUBTYPES)),
        "complete_samples": len(complete),
        "incomplete_samples": sample_keys - len(complete),
        "skipped": len(df.attrs.get("skipped", [])),
    }


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> list[str]:
    """Format rows as aligned columns; the first ``left`` columns are left-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            cell.ljust(width) if i < left else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  " + "  ".join(parts).rstrip()

    return [line(header), *(line(row) for row in rows)]


def format_summary(summary: dict[str, Any]) -> str:
    """Render :func:`summarize` output as the text printed by ``mpcs inspect``."""
    root = summary.get("root") or "<unknown folder>"
    lines = [f"BreakHis at {root}: {summary['images']} images, {summary['patients']} patients"]
    per_class = summary["patients_per_class"]
    lines.append("Patients: " + ", ".join(f"{label} {per_class[label]}" for label in CLASSES))
    lines.append(
        f"Complete 4-magnification samples: {summary['complete_samples']} "
        f"(incomplete samples: {summary['incomplete_samples']})"
    )
    if summary.get("skipped"):
        lines.append(f"Skipped unusable files: {summary['skipped']}")
    lines += ["", "Images by class and magnification:"]
    by_mag = summary["class_by_magnification"]
    header = ["", *MAGNIFICATIONS, "total"]
    rows = [
        [label, *(str(by_mag[label][m]) for m in MAGNIFICATIONS),
         str(summary["images_per_class"][label])]
        for label in CLASSES
    ]
    per_mag = summary["images_per_magnification"]
    rows.append(["total", *(str(per_mag[m]) for m in MAGNIFICATIONS), str(summary["images"])])
    lines += _table(header, rows)
    lines += ["", "Images by tumour type:"]
    header = ["code", "tumour type", "class", "patients", "images"]
    rows = [
        [code, folder, SUBTYPE_LABEL[code], str(summary["patients_per_subtype"][code]),
         str(summary["images_per_subtype"][code])]
        for code, folder in SUBTYPES.items()
    ]
    lines += _table(header, rows, left=3)
    return "\n".join(lines)
