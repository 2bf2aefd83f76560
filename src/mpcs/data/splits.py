"""Patient-level, subtype-stratified cross-validation splits and nested label fractions.

The protocol (method notes, "The protocol"): 5-fold cross-validation at PATIENT level, so no
patient's images are on two sides of a fold; each fold tests on 20% of the patients and
splits the other 80% into train (60% of all) and validation (20% of all), stratified by
tumour subtype. Where the subtypes are too small to stratify (fewer patients than folds),
the benign/malignant label is used instead and a note says so.

Limited-label fine-tuning uses *label fractions* of a fold's training images: for each
stratum (subtype or label, times magnification) one seeded priority order of its images is
drawn once, and the fraction ``f`` takes the first ``ceil(f * n_stratum)`` images of every
stratum. The 5% set is therefore inside the 10% set, and so on, by construction.

A :class:`Splits` object is saved as human-readable JSON and checked on load against the
data set's fingerprint (relative image paths, patient ids and labels; not file contents).

Example:
    >>> from mpcs.data.breakhis import scan_breakhis
    >>> manifest = scan_breakhis("/data/BreaKHis_v1")             # doctest: +SKIP
    >>> splits = make_splits(manifest, folds=5, seed=0)             # doctest: +SKIP
    >>> splits.fold(0).test[:2]                                     # doctest: +SKIP
    ['14-10147', '14-13200']
    >>> len(splits.labelled_images(0, 0.2))                         # doctest: +SKIP
    958
    >>> splits.save("runs/splits.json")                             # doctest: +SKIP
    >>> Splits.load("runs/splits.json", manifest) == splits         # doctest: +SKIP
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold, train_test_split

from mpcs.data.breakhis import parse_filename
from mpcs.engine.runinfo import atomic_write_text
from mpcs.errors import ConfigError, DataError

__all__ = [
    "DEFAULT_LABEL_FRACTIONS",
    "PARTS",
    "SPLITS_FORMAT",
    "SPLITS_VERSION",
    "STRATIFY_CHOICES",
    "Fold",
    "FoldSplit",
    "Splits",
    "check_splits",
    "dataset_fingerprint",
    "make_splits",
    "relative_paths",
]

logger = logging.getLogger(__name__)

SPLITS_FORMAT = "mpcs-splits"
SPLITS_VERSION = 1
PARTS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_LABEL_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)
STRATIFY_CHOICES: tuple[str, ...] = ("auto", "subtype", "label")
_REQUIRED_COLUMNS = ("path", "patient_id", "label", "subtype", "magnification")
_MAX_SEED = 2**32 - 1


# --------------------------------------------------------------------------- data classes


@dataclass(frozen=True)
class Fold:
    """The patient ids of one fold's three parts (sorted).

    Example:
        >>> Fold(0, train=("p1", "p2"), val=("p3",), test=("p4",)).test
        ('p4',)
    """

    index: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def part(self, name: str) -> tuple[str, ...]:
        """The patients of part ``"train"``, ``"val"`` or ``"test"``."""
        if name not in PARTS:
            raise ValueError(f"unknown part {name!r} (expected one of {', '.join(PARTS)})")
        return getattr(self, name)


@dataclass
class FoldSplit:
    """What the splits file stores for one fold.

    ``train_order`` maps a stratum key (``"DC/40X"``) to that stratum's training images
    (paths relative to the ``breast`` folder) in their seeded priority order.
    """

    train: list[str]
    val: list[str]
    test: list[str]
    train_order: dict[str, list[str]]
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass
class Splits:
    """Cross-validation splits of one data set, with nested label fractions per fold.

    Example:
        >>> splits = make_splits(full_breakhis, folds=5, seed=0)        # doctest: +SKIP
        >>> splits.stratify_by, splits.notes                            # doctest: +SKIP
        ('label', ['stratified by label: subtype A has 4 patients < 5 folds'])
    """

    version: int
    seed: int
    folds: int
    stratify_by: str
    notes: list[str]
    label_fractions: list[float]
    val_fraction_of_rest: float
    fraction_strata: list[str]
    fingerprint: str
    counts: dict[str, Any]
    fold_splits: list[FoldSplit]

    def fold(self, k: int) -> Fold:
        """Train, val and test patient ids of fold ``k`` (0-based)."""
        entry = self._entry(k)
        return Fold(k, tuple(entry.train), tuple(entry.val), tuple(entry.test))

    def labelled_images(self, k: int, fraction: float) -> list[str]:
        """Fold ``k``'s labelled training images at ``fraction`` (0 < fraction <= 1), sorted.

        The first ``ceil(fraction * n)`` images of each stratum's priority order, so a
        smaller fraction's set is always inside a larger one's.
        """
        fraction = _check_fraction(fraction)
        chosen: list[str] = []
        for order in self._entry(k).train_order.values():
            chosen.extend(order[: _take(fraction, len(order))])
        return sorted(chosen)

    def frame(self, manifest: pd.DataFrame, k: int, part: str,
              fraction: float | None = None) -> pd.DataFrame:
        """The manifest rows of fold ``k``'s ``part``; ``fraction`` (train only) subsets it.

        Example:
            >>> splits.frame(manifest, 0, "train", fraction=0.2)     # doctest: +SKIP
        """
        patients = set(self.fold(k).part(part))
        rows = manifest[manifest["patient_id"].isin(patients)]
        if fraction is not None:
            if part != "train":
                raise ValueError(f"a label fraction applies to the train part, not {part!r}")
            keep = set(self.labelled_images(k, fraction))
            rows = rows[relative_paths(rows).isin(keep).to_numpy()]
        return rows.copy()

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dictionary (see :meth:`to_json`)."""
        return {
            "format": SPLITS_FORMAT,
            "version": self.version,
            "seed": self.seed,
            "folds": self.folds,
            "stratify_by": self.stratify_by,
            "fraction_strata": list(self.fraction_strata),
            "val_fraction_of_rest": self.val_fraction_of_rest,
            "label_fractions": list(self.label_fractions),
            "notes": list(self.notes),
            "fingerprint": self.fingerprint,
            "counts": self.counts,
            "fold_splits": [self._fold_dict(k) for k in range(len(self.fold_splits))],
        }

    def to_json(self) -> str:
        """Human-readable JSON (indent 1); identical for identical inputs and seed."""
        return json.dumps(self.to_dict(), indent=1) + "\n"

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_json` to ``path`` atomically (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.to_json())
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "splits") -> Splits:
        """Build from :meth:`to_dict` output; :class:`DataError` if it is malformed."""
        return _splits_from_dict(data, source)

    @classmethod
    def load(cls, path: str | os.PathLike[str],
             manifest: pd.DataFrame | None = None) -> Splits:
        """Read a splits file and :func:`check_splits` it (against ``manifest`` if given).

        Raises:
            DataError: if the file is missing, not a splits file, inconsistent, or (with a
                manifest) made for a different data set.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"{path}: splits file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{path}: cannot read splits file: {exc}") from None
        splits = _splits_from_dict(data, str(path))
        try:
            check_splits(splits, manifest)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from None
        return splits

    def _entry(self, k: int) -> FoldSplit:
        if not isinstance(k, (int, np.integer)) or not 0 <= k < len(self.fold_splits):
            raise ValueError(f"fold {k!r} does not exist (folds are 0..{self.folds - 1})")
        return self.fold_splits[int(k)]

    def _fold_dict(self, k: int) -> dict[str, Any]:
        entry = self.fold_splits[k]
        sizes = {_fraction_key(f): len(self.labelled_images(k, f)) for f in self.label_fractions}
        return {
            "fold": k,
            "counts": entry.counts,
            "labelled_images": sizes,
            "train": list(entry.train),
            "val": list(entry.val),
            "test": list(entry.test),
            "train_order": {key: list(paths) for key, paths in entry.train_order.items()},
        }


# --------------------------------------------------------------------------- manifest helpers


def relative_paths(manifest: pd.DataFrame) -> pd.Series:
    """Image paths relative to ``manifest.attrs["root"]`` (the ``breast`` folder), with ``/``.

    Without a root in ``attrs`` the paths are used as given.

    Example:
        >>> df = pd.DataFrame({"path": ["/d/breast/benign/x.png"]})
        >>> df.attrs["root"] = "/d/breast"
        >>> relative_paths(df).tolist()
        ['benign/x.png']
    """
    root = manifest.attrs.get("root")
    paths = manifest["path"].astype(str)
    if root is None:
        return paths.str.replace(os.sep, "/", regex=False)
    rel = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    return pd.Series(rel, index=manifest.index, name="relpath", dtype=object)


def dataset_fingerprint(manifest: pd.DataFrame) -> str:
    """sha1 over the sorted (relative path, patient id, label) lines of a manifest.

    File contents are not read: the fingerprint identifies which images the splits refer
    to, so re-encoding or moving the whole data set elsewhere keeps it.

    Example:
        >>> df = pd.DataFrame({"path": ["a.png"], "patient_id": ["p"], "label": ["benign"]})
        >>> len(dataset_fingerprint(df))
        40
    """
    rel = relative_paths(manifest)
    lines = sorted(
        f"{path}\t{patient}\t{label}\n"
        for path, patient, label in zip(rel, manifest["patient_id"], manifest["label"],
                                        strict=True)
    )
    digest = hashlib.sha1()
    for line in lines:
        digest.update(line.encode("utf-8"))
    return digest.hexdigest()


def _check_manifest(manifest: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED_COLUMNS if c not in manifest.columns]
    if missing:
        raise DataError(f"manifest lacks column(s) {', '.join(missing)} needed for splits")
    if manifest.empty:
        raise DataError("manifest has no images: nothing to split")
    labels = manifest.groupby("patient_id")["label"].nunique()
    mixed = labels[labels > 1]
    if not mixed.empty:
        raise DataError(f"patient {mixed.index[0]} has images of more than one class")


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


# --------------------------------------------------------------------------- validation


def _check_fraction(fraction: float) -> float:
    try:
        value = float(fraction)
    except (TypeError, ValueError):
        raise ConfigError(f"label fraction must be a number in (0, 1], got {fraction!r}") from None
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"label fraction must be in (0, 1], got {fraction!r}")
    return value


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
    fractions = sorted({_check_fraction(f) for f in label_fractions})
    if not fractions:
        raise ConfigError("splits: label_fractions must list at least one fraction")
    return fractions


def _take(fraction: float, n: int) -> int:
    """``ceil(fraction * n)``, robust to float noise (0.6 * 5 is 3.0000000000000004)."""
    return min(n, math.ceil(round(fraction * n, 9)))


def _fraction_key(fraction: float) -> str:
    return f"{fraction:g}"


# --------------------------------------------------------------------------- splitting


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
    _check_manifest(manifest)
    images = manifest[list(_REQUIRED_COLUMNS)].copy()
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


# --------------------------------------------------------------------------- checking


def _check_fold_parts(k: int, entry: FoldSplit) -> set[str]:
    """No duplicates within a part and no patient in two parts; returns the fold's patients."""
    seen: dict[str, str] = {}
    for part in PARTS:
        for patient in getattr(entry, part):
            if patient in seen:
                where = (f"twice in {part}" if seen[patient] == part
                         else f"in both {seen[patient]} and {part}")
                raise DataError(f"fold {k}: patient {patient} is {where}")
            seen[patient] = part
    return set(seen)


def _check_cover(splits: Splits, fold_patients: list[set[str]]) -> set[str]:
    """Each patient tests in exactly one fold; every fold's parts cover all patients."""
    if len(splits.fold_splits) != splits.folds:
        raise DataError(f"splits list {len(splits.fold_splits)} folds but say folds="
                        f"{splits.folds}")
    tested: dict[str, int] = {}
    for k, entry in enumerate(splits.fold_splits):
        for patient in entry.test:
            if patient in tested:
                raise DataError(f"patient {patient} is in the test part of folds "
                                f"{tested[patient]} and {k}")
            tested[patient] = k
    everyone = set(tested)
    for k, patients in enumerate(fold_patients):
        missing, extra = sorted(everyone - patients), sorted(patients - everyone)
        if missing:
            raise DataError(f"fold {k}: patient {missing[0]} is in none of its parts "
                            f"({len(missing)} patient(s) missing)")
        if extra:
            raise DataError(f"patient {extra[0]} is in fold {k} but in no fold's test part")
    return everyone


def _patient_of(path: str) -> str | None:
    try:
        return parse_filename(path).patient_id
    except (ValueError, TypeError):
        return None


def _check_train_order(k: int, entry: FoldSplit, image_patient: dict[str, str] | None) -> None:
    """Training images belong to training patients (and, with a manifest, all are listed)."""
    train = set(entry.train)
    listed: set[str] = set()
    for paths in entry.train_order.values():
        for path in paths:
            if path in listed:
                raise DataError(f"fold {k}: training image {path} is listed twice")
            listed.add(path)
            patient = (image_patient.get(path) if image_patient is not None
                       else _patient_of(path))
            if image_patient is not None and path not in image_patient:
                raise DataError(f"fold {k}: training image {path} is not in the data set")
            if patient is not None and patient not in train:
                raise DataError(f"fold {k}: training image {path} belongs to patient "
                                f"{patient}, who is not in the train part")
    if image_patient is not None:
        absent = sorted(p for p, pid in image_patient.items() if pid in train and p not in listed)
        if absent:
            raise DataError(f"fold {k}: {len(absent)} image(s) of training patients are "
                            f"missing from train_order, e.g. {absent[0]}")


def _check_against_manifest(splits: Splits, manifest: pd.DataFrame,
                            everyone: set[str]) -> dict[str, str]:
    fingerprint = dataset_fingerprint(manifest)
    if fingerprint != splits.fingerprint:
        raise DataError("splits file was made for a different data set: fingerprint "
                        f"{splits.fingerprint} != {fingerprint}")
    known = set(manifest["patient_id"].astype(str))
    unknown = sorted(everyone - known)
    if unknown:
        raise DataError(f"patient {unknown[0]} of the splits is not in the data set")
    absent = sorted(known - everyone)
    if absent:
        raise DataError(f"patient {absent[0]} of the data set is in no fold")
    rel = relative_paths(manifest)
    return dict(zip(rel, manifest["patient_id"].astype(str), strict=True))


def check_splits(splits: Splits, manifest: pd.DataFrame | None = None) -> None:
    """Assert the split invariants; raise :class:`DataError` naming the first violation.

    Checked: no patient in two parts of a fold, every patient in exactly one test part, each
    fold's parts cover all patients, training images belong to training patients; with a
    ``manifest``: the fingerprint matches and every patient exists.

    Example:
        >>> check_splits(make_splits(manifest), manifest)             # doctest: +SKIP
    """
    fold_patients = [_check_fold_parts(k, e) for k, e in enumerate(splits.fold_splits)]
    everyone = _check_cover(splits, fold_patients)
    image_patient = None
    if manifest is not None:
        _check_manifest(manifest)
        image_patient = _check_against_manifest(splits, manifest, everyone)
    for k, entry in enumerate(splits.fold_splits):
        _check_train_order(k, entry, image_patient)


# --------------------------------------------------------------------------- loading


def _get(data: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str) -> Any:
    if key not in data:
        raise DataError(f"{source}: splits file lacks {key!r}")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise DataError(f"{source}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _str_list(value: Any, what: str, source: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{source}: {what} must be a list of strings")
    return list(value)


def _fold_from_dict(entry: Any, k: int, source: str) -> FoldSplit:
    if not isinstance(entry, dict):
        raise DataError(f"{source}: fold entry {k} is not an object")
    order = _get(entry, "train_order", dict, f"{source}: fold {k}")
    return FoldSplit(
        train=_str_list(entry.get("train"), f"fold {k} train", source),
        val=_str_list(entry.get("val"), f"fold {k} val", source),
        test=_str_list(entry.get("test"), f"fold {k} test", source),
        train_order={str(key): _str_list(v, f"fold {k} train_order[{key}]", source)
                     for key, v in order.items()},
        counts=dict(entry.get("counts") or {}),
    )


def _splits_from_dict(data: Any, source: str) -> Splits:
    if not isinstance(data, dict) or data.get("format") != SPLITS_FORMAT:
        raise DataError(f"{source}: not an mpcs splits file (no \"format\": "
                        f"\"{SPLITS_FORMAT}\")")
    version = _get(data, "version", int, source)
    if version != SPLITS_VERSION:
        raise DataError(f"{source}: splits file version {version} is not supported "
                        f"(this mpcs reads version {SPLITS_VERSION}); make the splits again")
    try:
        fractions = [_check_fraction(f) for f in _get(data, "label_fractions", list, source)]
    except ConfigError as exc:
        raise DataError(f"{source}: {exc}") from None
    folds = _get(data, "fold_splits", list, source)
    return Splits(
        version=version,
        seed=_get(data, "seed", int, source),
        folds=_get(data, "folds", int, source),
        stratify_by=_get(data, "stratify_by", str, source),
        notes=_str_list(data.get("notes", []), "notes", source),
        label_fractions=fractions,
        val_fraction_of_rest=float(_get(data, "val_fraction_of_rest", (int, float), source)),
        fraction_strata=_str_list(data.get("fraction_strata", []), "fraction_strata", source),
        fingerprint=_get(data, "fingerprint", str, source),
        counts=dict(_get(data, "counts", dict, source)),
        fold_splits=[_fold_from_dict(entry, k, source) for k, entry in enumerate(folds)],
    )
