"""``mpcs report DIR``: results table and Table-5/6-style report of an experiment folder.

Reads every finished cell of ``mpcs experiment`` (``cell.json`` + ``test_predictions.csv``),
recomputes all metrics from the saved predictions, and writes

* ``DIR/results.csv``: one row per fold x method x encoder x magnification x label fraction
  (columns ``dataset, mode, method, encoder, fold, magnification, label_fraction, ila, pla,
  precision, recall, f1, roc_auc, n_images, n_patients``);
* ``DIR/report.md``: per encoder, mode and label fraction, ILA and PLA as mean±std over folds
  per magnification and their mean, the paired t-test p-value of each MPCS variant against
  the baseline over (fold, magnification) pairs, and the paper's numbers where the setting
  matches. Names (dataset, mode, method, encoder) enter it through
  :func:`mpcs.evaluation.html.escape_markdown`, so a name is always shown as text.

CSV files are written and read through :mod:`mpcs.core.tables` (a text cell that starts with
``= + - @`` is written with an apostrophe in front and read back without it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from mpcs.core.errors import DataError
from mpcs.core.io import atomic_write_text
from mpcs.core.tables import csv_text, read_csv
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.evaluation.figures import finish_report
from mpcs.evaluation.html import escape_markdown
from mpcs.evaluation.paper import paper_row
from mpcs.evaluation.stats import format_mean_std, paired_test
from mpcs.evaluation.transfer_report import write_transfer_report
from mpcs.metrics import BINARY_METRICS, classification_metrics

MAGS = MAGNIFICATIONS
KEYS = ["dataset", "mode", "method", "encoder", "fold", "magnification", "label_fraction"]
METRICS = list(BINARY_METRICS)


def _cell_rows(cell_json: Path) -> list[dict]:
    meta = json.loads(cell_json.read_text())
    preds = read_csv(cell_json.parent / "test_predictions.csv")
    rows = []
    for mag, g in preds.groupby("magnification", sort=False):
        y = (g["label"] == "malignant").astype(int).to_numpy()
        m = classification_metrics(y, g["probability"].to_numpy(), g["patient_id"].to_numpy())
        rows.append({**{k: meta[k] for k in KEYS if k != "magnification"},
                     "magnification": str(mag), **m})
    return rows


def collect_results(exp_dir: str | Path) -> pd.DataFrame:
    """All finished cells of an experiment folder as one table (see module docstring)."""
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise DataError(f"{exp_dir}: folder not found" if not exp_dir.exists() else
                        f"{exp_dir}: not a folder; give an experiment folder")
    cells = sorted(p for p in exp_dir.rglob("cell.json")
                   if (p.parent / "test_predictions.csv").exists())
    if not cells:
        raise DataError(f"{exp_dir}: no finished experiment cell (cell.json with "
                        "test_predictions.csv) found; run `mpcs experiment` first")
    rows = [r for c in cells for r in _cell_rows(c)]
    return pd.DataFrame(rows, columns=[*KEYS, *METRICS, "n_images", "n_patients"])


def _method_order(methods: list[str], baseline: str | None) -> list[str]:
    rest = sorted(m for m in methods if m != baseline)
    return ([baseline] if baseline else []) + rest


def _baseline(methods: list[str]) -> str | None:
    for name in ("ImageNet", "Random init"):
        if name in methods:
            return name
    return None


def _table(group: pd.DataFrame, metric: str, encoder: str, fraction: float) -> list[str]:
    mags = [m for m in MAGS if m in set(group["magnification"])]
    methods = list(group["method"].unique())
    base = _baseline(methods)
    header = (f"| method | {' | '.join(mags)} | Mean | p vs {escape_markdown(base or '-')} "
              "| paper Mean |")
    lines = [header, "|" + "---|" * (len(mags) + 4)]
    for method in _method_order(methods, base):
        g = group[group["method"] == method]
        cells = []
        for mag in mags:
            v = g.loc[g["magnification"] == mag, metric]
            cells.append(format_mean_std(v.mean(), v.std(ddof=1)) if len(v) else "-")
        per_fold = g[g["magnification"].isin(mags)].groupby("fold")[metric].mean()
        cells.append(format_mean_std(per_fold.mean(), per_fold.std(ddof=1)))
        cells.append(_p_value(group, method, base, metric, mags))
        paper = paper_row(encoder, fraction, method, metric)
        cells.append(f"{paper['Mean']:.2f}" if paper else "-")
        lines.append(f"| {escape_markdown(method)} | " + " | ".join(cells) + " |")
    return lines


def _p_value(group: pd.DataFrame, method: str, base: str | None, metric: str,
             mags: list[str]) -> str:
    if base is None or method == base:
        return "-"
    a = group[group["method"] == method].set_index(["fold", "magnification"])[metric]
    b = group[group["method"] == base].set_index(["fold", "magnification"])[metric]
    common = a.index.intersection(b.index)
    if len(common) < 2:
        return "n/a"
    test = paired_test(a.loc[common].to_numpy(), b.loc[common].to_numpy())
    p = test["t_pvalue"]
    return "n/a" if p is None or np.isnan(p) else f"{p:.3g}"


def format_report(results: pd.DataFrame, title: str = "mpcs experiment report") -> str:
    lines = [f"# {title}", ""]
    n_folds = results["fold"].nunique()
    lines += [f"{len(results)} result rows from {n_folds} fold(s). Accuracies in %, mean±std "
              "over folds (std with ddof=1); `Mean` averages the magnifications within each "
              "fold first. p: paired t-test against the baseline over (fold, magnification) "
              "pairs. `paper Mean`: the paper's Table 5 (20 % of images labelled) or Table 6 "
              "value for the same encoder, method and metric.", ""]
    for (dataset, mode, encoder, fraction), group in results.groupby(
            ["dataset", "mode", "encoder", "label_fraction"], sort=True):
        for metric, name in (("ila", "Image-level accuracy"), ("pla", "Patient-level accuracy")):
            names = ", ".join(escape_markdown(x) for x in (dataset, mode, encoder))
            lines += [f"## {names}, {fraction:g} of the training labels: {name}", ""]
            lines += _table(group, metric, encoder, fraction)
            lines.append("")
    return "\n".join(lines)


def collect_cross_magnification(exp_dir: Path) -> pd.DataFrame:
    """Rows of every cell's ``cross_magnification.csv`` with the cell's method and encoder."""
    frames = []
    for path in sorted(exp_dir.rglob("cross_magnification.csv")):
        meta_path = path.parent / "cell.json"
        if not meta_path.exists():
            continue
        meta = json.loads(meta_path.read_text())
        table = read_csv(path)
        for key in ("method", "encoder", "fold", "label_fraction", "mode"):
            table[key] = meta[key]
        frames.append(table)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def format_cross_magnification(cross: pd.DataFrame) -> str:
    """4x4 tables (train magnification x test magnification), ILA mean±std over folds."""
    lines = ["## Cross-magnification evaluation (image-level accuracy)", "",
             "Rows: magnification trained at; columns: magnification tested at.", ""]
    for (mode, encoder, fraction, method), g in cross.groupby(
            ["mode", "encoder", "label_fraction", "method"], sort=True):
        names = ", ".join(escape_markdown(x) for x in (method, mode, encoder))
        lines += [f"### {names}, {fraction:g} of the training labels", "",
                  "| trained at | " + " | ".join(MAGS) + " |", "|" + "---|" * (len(MAGS) + 1)]
        for train_mag in MAGS:
            row = g[g["train_magnification"] == train_mag]
            if row.empty:
                continue
            cells = []
            for test_mag in MAGS:
                v = row.loc[row["test_magnification"] == test_mag, "ila"]
                cells.append(format_mean_std(v.mean(), v.std(ddof=1)) if len(v) else "-")
            lines.append(f"| {train_mag} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def write_report(exp_dir: str | Path, figures: bool = True) -> tuple[Path, Path]:
    """Write ``results.csv``, ``report.md`` and the self-contained ``report.html`` into
    ``exp_dir``; returns the paths of the first two. With ``figures``, pictures (training
    curves, t-SNE, Grad-CAM; :mod:`mpcs.evaluation.figures`) go to ``exp_dir/figures`` and
    into both reports; a picture that fails is a logged warning, never a lost table."""
    exp_dir = Path(exp_dir)
    if (exp_dir / "transfer.json").is_file():  # BACH / BCC: mpcs.evaluation.transfer
        csv_path, md_path = write_transfer_report(exp_dir)
        finish_report(exp_dir, md_path, figures=figures)
        return csv_path, md_path
    results = collect_results(exp_dir)
    csv_path, md_path = exp_dir / "results.csv", exp_dir / "report.md"
    atomic_write_text(csv_path, csv_text(results, csv_path))
    text = format_report(results)
    cross = collect_cross_magnification(exp_dir)
    if not cross.empty:
        atomic_write_text(exp_dir / "cross_magnification.csv", csv_text(cross))
        text += "\n" + format_cross_magnification(cross)
    atomic_write_text(md_path, text)
    finish_report(exp_dir, md_path, figures=figures)
    return csv_path, md_path
