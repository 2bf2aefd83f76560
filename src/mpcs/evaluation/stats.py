"""Fold summaries (mean±std, as the paper reports) and paired tests against a baseline.

Example:
    >>> df = pd.DataFrame({"mag": ["40X"] * 3, "ila": [0.90, 0.92, 0.94]})
    >>> summarize_folds(df, ["mag"], ["ila"])["ila_fmt"].tolist()
    ['92.00±2.00']
    >>> r = paired_test([0.91, 0.93, 0.92, 0.95], [0.90, 0.90, 0.91, 0.92])
    >>> r["n"], round(r["mean_diff"], 4), r["t_pvalue"] < 0.05
    (4, 0.02, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["corrected_paired_test", "format_mean_std", "paired_test", "summarize_folds"]


def format_mean_std(mean: float, std: float, percent: bool = True, digits: int = 2) -> str:
    """``"92.18±1.05"`` from 0.9218 and 0.0105 (``percent`` multiplies by 100).

    A NaN std (a single fold) reads ``"92.18±n/a"``; a NaN mean reads ``"n/a"``.

    Example:
        >>> format_mean_std(0.9218, 0.0105)
        '92.18±1.05'
    """
    scale = 100.0 if percent else 1.0
    if mean is None or math.isnan(mean):
        return "n/a"
    spread = "n/a" if std is None or math.isnan(std) else f"{std * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f}±{spread}"


def summarize_folds(df: pd.DataFrame, group_cols: Sequence[str], metric_cols: Sequence[str],
                    percent: bool = True) -> pd.DataFrame:
    """Mean and std (ddof=1) of each metric over the rows (folds) of each group.

    Returns one row per group with the group columns, ``n`` (rows in the group) and, per
    metric ``m``: ``m_mean``, ``m_std`` (same units as the input) and ``m_fmt``, the
    ``"mean±std"`` string in percent with 2 decimals. NaN values (e.g. an undefined ROC AUC)
    are left out of a metric's mean and std. With no ``group_cols`` all rows form one group.

    Example:
        >>> df = pd.DataFrame({"mag": ["40X", "40X", "100X", "100X"],
        ...                    "ila": [0.90, 0.94, 0.80, 0.80]})
        >>> summarize_folds(df, ["mag"], ["ila"])[["mag", "n", "ila_fmt"]].values.tolist()
        [['100X', 2, '80.00±0.00'], ['40X', 2, '92.00±2.83']]
    """
    group_cols, metric_cols = list(group_cols), list(metric_cols)
    missing = [c for c in group_cols + metric_cols if c not in df.columns]
    if missing:
        raise ValueError(f"columns not in the table: {', '.join(missing)}")
    if not metric_cols:
        raise ValueError("metric_cols must name at least one metric column")
    keys = group_cols if group_cols else (lambda _: "all")
    grouped = df.groupby(keys, sort=True)
    out = grouped.size().rename("n").to_frame()
    for m in metric_cols:
        values = grouped[m]
        out[f"{m}_mean"] = values.mean()
        out[f"{m}_std"] = values.std(ddof=1)
        out[f"{m}_fmt"] = [format_mean_std(a, b, percent)
                           for a, b in zip(out[f"{m}_mean"], out[f"{m}_std"], strict=True)]
    out = out.reset_index(drop=not group_cols)
    return out


def _paired_arrays(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.ndim != 1 or y.ndim != 1:
        raise ValueError("paired_test needs two 1-D sequences of scores")
    if x.size != y.size:
        raise ValueError(f"paired_test needs equal lengths (one score per fold and "
                         f"magnification for each method), got {x.size} and {y.size}")
    if x.size < 2:
        raise ValueError(f"paired_test needs at least 2 pairs, got {x.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("paired_test scores contain NaN or infinite values")
    return x, y


def paired_test(a: Sequence[float], b: Sequence[float],
                alternative: str = "two-sided") -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test of method ``a`` against baseline ``b``.

    Pairs are matched positions (the same fold and magnification). Returns ``n``,
    ``mean_diff`` (mean of a - b), ``t_statistic``, ``t_pvalue``, ``wilcoxon_statistic`` and
    ``wilcoxon_pvalue``. When every difference is zero both p-values are 1.0 (no evidence of
    a difference) instead of NaN. ``alternative`` is passed to scipy (``"greater"`` tests
    a > b).

    Example:
        >>> paired_test([0.9, 0.8], [0.9, 0.8])["wilcoxon_pvalue"]
        1.0

    Raises:
        ValueError: if the lengths differ, fewer than 2 pairs are given, or a score is NaN.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")
    x, y = _paired_arrays(a, b)
    diff = x - y
    result: dict[str, Any] = {"n": int(x.size), "mean_diff": float(diff.mean())}
    if np.all(diff == 0):
        result.update(t_statistic=0.0, t_pvalue=1.0, wilcoxon_statistic=0.0,
                      wilcoxon_pvalue=1.0)
        return result
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_rel(x, y, alternative=alternative)
        w = stats.wilcoxon(x, y, alternative=alternative)
    result.update(t_statistic=float(t.statistic), t_pvalue=float(t.pvalue),
                  wilcoxon_statistic=float(w.statistic), wilcoxon_pvalue=float(w.pvalue))
    return result


def corrected_paired_test(a: Sequence[float], b: Sequence[float], test_fraction: float
                          ) -> dict[str, Any]:
    """Nadeau and Bengio's corrected resampled t-test (Machine Learning 52, 2003) of method
    ``a`` against ``b`` over the folds of repeated cross-validation.

    The folds share training data, so their differences are correlated and the plain paired
    t-test is too confident; the correction inflates the variance of the mean difference
    from ``s^2 / J`` to ``s^2 (1 / J + n_test / n_train)`` (J folds, ``test_fraction`` =
    n_test / n, e.g. 0.2 for 5 folds). Returns ``n``, ``mean_diff``, ``t_statistic`` and the
    two-sided ``pvalue`` (J - 1 degrees of freedom; 1.0 when every difference is zero).

    Example:
        >>> a, b = [0.91, 0.93, 0.92, 0.95], [0.90, 0.90, 0.91, 0.92]
        >>> corrected_paired_test(a, b, 0.2)["pvalue"] > paired_test(a, b)["t_pvalue"]
        True
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    x, y = _paired_arrays(a, b)
    diff = x - y
    n = diff.size
    out: dict[str, Any] = {"n": int(n), "mean_diff": float(diff.mean())}
    var = diff.var(ddof=1)
    if var == 0:
        out.update(t_statistic=0.0 if diff.mean() == 0 else math.copysign(math.inf, diff.mean()),
                   pvalue=1.0 if diff.mean() == 0 else 0.0)
        return out
    t = diff.mean() / math.sqrt(var * (1.0 / n + test_fraction / (1.0 - test_fraction)))
    out.update(t_statistic=float(t), pvalue=float(2 * stats.t.sf(abs(t), df=n - 1)))
    return out
