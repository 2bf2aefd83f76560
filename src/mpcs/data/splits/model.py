"""Cross-validation splits as data: the folds' patients and nested label fractions
(:class:`Splits`), their invariants (:func:`check_splits`) and their JSON file."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mpcs.core.errors import ConfigError, DataError
from mpcs.core.io import atomic_write_text
from mpcs.data.datasets.breakhis_names import parse_filename
from mpcs.data.splits.manifest import (
    check_fraction,
    check_manifest,
    dataset_fingerprint,
    fraction_key,
    relative_paths,
    take_fraction,
)

SPLITS_FORMAT = "mpcs-splits"
SPLITS_VERSION = 1
PARTS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_LABEL_FRACTIONS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8, 1.0)


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
        fraction = check_fraction(fraction)
        chosen: list[str] = []
        for order in self._entry(k).train_order.values():
            chosen.extend(order[: take_fraction(fraction, len(order))])
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
        sizes = {fraction_key(f): len(self.labelled_images(k, f)) for f in self.label_fractions}
        return {
            "fold": k,
            "counts": entry.counts,
            "labelled_images": sizes,
            "train": list(entry.train),
            "val": list(entry.val),
            "test": list(entry.test),
            "train_order": {key: list(paths) for key, paths in entry.train_order.items()},
        }


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
        made = splits.counts
        raise DataError(
            "splits file was made for a different data set (it was made for "
            f"{made.get('images', '?')} images of {made.get('patients', '?')} patients; this "
            f"one has {len(manifest)} images of {manifest['patient_id'].nunique()} patients, "
            f"or other files: fingerprint {splits.fingerprint} != {fingerprint}); make splits "
            "for this data with `mpcs splits --data DATA --out FILE`")
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
        check_manifest(manifest)
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
        fractions = [check_fraction(f) for f in _get(data, "label_fractions", list, source)]
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
