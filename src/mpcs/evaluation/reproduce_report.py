"""The one report of ``mpcs reproduce``: our numbers beside the paper's, every cell.

:func:`write_reproduction_report` reads the finished cells of each stage of a reproduction
folder (:func:`mpcs.evaluation.report.collect_results` for BreakHis,
:func:`mpcs.evaluation.transfer_report.collect_transfer_results` for BACH and BCC) and writes

* ``OUT/reproduction.csv``: one row per table cell (``table, section, row, column,
  ours_mean, ours_std, folds, paper_mean, paper_std, p_value``), through
  :mod:`mpcs.core.tables`;
* ``OUT/report.md``: the data used (source, SHA-256, count check), the settings that differ
  from the paper's text (and from the authors' code where it differs from the text), then
  Tables 5-9 in the paper's layout with an ``ours`` and a ``paper`` line per method:
  mean±std over folds, and the paired t-test p-value of each method against our baseline
  (over fold x magnification pairs for BreakHis, over folds for BACH and BCC).

Accuracies are in %, F1 / precision / recall in [0, 1], as the paper prints them. A cell
whose stage has not run (or failed) reads ``not run``.

Example:
    >>> write_reproduction_report("repro", stages, state, "repro/data")  # doctest: +SKIP
    PosixPath('repro/report.md')
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mpcs import __version__
from mpcs.config import get_dotted, resolve
from mpcs.core.errors import DataError
from mpcs.core.io import atomic_write_text
from mpcs.core.tables import csv_text
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.engine.runinfo import git_commit
from mpcs.evaluation.paper import (
    AUTHORS_CODE,
    PAPER_BACH,
    PAPER_BACH_FRACTIONS,
    PAPER_BCC,
    PAPER_SETTINGS,
    paper_row,
    paper_std,
)
from mpcs.evaluation.report import collect_results
from mpcs.evaluation.stats import paired_test
from mpcs.evaluation.transfer_report import collect_transfer_results

__all__ = ["BY_DESIGN", "StageInfo", "collect_cells", "settings_differences",
           "write_reproduction_report"]

MAGS = MAGNIFICATIONS
METHODS = ("ImageNet", "MPCS-FP", "MPCS-OP", "MPCS-RP")
BASELINES = ("ImageNet", "Random init")
ENCODERS = {"resnet50_dilated": "ResNet-50 (dilated)", "efficientnet_b2": "EfficientNet-b2"}
CSV_COLUMNS = ["table", "section", "row", "column", "ours_mean", "ours_std", "folds",
               "paper_mean", "paper_std", "p_value"]

#: Differences from the paper's text that hold by design, at every scale.
BY_DESIGN = (
    "Model selection on each fold's validation part, one test pass (the authors' code "
    "selected on the test part).",
    "BreakHis folds: test 20 % of the patients, the rest split train 60 % / validation 20 %; "
    "Table 5's '20 % labels' is 20 % of all images = a third of the training part "
    "(label fraction 0.3333), Table 6's 'all labels' is the whole training part (the paper "
    "trains on 80 % with no validation part).",
    "MPCS pre-training per BreakHis fold uses the fold's training patients only.",
    "BACH and BCC folds are stratified by class at image level (no patient ids); validation "
    "= 25 % of each fold's non-test images.",
    "The MPCS encoders of Tables 7-9 are pre-trained on all of BreakHis (stage "
    "pretrain-breakhis); the paper does not say which BreakHis part it used.",
    "Fine-tuning epochs, schedule, early stopping and augmentation strengths are not in the "
    "paper: at paper scale the preset finetune-paper (50 epochs, patience 10, constant lr).",
    "BACH without stain normalisation (the authors' pipeline used Reinhard).",
)


@dataclass(frozen=True)
class StageInfo:
    """What the report needs of a stage: its key, kind (``experiment``/``pretrain``),
    tables, data set, paper encoder slot, folder and resolved configuration."""

    key: str
    kind: str
    tables: tuple[int, ...]
    dataset: str
    slot: str
    folder: Path
    config: Mapping[str, Any]


# --------------------------------------------------------------------------- cells


def _cell(table: int, section: str, row: str, column: str, ours: Sequence[float] | None,
          scale: float, paper: tuple[float, float] | None, p: float | None = None
          ) -> dict[str, Any]:
    values = [] if ours is None else [float(v) * scale for v in ours]
    return {"table": table, "section": section, "row": row, "column": column,
            "ours_mean": float(np.mean(values)) if values else None,
            "ours_std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "folds": len(values) if ours is not None else 0,
            "paper_mean": None if paper is None else paper[0],
            "paper_std": None if paper is None else paper[1], "p_value": p}


def _p(scores: pd.DataFrame, method: str, base: str | None, keys: list[str],
       metric: str) -> float | None:
    """Paired t-test p-value of ``method`` against ``base`` over matched ``keys``."""
    if base is None or method == base:
        return None
    a = scores[scores["method"] == method].set_index(keys)[metric]
    b = scores[scores["method"] == base].set_index(keys)[metric]
    common = a.index.intersection(b.index)
    if len(common) < 2:
        return None
    p = paired_test(a.loc[common].to_numpy(), b.loc[common].to_numpy())["t_pvalue"]
    return None if p is None or math.isnan(p) else float(p)


def _row_label(method: str, ours: str) -> str:
    """The row's name: the paper's, with ours in brackets where they differ."""
    return method if ours == method else f"{method} (ours: {ours})"


def _ours_name(method: str, present: Sequence[str]) -> str:
    """Our row for a paper row: the paper's ImageNet row is our baseline (random init at
    cpu-tiny)."""
    if method == "ImageNet":
        return next((b for b in BASELINES if b in present), "ImageNet")
    return method


def _results(stage: StageInfo | None, transfer: bool) -> pd.DataFrame:
    if stage is None or not stage.folder.is_dir():
        return pd.DataFrame()
    try:
        return collect_transfer_results(stage.folder) if transfer else \
            collect_results(stage.folder)
    except DataError:  # no finished cell yet
        return pd.DataFrame()


def _breakhis_cells(table: int, fraction: float, stages: Sequence[StageInfo]
                    ) -> list[dict[str, Any]]:
    cells = []
    for slot, label in ENCODERS.items():
        stage = next((s for s in stages if s.dataset == "breakhis" and s.kind == "experiment"
                      and s.slot == slot), None)
        res = _results(stage, transfer=False)
        if not res.empty:
            res = res[np.isclose(res["label_fraction"].astype(float), fraction)]
        present = list(res["method"].unique()) if not res.empty else []
        base = next((b for b in BASELINES if b in present), None)
        for metric, what in (("ila", "image-level accuracy"), ("pla", "patient-level accuracy")):
            section = f"{label}, {what}"
            for method in METHODS:
                ours = _ours_name(method, present)
                g = res[res["method"] == ours] if not res.empty else res
                mean, std = (paper_row(slot, fraction, method, metric),
                             paper_std(slot, fraction, method, metric))
                for mag in MAGS:
                    v = g.loc[g["magnification"] == mag, metric] if not g.empty else None
                    cells.append(_cell(table, section, _row_label(method, ours), mag,
                                       None if v is None or v.empty else v.to_numpy(), 100,
                                       (mean[mag], std[mag]) if mean and std else None))
                per_fold = None if g.empty else \
                    g[g["magnification"].isin(MAGS)].groupby("fold")[metric].mean().to_numpy()
                p = None if g.empty else _p(res, ours, base, ["fold", "magnification"], metric)
                cells.append(_cell(table, section, _row_label(method, ours), "Mean", per_fold, 100,
                                   (mean["Mean"], std["Mean"]) if mean and std else None, p))
    return cells


def _transfer_stage(stages: Sequence[StageInfo], dataset: str) -> pd.DataFrame:
    stage = next((s for s in stages if s.dataset == dataset and s.kind == "experiment"), None)
    return _results(stage, transfer=True)


def _column(res: pd.DataFrame, method: str, key: str) -> np.ndarray | None:
    if res.empty:
        return None
    v = res.loc[res["method"] == method, key]
    return None if v.empty else v.to_numpy()


def _table7_cells(stages: Sequence[StageInfo]) -> list[dict[str, Any]]:
    res = _transfer_stage(stages, "bach")
    if not res.empty:
        res = res[(res["mode"] == "finetune") & np.isclose(res["label_fraction"], 1.0)]
    present = list(res["method"].unique()) if not res.empty else []
    base = next((b for b in BASELINES if b in present), None)
    cells = []
    section = "ResNet-50, all training labels"
    for method in METHODS:
        ours = _ours_name(method, present)
        for column, key, paper_key in (
                ("image-wise val", "val_image_accuracy", "image_val"),
                ("image-wise test", "test_image_accuracy", "image_test"),
                ("patch-wise val", "val_patch_accuracy", "patch_val"),
                ("patch-wise test", "test_patch_accuracy", "patch_test")):
            paper = PAPER_BACH.get(method, {}).get(paper_key)
            p = None if res.empty or paper_key != "image_test" else \
                _p(res, ours, base, ["fold"], key)
            cells.append(_cell(7, section, _row_label(method, ours), column,
                               _column(res, ours, key), 100, paper, p))
    return cells


def _table8_cells(stages: Sequence[StageInfo]) -> list[dict[str, Any]]:
    res = _transfer_stage(stages, "bach")
    if not res.empty:
        res = res[res["mode"] == "finetune"]
    ours_fractions = set() if res.empty else {round(float(f), 4) for f in res["label_fraction"]}
    cells = []
    for fraction in sorted(set(PAPER_BACH_FRACTIONS) | ours_fractions):
        part = res[np.isclose(res["label_fraction"], fraction)] if not res.empty else res
        for metric, key, scale in (("F1", "test_image_f1", 1), ("accuracy",
                                                                "test_image_accuracy", 100)):
            for method in METHODS[1:]:
                paper = PAPER_BACH_FRACTIONS.get(fraction, {}).get(method, {}).get(
                    metric.lower())
                cells.append(_cell(8, "ResNet-50, test part, image-wise", f"{100 * fraction:g}%",
                                   f"{metric} {method}", _column(part, method, key), scale,
                                   paper))
    return cells


def _table9_cells(stages: Sequence[StageInfo]) -> list[dict[str, Any]]:
    res = _transfer_stage(stages, "bcc")
    if not res.empty:
        res = res[np.isclose(res["label_fraction"], res["label_fraction"].max())]
    present = list(res["method"].unique()) if not res.empty else []
    base = next((b for b in BASELINES if b in present), None)
    cells = []
    for method in METHODS:
        ours = _ours_name(method, present)
        for mode, what in (("finetune", "fine-tuned"), ("linear", "linear evaluation")):
            part = res[res["mode"] == mode] if not res.empty else res
            for metric, scale in (("accuracy", 100), ("precision", 1), ("recall", 1)):
                key = f"test_image_{metric}"
                paper = PAPER_BCC.get(method, {}).get(mode, {}).get(metric)
                p = _p(part, ours, base, ["fold"], key) if metric == "accuracy" and \
                    not part.empty else None
                cells.append(_cell(9, "ResNet-50, test part, image-wise",
                                   _row_label(method, ours), f"{what} {metric}",
                                   _column(part, ours, key), scale, paper, p))
    return cells


def collect_cells(tables: Sequence[int], stages: Sequence[StageInfo]) -> pd.DataFrame:
    """Every cell of ``tables``: ours (mean, std, folds) beside the paper's, p-values."""
    cells: list[dict[str, Any]] = []
    for table in sorted(tables):
        if table in (5, 6):
            cells += _breakhis_cells(table, 0.3333 if table == 5 else 1.0, stages)
        elif table == 7:
            cells += _table7_cells(stages)
        elif table == 8:
            cells += _table8_cells(stages)
        elif table == 9:
            cells += _table9_cells(stages)
    return pd.DataFrame(cells, columns=CSV_COLUMNS)


# --------------------------------------------------------------------------- settings


def _compare(where: str, part: str, cfg: Mapping[str, Any], paper: Mapping[str, Any]
             ) -> list[dict[str, Any]]:
    rows = []
    for key, want in paper.items():
        ours = get_dotted(cfg, key)
        code = AUTHORS_CODE.get(key)
        if ours != want or (code is not None and code != want):
            rows.append({"where": where, "setting": f"{part}: {key}", "ours": ours,
                         "paper": want, "authors_code": code})
    return rows


def settings_differences(stages: Sequence[StageInfo]) -> list[dict[str, Any]]:
    """Settings of each stage that differ from the paper's text (:data:`PAPER_SETTINGS`),
    and those where the authors' code differs from the text (:data:`AUTHORS_CODE`)."""
    rows = []
    for s in stages:
        cfg = s.config
        if s.kind == "pretrain":
            rows += _compare(s.key, "pre-training", cfg,
                             PAPER_SETTINGS["pretrain:resnet50_dilated"])
            continue
        rows += _compare(s.key, "grid", cfg, PAPER_SETTINGS[f"grid:{s.dataset}"])
        if cfg["mode"] not in ("finetune", "both"):
            rows.append({"where": s.key, "setting": "grid: mode", "ours": cfg["mode"],
                         "paper": "finetune", "authors_code": None})
        fcfg = resolve(preset=cfg["finetune_preset"], kind="finetune",
                       overrides=cfg["finetune_overrides"])
        rows += _compare(s.key, "fine-tuning", fcfg, PAPER_SETTINGS["finetune"])
        if s.dataset == "breakhis":
            pcfg = resolve(preset=cfg["pretrain_preset"], overrides=cfg["pretrain_overrides"])
            rows += _compare(s.key, "pre-training", pcfg, PAPER_SETTINGS[f"pretrain:{s.slot}"])
    return rows


# --------------------------------------------------------------------------- render


def _fmt(mean: Any, std: Any, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "not run"
    spread = "n/a" if std is None or (isinstance(std, float) and math.isnan(std)) \
        else f"{std:.{digits}f}"
    return f"{mean:.{digits}f}±{spread}"


def _fmt_paper(mean: Any, std: Any, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    return f"{mean:.{digits}f}±{std:.{digits}f}"


def _digits(column: str) -> int:
    return 3 if any(k in column for k in ("F1", "precision", "recall")) else 2


def _fmt_p(p: Any) -> str:
    return "-" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.3g}"


def _render_section(cells: pd.DataFrame, row_label: str) -> list[str]:
    columns = list(dict.fromkeys(cells["column"]))
    has_p = cells["p_value"].notna().any()
    head = f"| {row_label} | | " + " | ".join(columns) + (" | p vs baseline |" if has_p else " |")
    lines = [head, "|" + "---|" * (len(columns) + 2 + has_p)]
    for row, g in cells.groupby("row", sort=False):
        g = g.set_index("column")
        ours = [_fmt(g.at[c, "ours_mean"], g.at[c, "ours_std"], _digits(c)) for c in columns]
        paper = [_fmt_paper(g.at[c, "paper_mean"], g.at[c, "paper_std"], _digits(c))
                 for c in columns]
        ps = [(c, v) for c, v in g["p_value"].items() if v is not None and not pd.isna(v)]
        p = _fmt_p(ps[0][1]) if len(ps) == 1 else ", ".join(
            f"{_fmt_p(v)} ({c})" for c, v in ps) or "-"
        lines.append(f"| {row} | ours | " + " | ".join(ours) +
                     (f" | {p} |" if has_p else " |"))
        lines.append("| | paper | " + " | ".join(paper) + (" | |" if has_p else " |"))
    return lines


TITLES = {
    5: "Table 5: BreakHis, 20 % of the images labelled (fine-tuning)",
    6: "Table 6: BreakHis, all training labels (fine-tuning)",
    7: "Table 7: BACH, image- and patch-wise accuracy (ResNet-50)",
    8: "Table 8: BACH, F1 and accuracy over label fractions (ResNet-50)",
    9: "Table 9: UCSB BCC, fine-tuned and linear evaluation (ResNet-50)",
}
ROW_LABELS = {5: "method", 6: "method", 7: "method", 8: "labels", 9: "method"}


def _data_lines(state: Mapping[str, Any], data_root: Path, names: Sequence[str]) -> list[str]:
    folder = data_root / "synthetic" if state["source"] == "synthetic" else data_root
    lines = []
    for name in names:
        try:
            rec = json.loads((folder / f"{name}.verified.json").read_text())
        except (OSError, ValueError):
            lines.append(f"- {name}: no verification record in {folder}")
            continue
        check = ("counts as expected" if rec["ok"] else
                 f"{len(rec['differences'])} count(s) differ, accepted with "
                 "--allow-differences")
        lines.append(f"- {name}: {rec['root']} from {rec['source']} (SHA-256 "
                     f"{rec['sha256']}); {check}")
    return lines


def _settings_lines(stages: Sequence[StageInfo]) -> list[str]:
    rows = settings_differences(stages)
    lines = ["| where | setting | ours | paper's text | authors' code |", "|---|---|---|---|---|"]
    lines += [f"| {r['where']} | {r['setting']} | {r['ours']} | {r['paper']} | "
              f"{'-' if r['authors_code'] is None else r['authors_code']} |" for r in rows]
    return lines + [""] + [f"- {note}" for note in BY_DESIGN]


def format_reproduction_report(cells: pd.DataFrame, stages: Sequence[StageInfo],
                               state: Mapping[str, Any], data_root: Path) -> str:
    """The Markdown text of ``report.md`` (module docstring)."""
    tables = sorted(state["tables"])
    tiny = state["scale"] == "cpu-tiny"
    lines = [f"# Reproduction of Chhipa et al., WACV 2023: Tables {', '.join(map(str, tables))}",
             "", f"Scale: {state['scale']}; data: {state['source']}; mpcs {__version__}, "
             f"commit {git_commit() or 'unknown'}.", ""]
    if tiny:
        lines += ["**cpu-tiny**: tiny encoder, few epochs, few folds"
                  + (", synthetic data" if state["source"] == "synthetic" else "")
                  + ". These numbers show that the whole chain runs; they are not comparable "
                  "with the paper's. The paper's ResNet-50 rows stand beside the tiny encoder; "
                  "EfficientNet-b2 is not run at this scale.", ""]
    names = [n for n in ("breakhis", "bach", "bcc") if any(s.dataset == n for s in stages)]
    lines += ["## Data", "", *_data_lines(state, data_root, names), "",
              "## Settings that differ from the paper's text", "", *_settings_lines(stages), "",
              "Cells: mean±std over folds (std with ddof=1; ±n/a with one fold). `ours` rows: "
              "our runs; `paper` rows: the paper's tables. p: paired t-test of the row's "
              "method against our baseline (ImageNet at paper scale, random init at cpu-tiny; "
              "over fold x magnification pairs on BreakHis, over folds on BACH and BCC; on "
              "the Mean / image-wise test accuracy). `not run`: that stage has no finished "
              "cell.", ""]
    for table in tables:
        part = cells[cells["table"] == table]
        lines += [f"## {TITLES[table]}", ""]
        for section, g in part.groupby("section", sort=False):
            lines += [f"### {section}", "", *_render_section(g, ROW_LABELS[table]), ""]
    return "\n".join(lines)


def write_reproduction_report(out: str | Path, stages: Sequence[StageInfo],
                              state: Mapping[str, Any], data_root: str | Path) -> Path:
    """Write ``OUT/reproduction.csv`` and ``OUT/report.md``; returns the report's path."""
    out = Path(out)
    cells = collect_cells(state["tables"], stages)
    csv_path = out / "reproduction.csv"
    atomic_write_text(csv_path, csv_text(cells, csv_path))
    report = out / "report.md"
    atomic_write_text(report, format_reproduction_report(cells, stages, state,
                                                         Path(data_root)))
    return report
