"""Making splits: patient-level, stratified folds, a validation part per fold, and a seeded
priority order of each stratum's training images (nested label fractions)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from mpcs.core.errors import ConfigError
from mpcs.data.splits.manifest import (
    REQUIRED_COLUMNS,
    check_fraction,
    check_manifest,
    dataset_fingerprint,
    relative_paths,
)
from mpcs.data.splits.model import (
    DEFAULT_LABEL_FRACTIONS,
    SPLITS_VERSION,
    FoldSplit,
    Splits,
    check_splits,
)

logger = logging.getLogger(__name__)

STRATIFY_CHOICES: tuple[str, ...] = ("auto", "subtype", "label")
_MAX_SEED = 2**32 - 1


def _patient_table(manifest: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """One row per patient (sorted): patient_id, label, subtype, images.

    A patient with images of several subtypes (the archive's known case) is stratified by
    its most frequent subtype (ties: alphabetical), and a note says so.
    """
    notes: list[str] = []
    rows = []
    for patient, group in manifest.groupby("patient_id", sort=True):
        counts = group["subtype"].value_counts()
        subtype = sorted(counts[counts == counts.max()].index)[0]
        if len(counts) > 1:
            notes.append(f"patient {patient} has images of subtypes "
                         f"{', '.join(sorted(counts.index))}; stratified as {subtype}")
        rows.append((str(patient), group["label"].iloc[0], subtype, len(group)))
    table = pd.DataFrame(rows, columns=["patient_id", "label", "subtype", "images"])
    return table, notes


def _check_arguments(folds: int, seed: int, label_fractions: Iterable[float],
                     val_fraction_of_rest: float) -> list[float]:
    """Validate make_splits' arguments; return the sorted, de-duplicated fractions."""
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"splits: folds must be an integer >= 2, got {folds!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed <= _MAX_SEED:
        raise ConfigError(f"splits: seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    if not isinstance(val_fraction_of_rest, (int, float)) \
            or not 0.0 <= val_fraction_of_rest < 1.0:
        raise ConfigError("splits: val_fraction_of_rest must be in [0, 1), got "
                          f"{val_fraction_of_rest!r}")
    fractions = sorted({check_fraction(f) for f in label_fractions})
    if not fractions:
        raise ConfigError("splits: label_fractions must list at least one fraction")
    return fractions


def _check_labels(patients: pd.DataFrame, folds: int) -> None:
    """Both classes present with >= folds patients each, else :class:`ConfigError`."""
    by_label = patients["label"].value_counts()
    if len(by_label) < 2:
        present = by_label.index[0]
        raise ConfigError(f"splits: only class {present} is present ({by_label.iloc[0]} "
                          f"patients); stratified {folds}-fold splits need both classes")
    small = by_label[by_label < folds].sort_index()
    if not small.empty:
        label, count = small.index[0], int(small.iloc[0])
        raise ConfigError(f"splits: class {label} has {_patients(count)} < {folds} folds asked; "
                          "use fewer folds or more patients")


def _choose_stratification(patients: pd.DataFrame, folds: int,
                           stratify: str) -> tuple[str, list[str]]:
    """The column to stratify by, and notes.

    ``"auto"``: subtype if every subtype has >= folds patients, else label (with a note).
    ``"subtype"``: subtype regardless; small subtypes get a note (they cannot be in every
    test part). ``"label"``: label.

    Raises:
        ConfigError: if a class has fewer patients than folds (or none at all), or
            ``stratify`` is not one of the three choices.
    """
    if stratify not in STRATIFY_CHOICES:
        raise ConfigError(f"splits: stratify must be one of {', '.join(STRATIFY_CHOICES)}, "
                          f"got {stratify!r}")
    _check_labels(patients, folds)
    if stratify == "label":
        return "label", []
    by_subtype = patients["subtype"].value_counts().sort_index()
    small = by_subtype[by_subtype < folds]
    if small.empty:
        return "subtype", []
    reasons = ", ".join(f"subtype {s} has {_patients(int(n))}" for s, n in small.items())
    if stratify == "subtype":
        if len(small) == len(by_subtype):
            raise ConfigError(f"splits: cannot stratify by subtype: every subtype has fewer "
                              f"patients than {folds} folds; use stratify='label'")
        return "subtype", [f"stratified by subtype although {reasons} < {folds} folds: "
                           "these subtypes are missing from some test parts"]
    return "label", [f"stratified by label: {reasons} < {folds} folds"]


def _patients(n: int) -> str:
    return f"{n} patient" if n == 1 else f"{n} patients"


def _test_parts(patients: pd.DataFrame, folds: int, seed: int, column: str) -> list[np.ndarray]:
    """Row indices of each fold's test patients (StratifiedKFold on the patient table)."""
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=int(seed))
    y = patients[column].to_numpy()
    with warnings.catch_warnings():  # a small subtype (stratify="subtype") has its own note
        warnings.filterwarnings("ignore", message="The least populated class",
                                category=UserWarning)
        return [test for _, test in splitter.split(np.zeros(len(y)), y)]


def _fold_random_state(seed: int, k: int) -> int:
    """A per-fold seed derived from (seed, fold) so folds and seeds do not share streams."""
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1)[0])


def _carve_val(rest: pd.DataFrame, fraction: float, seed: int, k: int,
               column: str) -> tuple[list[str], list[str], list[str]]:
    """Split the non-test patients into (train, val); stratified where possible, with notes.

    Tries ``column``, then the label, then no stratification; a fallback adds a note.
    """
    ids = rest["patient_id"].to_numpy()
    if fraction == 0.0:
        return sorted(ids), [], []
    tried: list[str] = []
    for strat in dict.fromkeys([column, "label", None]):
        stratify = rest[strat].to_numpy() if strat is not None else None
        try:
            train, val = train_test_split(ids, test_size=fraction, stratify=stratify,
                                          random_state=_fold_random_state(seed, k))
        except ValueError as exc:
            tried.append(f"not by {strat}: {exc}")
            continue
        notes = []
        if tried:
            how = f"by {strat}" if strat is not None else "without stratification"
            notes.append(f"fold {k}: validation part split {how} ({'; '.join(tried)})")
        return sorted(train), sorted(val), notes
    raise ConfigError(f"splits: fold {k}: cannot split {len(ids)} patients into train and "
                      f"validation ({fraction:g} of them); use fewer folds or more patients")


def _priority_order(images: pd.DataFrame, seed: int, k: int,
                    strata: Sequence[str]) -> dict[str, list[str]]:
    """One seeded permutation of each stratum's training images (keyed ``"DC/40X"``)."""
    rng = np.random.default_rng([int(seed), int(k), 1])
    keys = images[strata[0]].astype(str)
    for column in strata[1:]:
        keys = keys + "/" + images[column].astype(str)
    order: dict[str, list[str]] = {}
    for key in sorted(keys.unique()):
        paths = sorted(images.loc[keys == key, "relpath"])
        order[key] = [paths[i] for i in rng.permutation(len(paths))]
    return order


def _part_counts(images: pd.DataFrame, patients: Sequence[str],
                 classes: Sequence[str]) -> dict[str, Any]:
    rows = images[images["patient_id"].isin(set(patients))]
    counts: dict[str, Any] = {"patients": len(patients), "images": len(rows)}
    for label in classes:
        of_class = rows[rows["label"] == label]
        counts[label] = {"patients": int(of_class["patient_id"].nunique()),
                         "images": len(of_class)}
    return counts


def _overall_counts(images: pd.DataFrame, patients: pd.DataFrame) -> dict[str, Any]:
    counts: dict[str, Any] = {"images": len(images), "patients": len(patients)}
    for name, column in (("classes", "label"), ("subtypes", "subtype")):
        counts[name] = {
            str(value): {"patients": int((patients[column] == value).sum()),
                         "images": int(patients.loc[patients[column] == value, "images"].sum())}
            for value in sorted(patients[column].unique())
        }
    return counts


def _make_fold(k: int, images: pd.DataFrame, patients: pd.DataFrame, test_idx: np.ndarray,
               options: dict[str, Any]) -> tuple[FoldSplit, list[str]]:
    test_mask = np.zeros(len(patients), dtype=bool)
    test_mask[test_idx] = True
    test = sorted(patients.loc[test_mask, "patient_id"])
    train, val, notes = _carve_val(patients[~test_mask], options["val_fraction"],
                                   options["seed"], k, options["stratify_by"])
    train_images = images[images["patient_id"].isin(set(train))]
    order = _priority_order(train_images, options["seed"], k, options["strata"])
    classes = options["classes"]
    counts = {part: _part_counts(images, ids, classes)
              for part, ids in (("train", train), ("val", val), ("test", test))}
    return FoldSplit(train=train, val=val, test=test, train_order=order, counts=counts), notes


def make_splits(manifest: pd.DataFrame, folds: int = 5, seed: int = 0,
                label_fractions: Iterable[float] = DEFAULT_LABEL_FRACTIONS,
                val_fraction_of_rest: float = 0.25, *, stratify: str = "auto",
                fraction_by_magnification: bool = True) -> Splits:
    """Patient-level stratified ``folds``-fold splits with nested label fractions.

    Test parts come from ``StratifiedKFold`` over the patient table (each patient tests in
    exactly one fold), stratified by subtype, or by label with a note (also logged) where a
    subtype has fewer patients than folds (``stratify="auto"``); ``stratify="subtype"``
    keeps subtype stratification in that case (full BreakHis has 4 adenosis patients, so
    5 folds fall back to label under "auto"), ``stratify="label"`` always uses the label.
    Per fold, ``val_fraction_of_rest`` of the
    remaining patients (25% of 80% = 20% of all) form the validation part, stratified the
    same way where possible; the rest is the training part. Label fractions are drawn from
    the training images per stratum (the stratification column, times magnification when
    ``fraction_by_magnification``).

    Example:
        >>> splits = make_splits(scan_breakhis(root), folds=5, seed=0)  # doctest: +SKIP

    Raises:
        ConfigError: for invalid arguments, or when even the label cannot be stratified
            (a class with fewer patients than folds, or a class missing).
        DataError: if the manifest lacks columns or a patient has two classes.
    """
    fractions = _check_arguments(folds, seed, label_fractions, val_fraction_of_rest)
    check_manifest(manifest)
    images = manifest[list(REQUIRED_COLUMNS)].copy()
    images["patient_id"] = images["patient_id"].astype(str)
    images["relpath"] = relative_paths(manifest).to_numpy()
    patients, notes = _patient_table(images)
    stratify_by, strat_notes = _choose_stratification(patients, int(folds), stratify)
    notes += strat_notes
    strata = [stratify_by] + (["magnification"] if fraction_by_magnification else [])
    options = {"seed": int(seed), "val_fraction": float(val_fraction_of_rest),
               "stratify_by": stratify_by, "strata": strata,
               "classes": sorted(patients["label"].unique())}
    fold_splits = []
    for k, test_idx in enumerate(_test_parts(patients, int(folds), int(seed), stratify_by)):
        entry, fold_notes = _make_fold(k, images, patients, test_idx, options)
        fold_splits.append(entry)
        notes += fold_notes
    for note in notes:
        logger.warning("splits: %s", note)
    splits = Splits(version=SPLITS_VERSION, seed=int(seed), folds=int(folds),
                    stratify_by=stratify_by, notes=notes, label_fractions=fractions,
                    val_fraction_of_rest=float(val_fraction_of_rest), fraction_strata=strata,
                    fingerprint=dataset_fingerprint(manifest),
                    counts=_overall_counts(images, patients), fold_splits=fold_splits)
    check_splits(splits, manifest)
    return splits
