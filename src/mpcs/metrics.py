"""Image-level and patient-level accuracy, the paper's BreakHis metrics.

ILA = correct images / images. PLA = mean over patients of (correct images of the patient /
images of the patient), so every patient weighs the same whatever their image count.

Example:
    >>> image_level_accuracy([0, 0, 1], [0, 1, 1])
    0.6666666666666666
    >>> patient_level_accuracy([0, 0, 1], [0, 1, 1], ["a", "a", "b"])
    0.75

:func:`classification_metrics` adds precision, recall, F1 (malignant = class 1 is positive)
and ROC AUC from predicted malignant probabilities:

    >>> m = classification_metrics([0, 0, 1], [0.2, 0.7, 0.9], ["a", "a", "b"])
    >>> round(m["ila"], 4), m["pla"], m["precision"], m["recall"], m["roc_auc"]
    (0.6667, 0.75, 0.5, 1.0, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

#: The metrics of a binary BreakHis result row (:func:`classification_metrics`), in table order.
BINARY_METRICS: tuple[str, ...] = ("ila", "pla", "precision", "recall", "f1", "roc_auc")
#: The metrics of predicted label strings (:func:`classification_scores`): BACH, UCSB BCC.
LABEL_METRICS: tuple[str, ...] = ("accuracy", "precision", "recall", "f1")


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


def _positive_probability(y_prob: Sequence | np.ndarray) -> np.ndarray:
    """1-D malignant probabilities; a (n, 2) array gives its column 1."""
    prob = np.asarray(y_prob, dtype=float)
    if prob.ndim == 2 and prob.shape[1] == 2:
        prob = prob[:, 1]
    if prob.ndim != 1:
        raise ValueError(f"y_prob must be 1-D (probability of class 1) or (n, 2), got shape "
                         f"{np.asarray(y_prob).shape}")
    if not np.all(np.isfinite(prob)):
        raise ValueError("y_prob contains NaN or infinite values")
    return prob


def _binary_labels(y_true: Sequence) -> np.ndarray:
    true = np.asarray(y_true)
    if true.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {true.shape}")
    if true.size and not np.isin(true, (0, 1)).all():
        bad = sorted({str(v) for v in true[~np.isin(true, (0, 1))]})[:3]
        raise ValueError(f"y_true must hold 0 (benign) and 1 (malignant), got {', '.join(bad)}")
    return true.astype(int)


def classification_metrics(y_true: Sequence, y_prob: Sequence | np.ndarray,
                           patients: Sequence, threshold: float = 0.5) -> dict[str, Any]:
    """ILA, PLA, precision, recall, F1 and ROC AUC of a binary (benign 0 / malignant 1) task.

    ``y_prob`` is the predicted probability of malignant (or an ``(n, 2)`` array of both
    class probabilities); an image is predicted malignant when ``y_prob >= threshold``.
    Precision, recall and F1 treat malignant as the positive class (0.0 when undefined);
    ``roc_auc`` is NaN, without a warning, when ``y_true`` holds a single class.

    Example:
        >>> m = classification_metrics([1, 1, 1, 1, 0], [.9, .8, .7, .6, .9], list("aaaab"))
        >>> m["ila"], m["pla"], m["n_images"], m["n_patients"]
        (0.8, 0.5, 5, 2)
    """
    true = _binary_labels(y_true)
    prob = _positive_probability(y_prob)
    if prob.shape != true.shape:
        raise ValueError(f"y_true has {true.size} entries but y_prob has {prob.size}")
    pred = (prob >= threshold).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        true, pred, labels=[1], average="binary", pos_label=1, zero_division=0.0)
    auc = float(roc_auc_score(true, prob)) if np.unique(true).size == 2 else math.nan
    return {
        "ila": image_level_accuracy(true, pred),
        "pla": patient_level_accuracy(true, pred, patients),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "roc_auc": auc,
        "n_images": int(true.size),
        "n_patients": int(pd.unique(np.asarray(patients)).size),
    }


def classification_scores(y_true: Sequence[str], y_pred: Sequence[str],
                          classes: Sequence[str], positive: str | None) -> dict[str, float]:
    """Accuracy, precision, recall and F1 of label strings.

    Binary tasks (``positive`` given) score the positive class; otherwise precision, recall
    and F1 are macro averages over ``classes``. Undefined values count as 0.

    Example:
        >>> s = classification_scores(["b", "m", "m"], ["b", "m", "b"], ["b", "m"], "m")
        >>> round(s["accuracy"], 3), s["precision"], s["recall"]
        (0.667, 1.0, 0.5)
    """
    t, p = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty and equal in length, got "
                         f"{t.size} and {p.size}")
    if positive is not None:
        pr, rc, f1, _ = precision_recall_fscore_support(
            t, p, labels=[positive], average="binary", pos_label=positive, zero_division=0.0)
    else:
        pr, rc, f1, _ = precision_recall_fscore_support(
            t, p, labels=list(classes), average="macro", zero_division=0.0)
    return {"accuracy": float((t == p).mean()), "precision": float(pr), "recall": float(rc),
            "f1": float(f1)}
