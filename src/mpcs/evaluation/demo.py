"""``mpcs demo``: the paper's protocol, reduced, on the embedded synthetic data, on a CPU.

1. Generate the synthetic BreakHis-layout data set (kept in ``OUT/data`` and reused).
2. Run the experiment grid of preset ``demo`` in ``OUT/experiment``: 5 patient-level folds;
   in each, pre-train MPCS-FP, MPCS-OP and MPCS-RP on the fold's training patients only,
   then linear-evaluate each of them and the un-pre-trained (random init) encoder at every
   magnification with 20 % of the training labels, selecting on the fold's validation
   patients and testing once on its test patients.
3. ``mpcs report``: ``OUT/experiment/results.csv``, ``report.md`` and ``report.html`` (tables
   of ILA and PLA, mean±std over folds, p-values against the baseline; curves, t-SNE and
   Grad-CAM pictures).
4. Print the ILA and PLA tables, whether MPCS beat the baseline, and the wall time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from mpcs.config import resolve
from mpcs.core.io import atomic_write_text
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
from mpcs.evaluation.experiment import run_experiment
from mpcs.evaluation.linear_probe import fit_linear_probe
from mpcs.evaluation.report import collect_results, write_report
from mpcs.evaluation.stats import format_mean_std
from mpcs.metrics import image_level_accuracy, patient_level_accuracy

# 40 patients (20 benign, 20 malignant) with 4 to 12 samples each (4 images per sample).
DEMO_DATA = SynthConfig(patients=40, samples_per_patient=8, sample_spread=0.5)
DEMO_PRESET = "demo"


def split_patients(manifest: pd.DataFrame, test_fraction: float, seed: int
                   ) -> tuple[list[str], list[str]]:
    """Patient-level split stratified by class: (train patients, held-out patients)."""
    patients = manifest.groupby("patient_id")["label"].first()
    train, test = train_test_split(patients.index.to_numpy(), test_size=test_fraction,
                                   stratify=patients.to_numpy(), random_state=seed)
    return sorted(train), sorted(test)


def probe_table(name: str, features: np.ndarray, manifest: pd.DataFrame,
                train_patients: Sequence[str], seed: int) -> list[dict[str, Any]]:
    """One logistic-regression probe per magnification, trained on ``train_patients``;
    ILA/PLA on the other patients. Used by quick comparisons (``mpcs compare-methods``)."""
    rows = []
    is_train = manifest["patient_id"].isin(set(train_patients)).to_numpy()
    y = (manifest["label"] == "malignant").astype(int).to_numpy()
    for mag in MAGNIFICATIONS:
        at_mag = (manifest["magnification"] == mag).to_numpy()
        tr, te = at_mag & is_train, at_mag & ~is_train
        probe = fit_linear_probe(features[tr], y[tr], manifest["patient_id"].to_numpy()[tr],
                                 seed=seed)
        pred = probe.predict(features[te])
        rows.append({"encoder": name, "magnification": mag,
                     "ila": image_level_accuracy(y[te], pred),
                     "pla": patient_level_accuracy(y[te], pred,
                                                   manifest["patient_id"].to_numpy()[te]),
                     "test_images": int(te.sum())})
    return rows


def _method_order(methods: Sequence[str]) -> list[str]:
    baselines = [m for m in methods if m in ("Random init", "ImageNet")]
    return baselines + sorted(m for m in methods if m not in baselines)


def summary_table(results: pd.DataFrame, metric: str) -> str:
    """Markdown: one row per method, ``metric`` mean±std over folds per magnification and
    the mean over magnifications (averaged within each fold first)."""
    mags = [m for m in MAGNIFICATIONS if m in set(results["magnification"])]
    lines = [f"| method | {' | '.join(mags)} | Mean |", "|" + "---|" * (len(mags) + 2)]
    for method in _method_order(list(results["method"].unique())):
        g = results[results["method"] == method]
        cells = []
        for mag in mags:
            v = g.loc[g["magnification"] == mag, metric]
            cells.append(format_mean_std(v.mean(), v.std(ddof=1)))
        per_fold = g.groupby("fold")[metric].mean()
        cells.append(format_mean_std(per_fold.mean(), per_fold.std(ddof=1)))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(results: pd.DataFrame) -> str:
    """One line per MPCS variant: its mean ILA/PLA against the baseline's, and at how many
    (fold, magnification) cells it was better."""
    methods = _method_order(list(results["method"].unique()))
    base = methods[0]
    keyed = results.set_index(["method", "fold", "magnification"]).sort_index()
    lines = []
    for method in methods[1:]:
        parts = []
        for metric in ("ila", "pla"):
            a, b = keyed.loc[method, metric], keyed.loc[base, metric]
            common = a.index.intersection(b.index)
            diff = 100 * (a.loc[common].mean() - b.loc[common].mean())
            wins = int((a.loc[common] > b.loc[common]).sum())
            parts.append(f"{metric.upper()} {100 * a.loc[common].mean():.1f} vs "
                         f"{100 * b.loc[common].mean():.1f} ({diff:+.1f} points, better in "
                         f"{wins}/{len(common)} fold x magnification cells)")
        lines.append(f"{method} vs {base}: " + "; ".join(parts))
    return "\n".join(lines)


def run_demo(out: str | Path, synth: SynthConfig | None = None, overrides: Sequence[str] = (),
             resume: bool = False, figures: bool = True, progress: bool = True
             ) -> pd.DataFrame:
    """Run the demo into ``out``; returns the per (method, fold, magnification) results.

    ``overrides`` are ``key=value`` settings of the ``demo`` experiment preset, e.g.
    ``folds=3`` or ``pretrain_overrides=[train.epochs=5]``.
    """
    out = Path(out)
    t_start = time.perf_counter()
    synth = synth or DEMO_DATA
    # settings first: a mistyped --set stops the demo before it writes any data
    cfg = resolve(preset=DEMO_PRESET, kind="experiment", overrides=list(overrides))
    root = write_breakhis(out / "data", synth, progress=progress)
    exp = out / "experiment"
    print(f"[demo] data: {root}; {cfg['folds']} patient-level folds, pre-training "
          f"{', '.join(cfg['methods'])} pairs per fold, linear evaluation at "
          f"{', '.join(f'{f:g}' for f in cfg['label_fractions'])} of the training labels",
          flush=True)
    t0 = time.perf_counter()
    cells = run_experiment(cfg, root, exp, resume=resume, progress=progress)
    t_grid = time.perf_counter() - t0
    failed = cells[cells["status"].str.startswith("failed")]
    if len(failed):
        print(f"[demo] {len(failed)} cell(s) failed; see {exp / 'failures.jsonl'}", flush=True)
    write_report(exp, figures=figures)
    results = collect_results(exp)
    wall = time.perf_counter() - t_start
    text = (f"## Image-level accuracy (ILA, %)\n\n{summary_table(results, 'ila')}\n\n"
            f"## Patient-level accuracy (PLA, %)\n\n{summary_table(results, 'pla')}\n\n"
            f"{verdict(results)}\n")
    atomic_write_text(out / "results.md", (
        "# mpcs demo: the reduced protocol on synthetic data\n\n"
        f"Mean±std over {results['fold'].nunique()} patient-level folds; linear evaluation "
        "on each fold's test patients. Full report: experiment/report.md (and .html).\n\n"
        f"{text}\nWall time {wall:.0f} s (grid {t_grid:.0f} s).\n"))
    print("\n" + text + f"\n[demo] wall time {wall:.0f} s; report in {exp / 'report.md'} "
          f"and {exp / 'report.html'}", flush=True)
    return results
