"""Protocol metrics (precision, recall, F1, ROC AUC), fold summaries and paired tests."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mpcs.evaluation.stats import format_mean_std, paired_test, summarize_folds
from mpcs.metrics import (
    classification_metrics,
    image_level_accuracy,
    patient_level_accuracy,
)

# --------------------------------------------------------------------------- classification


def test_ila_differs_from_pla_and_matches_the_accuracy_functions() -> None:
    # Patient a: 4 malignant images, 3 predicted right; patient b: 1 benign image, wrong.
    y_true = [1, 1, 1, 1, 0]
    y_prob = [0.9, 0.8, 0.7, 0.2, 0.6]
    patients = ["a", "a", "a", "a", "b"]
    m = classification_metrics(y_true, y_prob, patients)
    assert m["ila"] == pytest.approx(3 / 5)
    assert m["pla"] == pytest.approx((3 / 4 + 0) / 2)
    y_pred = [1, 1, 1, 0, 1]
    assert m["ila"] == image_level_accuracy(y_true, y_pred)
    assert m["pla"] == patient_level_accuracy(y_true, y_pred, patients)
    assert (m["n_images"], m["n_patients"]) == (5, 2)


def test_precision_recall_f1_by_hand() -> None:
    # Predictions at 0.5: TP = 2, FP = 1, FN = 2, TN = 3.
    y_true = [1, 1, 1, 1, 0, 0, 0, 0]
    y_prob = [0.9, 0.5, 0.4, 0.1, 0.7, 0.3, 0.2, 0.0]
    m = classification_metrics(y_true, y_prob, list("abcdefgh"))
    precision, recall = 2 / 3, 2 / 4
    assert m["precision"] == pytest.approx(precision)
    assert m["recall"] == pytest.approx(recall)
    assert m["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert m["ila"] == pytest.approx(5 / 8)
    # ROC AUC by pair counting: positive score > negative score, ties count half.
    pos, neg = [0.9, 0.5, 0.4, 0.1], [0.7, 0.3, 0.2, 0.0]
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    assert m["roc_auc"] == pytest.approx(wins / 16)


def test_threshold_and_two_column_probabilities() -> None:
    y_true = [1, 0, 1]
    two = np.array([[0.4, 0.6], [0.7, 0.3], [0.35, 0.65]])
    m = classification_metrics(y_true, two, ["a", "b", "c"], threshold=0.62)
    assert m["ila"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(1 / 2)


def test_roc_auc_is_nan_for_one_class_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = classification_metrics([1, 1, 1], [0.9, 0.2, 0.7], ["a", "a", "b"])
        benign = classification_metrics([0, 0], [0.1, 0.2], ["a", "b"])
    assert math.isnan(m["roc_auc"]) and math.isnan(benign["roc_auc"])
    assert m["recall"] == pytest.approx(2 / 3) and m["precision"] == 1.0
    # No positives predicted or present: precision, recall, F1 are 0, not an error.
    assert (benign["precision"], benign["recall"], benign["f1"]) == (0.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("y_true", "y_prob", "patients", "match"),
    [
        ([0, 2], [0.1, 0.2], ["a", "b"], "0 \\(benign\\) and 1"),
        ([0, 1], [0.1], ["a", "b"], "entries"),
        ([0, 1], [0.1, float("nan")], ["a", "b"], "NaN"),
        ([0, 1], [0.1, 0.9], ["a"], "patients"),
    ],
)
def test_classification_metrics_rejects_bad_input(y_true, y_prob, patients, match) -> None:
    with pytest.raises(ValueError, match=match):
        classification_metrics(y_true, y_prob, patients)


# --------------------------------------------------------------------------- summaries


def test_summarize_folds_mean_std_and_format() -> None:
    df = pd.DataFrame({
        "method": ["op"] * 5 + ["imagenet"] * 5,
        "magnification": ["40X"] * 10,
        "fold": list(range(5)) * 2,
        "ila": [0.91, 0.93, 0.92, 0.935, 0.925, 0.90, 0.91, 0.905, 0.90, 0.92],
        "pla": [0.90, 0.92, 0.91, 0.93, 0.92, 0.89, 0.90, 0.90, 0.89, 0.91],
    })
    out = summarize_folds(df, ["method", "magnification"], ["ila", "pla"])
    assert list(out["method"]) == ["imagenet", "op"]
    op = out.set_index("method").loc["op"]
    values = np.array([0.91, 0.93, 0.92, 0.935, 0.925])
    assert op["n"] == 5
    assert op["ila_mean"] == pytest.approx(values.mean())
    assert op["ila_std"] == pytest.approx(values.std(ddof=1))
    assert op["ila_fmt"] == f"{values.mean() * 100:.2f}±{values.std(ddof=1) * 100:.2f}"
    assert op["ila_fmt"] == "92.40±0.96"
    assert list(out.columns) == ["method", "magnification", "n", "ila_mean", "ila_std",
                                 "ila_fmt", "pla_mean", "pla_std", "pla_fmt"]


def test_summarize_folds_without_groups_and_edge_cases() -> None:
    df = pd.DataFrame({"ila": [0.9, 0.8], "roc_auc": [0.95, float("nan")]})
    out = summarize_folds(df, [], ["ila", "roc_auc"])
    assert len(out) == 1 and out.loc[0, "n"] == 2
    assert out.loc[0, "ila_fmt"] == "85.00±7.07"
    # NaN is left out: one value has a mean but no std.
    assert out.loc[0, "roc_auc_fmt"] == "95.00±n/a"
    assert format_mean_std(0.9218, 0.0105) == "92.18±1.05"
    assert format_mean_std(2.5, 0.25, percent=False) == "2.50±0.25"
    with pytest.raises(ValueError, match="not in the table: pla"):
        summarize_folds(df, [], ["pla"])


# --------------------------------------------------------------------------- paired tests


def test_paired_test_matches_scipy() -> None:
    a = [0.921, 0.915, 0.930, 0.918, 0.925, 0.910, 0.927]
    b = [0.905, 0.909, 0.912, 0.915, 0.901, 0.908, 0.904]
    r = paired_test(a, b)
    t = stats.ttest_rel(a, b)
    w = stats.wilcoxon(a, b)
    assert r["n"] == 7
    assert r["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    assert r["t_statistic"] == pytest.approx(t.statistic)
    assert r["t_pvalue"] == pytest.approx(t.pvalue)
    assert r["wilcoxon_statistic"] == pytest.approx(w.statistic)
    assert r["wilcoxon_pvalue"] == pytest.approx(w.pvalue)
    # All 7 differences positive: exact two-sided Wilcoxon p = 2 / 2**7.
    assert r["wilcoxon_pvalue"] == pytest.approx(2 / 2**7)
    one_sided = paired_test(a, b, alternative="greater")
    assert one_sided["t_pvalue"] == pytest.approx(t.pvalue / 2)


def test_paired_test_edge_cases() -> None:
    same = paired_test([0.9, 0.8, 0.7], [0.9, 0.8, 0.7])
    assert same["t_pvalue"] == 1.0 and same["wilcoxon_pvalue"] == 1.0
    assert same["mean_diff"] == 0.0
    with pytest.raises(ValueError, match="equal lengths"):
        paired_test([0.9, 0.8], [0.9])
    with pytest.raises(ValueError, match="at least 2 pairs"):
        paired_test([0.9], [0.8])
    with pytest.raises(ValueError, match="NaN"):
        paired_test([0.9, float("nan")], [0.8, 0.7])
    with pytest.raises(ValueError, match="alternative"):
        paired_test([0.9, 0.8], [0.8, 0.7], alternative="bigger")
