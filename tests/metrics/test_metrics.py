"""ILA and PLA on hand-made predictions, including cases where they differ."""

from __future__ import annotations

import numpy as np
import pytest

from mpcs.evaluation.linear_probe import fit_linear_probe
from mpcs.metrics import image_level_accuracy, patient_level_accuracy


def test_ila_and_pla_differ_when_patients_have_different_image_counts() -> None:
    # Patient A: 4 images, all correct. Patient B: 1 image, wrong.
    y_true = [1, 1, 1, 1, 0]
    y_pred = [1, 1, 1, 1, 1]
    patients = ["A", "A", "A", "A", "B"]
    assert image_level_accuracy(y_true, y_pred) == pytest.approx(4 / 5)
    assert patient_level_accuracy(y_true, y_pred, patients) == pytest.approx((1.0 + 0.0) / 2)


def test_pla_is_mean_of_patient_scores() -> None:
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [0, 1, 0, 1, 1, 0]
    patients = ["p", "p", "q", "r", "r", "r"]
    # p: 1/2, q: 1/1, r: 2/3
    assert patient_level_accuracy(y_true, y_pred, patients) == pytest.approx(
        (0.5 + 1.0 + 2 / 3) / 3)
    assert image_level_accuracy(y_true, y_pred) == pytest.approx(4 / 6)


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="equal length"):
        image_level_accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        image_level_accuracy([], [])
    with pytest.raises(ValueError, match="patients"):
        patient_level_accuracy([0, 1], [0, 1], ["a"])


def test_linear_probe_learns_a_separable_problem_and_needs_two_patients() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 40)
    x = rng.normal(0, 1, (80, 8)) + y[:, None] * 3.0
    groups = np.repeat(np.arange(8), 10)
    probe = fit_linear_probe(x, y, groups)
    assert (probe.predict(x) == y).mean() > 0.95
    with pytest.raises(ValueError, match="at least 2 patients"):
        fit_linear_probe(x, y, np.zeros(80))
