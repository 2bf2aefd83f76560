"""Image-level and patient-level accuracy, the paper's BreakHis metrics.

ILA = correct images / images. PLA = mean over patients of (correct images of the patient /
images of the patient), so every patient weighs the same whatever their image count.

Example:
    >>> image_level_accuracy([0, 0, 1], [0, 1, 1])
    0.6666666666666666
    >>> patient_level_accuracy([0, 0, 1], [0, 1, 1], ["a", "a", "b"])
    0.75
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def _check(y_true: Sequence, y_pred: Sequence) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true), np.asarray(y_pred)
    if t.shape != p.shape or t.ndim != 1:
        raise ValueError(f"y_true and y_pred must be 1-D of equal length, got {t.shape} "
                         f"and {p.shape}")
    if t.size == 0:
        raise ValueError("accuracy of an empty prediction set is undefined")
    return t, p


def image_level_accuracy(y_true: Sequence, y_pred: Sequence) -> float:
    t, p = _check(y_true, y_pred)
    return float((t == p).mean())


def patient_level_accuracy(y_true: Sequence, y_pred: Sequence, patients: Sequence) -> float:
    t, p = _check(y_true, y_pred)
    if len(patients) != len(t):
        raise ValueError(f"patients has {len(patients)} entries for {len(t)} predictions")
    correct = pd.Series(t == p).groupby(np.asarray(patients)).mean()
    return float(correct.mean())
