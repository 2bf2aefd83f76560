"""The report of a BACH / UCSB BCC transfer experiment (``mpcs report`` on a folder made by
:mod:`mpcs.evaluation.transfer`): every metric recomputed from the saved patch and image
predictions, in the layouts of the paper's Tables 7, 8 and 9, with the paper's ResNet-50
numbers (:mod:`mpcs.evaluation.paper`) beside ours.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mpcs.core.errors import DataError
from mpcs.core.io import atomic_write_text
from mpcs.core.tables import csv_text
from mpcs.core.vocab import BASELINE_LABELS
from mpcs.data.datasets import DATASETS, patch_datasets
from mpcs.evaluation.html import escape_markdown
from mpcs.evaluation.paper import PAPER_BACH, PAPER_BCC
from mpcs.evaluation.stats import format_mean_std
from mpcs.evaluation.transfer import cell_scores


def paper_reference(dataset: str, mode: str, method: str) -> tuple[float, float | None] | None:
    """The paper's (image-wise test accuracy, patch-wise test accuracy or None) of a method
    at 100 % of the labels (Tables 7 and 9), or None where the paper has no number."""
    if dataset == "bach" and mode == "finetune" and method in PAPER_BACH:
        row = PAPER_BACH[method]
        return row["image_test"][0], row["patch_test"][0]
    if dataset == "bcc" and mode in PAPER_BCC.get(method, {}):
        return PAPER_BCC[method][mode]["accuracy"][0], None
    return None


RESULT_KEYS = ["dataset", "mode", "method", "encoder", "fold", "label_fraction"]


def collect_transfer_results(exp_dir: str | Path) -> pd.DataFrame:
    """One row per finished cell: :data:`RESULT_KEYS`, then ``<part>_<level>_<metric>``
    recomputed from the saved predictions, and the counts."""
    exp_dir = Path(exp_dir)
    rows = []
    for meta_path in sorted(exp_dir.rglob("cell.json")):
        meta = json.loads(meta_path.read_text())
        ds = patch_datasets().get(meta.get("dataset", ""))
        if ds is None or not (meta_path.parent / "test_images.csv").exists():
            continue
        rows.append({**{k: meta[k] for k in RESULT_KEYS}, **cell_scores(meta_path.parent, ds)})
    if not rows:
        raise DataError(f"{exp_dir}: no finished transfer cell (cell.json with test_images.csv) "
                        "found; run `mpcs experiment` first")
    return pd.DataFrame(rows)


def _ms(values: pd.Series, percent: bool) -> str:
    if not len(values):
        return "-"
    if percent:
        return format_mean_std(values.mean(), values.std(ddof=1))
    return format_mean_std(values.mean(), values.std(ddof=1), percent=False)


def _methods(group: pd.DataFrame) -> list[str]:
    names = list(dict.fromkeys(group["method"]))
    base = [n for n in BASELINE_LABELS.values() if n in names]
    return base + sorted(n for n in names if n not in base)


def _table7(group: pd.DataFrame, dataset: str, mode: str, encoder: str) -> list[str]:
    fraction = group["label_fraction"].max()
    g = group[group["label_fraction"] == fraction]
    # the paper's numbers are ResNet-50 ones; other encoders get no reference column values
    resnet50 = encoder.startswith("resnet50")
    lines = [f"Label fraction {fraction:g}. Accuracy in %, F1 in [0, 1].", "",
             "| method | image-wise val | image-wise test | patch-wise val | patch-wise test "
             "| image-wise test F1 | paper (ResNet-50) image / patch test |",
             "|---|---|---|---|---|---|---|"]
    for method in _methods(g):
        m = g[g["method"] == method]
        ref = paper_reference(dataset, mode, method) if resnet50 else None
        ref_text = ("-" if ref is None else
                    f"{ref[0]:.2f} / {ref[1]:.2f}" if ref[1] is not None else f"{ref[0]:.2f}")
        lines.append(f"| {escape_markdown(method)} | " + " | ".join([
            _ms(m["val_image_accuracy"], True), _ms(m["test_image_accuracy"], True),
            _ms(m["val_patch_accuracy"], True), _ms(m["test_patch_accuracy"], True),
            _ms(m["test_image_f1"], False), ref_text]) + " |")
    return lines


def _table8(group: pd.DataFrame) -> list[str]:
    methods = _methods(group)
    shown = [escape_markdown(m) for m in methods]
    lines = ["Test part, image-wise (majority vote). F1 in [0, 1], accuracy in %.", "",
             "| labels from the training part | " + " | ".join(f"F1 {m}" for m in shown)
             + " | " + " | ".join(f"accuracy {m}" for m in shown) + " |",
             "|---|" + "---|" * (2 * len(methods))]
    for fraction, g in group.groupby("label_fraction", sort=True):
        f1 = [_ms(g.loc[g["method"] == m, "test_image_f1"], False) for m in methods]
        acc = [_ms(g.loc[g["method"] == m, "test_image_accuracy"], True) for m in methods]
        lines.append(f"| {100 * fraction:g}% | " + " | ".join(f1 + acc) + " |")
    return lines


def _table9(group: pd.DataFrame, positive: str | None) -> list[str]:
    fraction = group["label_fraction"].max()
    g = group[group["label_fraction"] == fraction]
    modes = [m for m in ("finetune", "linear") if m in set(g["mode"])]
    what = f"positive class {positive}" if positive else "macro averages"
    lines = [f"Test part, image-wise (majority vote), label fraction {fraction:g}; accuracy "
             f"in %, precision and recall in [0, 1] ({what}).", "",
             "| method | " + " | ".join(f"{m} {k}" for m in modes
                                        for k in ("accuracy", "precision", "recall")) + " |",
             "|---|" + "---|" * (3 * len(modes))]
    for method in _methods(g):
        cells = []
        for mode in modes:
            m = g[(g["method"] == method) & (g["mode"] == mode)]
            cells += [_ms(m["test_image_accuracy"], True), _ms(m["test_image_precision"], False),
                      _ms(m["test_image_recall"], False)]
        lines.append(f"| {escape_markdown(method)} | " + " | ".join(cells) + " |")
    return lines


def format_transfer_report(results: pd.DataFrame, title: str = "mpcs transfer report") -> str:
    """Markdown report: Table-7, Table-8 (several label fractions) and Table-9 layouts per
    data set and encoder, mean±std over folds (std with ddof=1)."""
    lines = [f"# {title}", "",
             f"{len(results)} finished cells from {results['fold'].nunique()} fold(s); folds "
             "are stratified by class at image level. Image-wise = majority vote over an "
             "image's patches (ties: highest mean probability). mean±std over folds.", ""]
    for (dataset, encoder), group in results.groupby(["dataset", "encoder"], sort=True):
        positive = DATASETS[dataset].positive
        shown = escape_markdown(encoder)
        for mode, g in group.groupby("mode", sort=True):
            lines += [f"## {dataset}, {shown}, {mode}: image- and patch-wise accuracy "
                      "(Table 7 layout)", "", *_table7(g, dataset, mode, encoder), ""]
            if g["label_fraction"].nunique() > 1:
                lines += [f"## {dataset}, {shown}, {mode}: label fractions (Table 8 layout)",
                          "", *_table8(g), ""]
        lines += [f"## {dataset}, {shown}: accuracy, precision, recall (Table 9 layout)", "",
                  *_table9(group, positive), ""]
    return "\n".join(lines)


def write_transfer_report(exp_dir: str | Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``report.md`` of a transfer experiment; returns their paths."""
    exp_dir = Path(exp_dir)
    results = collect_transfer_results(exp_dir)
    csv_path, md_path = exp_dir / "results.csv", exp_dir / "report.md"
    atomic_write_text(csv_path, csv_text(results, csv_path))
    atomic_write_text(md_path, format_transfer_report(results))
    return csv_path, md_path
