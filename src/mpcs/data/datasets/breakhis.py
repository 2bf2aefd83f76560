"""BreakHis v1: folder discovery, validated scanning and samples (file names:
:mod:`~mpcs.data.datasets.breakhis_names`; summaries: :mod:`~mpcs.data.datasets.breakhis_summary`).

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from mpcs.core.errors import DataError
from mpcs.core.vocab import CLASSES, MAGNIFICATIONS
from mpcs.data.datasets.breakhis_names import (
    MAG_ORDER,
    SUBTYPES,
    BreakHisName,
    parse_filename,
)
from mpcs.data.images import check_image, is_image_file, is_stray_file

__all__ = ["COLUMNS", "KNOWN_MULTI_SUBTYPE_PATIENTS", "complete_samples", "find_breakhis_root",
           "magnification_samples", "scan_breakhis"]

logger = logging.getLogger(__name__)

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


_PROCEDURE_FOLDER = "SOB"


_ARCHIVE_FOLDER = "BreaKHis_v1"


_EXPECTED_LAYOUT = (
    "BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<tumour type>/"
    "SOB_<B|M>_<type>_<year>-<slide>/<mag>X/SOB_<B|M>_<type>-<year>-<slide>-<mag>-<seq>.png"
)


# --------------------------------------------------------------------------- discovery


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
    order = frame["magnification"].map(MAG_ORDER)
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
