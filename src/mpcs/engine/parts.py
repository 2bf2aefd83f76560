"""The three parts of a fine-tuning or linear-evaluation run: train, val and test.

Each part is rows of the BreakHis manifest (``path``, ``patient_id``, ``label``, ...) with
integer labels and, once loaded, its inputs (pixels or features). No patient may be in two
parts (:func:`check_parts`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mpcs.core.errors import ConfigError, DataError
from mpcs.core.runtime import default_cache_dir
from mpcs.data.cache import load_images
from mpcs.models.classifier import CLASS_NAMES

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("path", "patient_id", "label")
PART_NAMES: tuple[str, ...] = ("train", "val", "test")


def class_names_of(class_names: Sequence[str] | None) -> tuple[str, ...]:
    """The classes in logit order (default benign, malignant); at least two, distinct."""
    names = tuple(str(c) for c in (class_names if class_names is not None else CLASS_NAMES))
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"class_names must list at least two distinct classes, got "
                          f"{list(names)}")
    return names


def _check_part(name: str, df: pd.DataFrame | None, class_names: Sequence[str]) -> None:
    if df is None or len(df) == 0:
        raise ConfigError(f"the {name} part is empty: fine-tuning needs images in train, "
                          "val and test (is the label fraction or the split too small?)")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ConfigError(f"the {name} part lacks the column(s) {', '.join(missing)} "
                          "(expected rows of the BreakHis manifest)")
    unknown = sorted(set(map(str, df["label"])) - set(class_names))
    if unknown:
        raise DataError(f"the {name} part has labels {unknown}; expected one of "
                        f"{list(class_names)}")


def check_parts(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame,
                class_names: Sequence[str] = CLASS_NAMES) -> None:
    """Validate the three parts: present, non-empty, known labels, no shared patient.

    Raises:
        ConfigError: a part is missing or empty, or lacks a required column.
        DataError: an unknown label, or a patient in two parts (listed).
    Logs a warning (once, also where logging is not set up) when the training or the
    validation part holds a single class.
    """
    parts = {"train": train, "val": val, "test": test}
    for name, df in parts.items():
        _check_part(name, df, class_names)
    patients = {name: set(map(str, df["patient_id"])) for name, df in parts.items()}
    for a, b in (("test", "train"), ("test", "val"), ("val", "train")):
        shared = sorted(patients[a] & patients[b])
        if shared:
            shown = ", ".join(shared[:20]) + (f" (+{len(shared) - 20} more)"
                                              if len(shared) > 20 else "")
            raise DataError(f"patient leakage: {len(shared)} {a} patient(s) also in the {b} "
                            f"part: {shown}. Every patient must be in exactly one part.")
    consequence = {"train": "the classifier cannot learn to tell the classes apart",
                   "val": "the epoch is selected on one class's images only (a model that "
                          "predicts that class wins); give the validation part patients of "
                          "both classes"}
    for name, why in consequence.items():
        df = parts[name]
        classes = sorted(set(map(str, df["label"])))
        if len(classes) < 2:
            patients = df["patient_id"].nunique()
            log.warning("the %s part holds a single class (%s: %d images of %d patient%s): %s",
                        name, classes[0], len(df), patients, "" if patients == 1 else "s", why)


@dataclass
class Part:
    """One part of the data: its table, integer labels, and inputs (pixels or features)."""

    name: str
    table: pd.DataFrame
    labels: np.ndarray
    inputs: np.ndarray | None = None  # uint8 [N, 3, S, S] pixels or float32 [N, F] features

    @property
    def patients(self) -> np.ndarray:
        return self.table["patient_id"].astype(str).to_numpy()

    def __len__(self) -> int:
        return len(self.table)


def make_part(name: str, df: pd.DataFrame, class_names: Sequence[str] = CLASS_NAMES) -> Part:
    """A :class:`Part` of ``df`` (index reset, labels as class indices)."""
    table = df.reset_index(drop=True).copy()
    index = {c: i for i, c in enumerate(class_names)}
    labels = np.array(table["label"].astype(str).map(index), dtype=np.int64)
    return Part(name, table, labels)


def _cache_dir(cfg: Mapping[str, Any]) -> Path | None:
    d = cfg["data"]
    return Path(d["cache_dir"] or default_cache_dir()) if d["use_cache"] else None


def load_pixels(part: Part, cfg: Mapping[str, Any], progress: bool) -> np.ndarray:
    """The part's images as uint8 ``[N, 3, S, S]`` at ``data.input_size`` (cached)."""
    return load_images(list(part.table["path"].astype(str)), cfg["data"]["input_size"],
                       cache_dir=_cache_dir(cfg), progress=progress)


def part_summary(parts: Sequence[Part]) -> dict[str, Any]:
    """Per part: images, patients, label counts and patient ids (for ``run.json``)."""
    out = {}
    for p in parts:
        counts = p.table["label"].astype(str).value_counts().to_dict()
        out[p.name] = {"images": len(p), "patients": int(p.table["patient_id"].nunique()),
                       "labels": {k: int(v) for k, v in sorted(counts.items())},
                       "patient_ids": sorted(set(p.patients))}
    return out
