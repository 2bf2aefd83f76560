"""Training curves as PNGs, from the runs' ``metrics.jsonl`` logs.

* A pre-training run (``mpcs pretrain``; lines ``epoch, step, loss, lr, images_per_s,
  seconds, skipped_steps`` and, with the kNN monitor, ``knn_acc``/``knn_pla``): contrastive
  loss, kNN validation accuracy when logged, and learning rate per epoch.
* A fine-tuning or linear-evaluation run (``mpcs finetune`` / ``linear-eval`` / an experiment
  cell; lines ``epoch, train_loss, val_loss, val_ila, val_pla, lr, seconds, improved``):
  train and validation loss, validation ILA and PLA, learning rate per epoch, the selected
  epoch (``test_metrics.json``) marked.
* An experiment folder (``mpcs experiment``): one figure per run plus the combined
  ``pretrain_loss.png`` (NT-Xent loss per epoch of each pair strategy, one thin line per
  fold and the mean over folds) and ``finetune_curves.png`` (train loss and validation ILA
  per epoch of each method, mean over its cells).

Example:
    >>> plot_curves("runs/exp", "runs/exp/curves")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mpcs.core.errors import DataError
from mpcs.core.io import atomic_path
from mpcs.core.vocab import strategy_label

__all__ = [
    "experiment_figures",
    "plot_curves",
    "plot_metrics",
    "plot_run",
    "read_metrics",
    "run_kind",
]

log = logging.getLogger(__name__)

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf")


def read_metrics(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The epochs of a ``metrics.jsonl`` (a run folder or the file) as a DataFrame.

    Blank and unparsable lines (an interrupted write) are skipped with a warning.

    Raises:
        DataError: the file is missing or holds no epoch.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no metrics.jsonl (is this a pre-training or fine-tuning run "
                        "folder?)")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            log.warning("%s:%d: unreadable line skipped", path, n)
    if not records:
        raise DataError(f"{path}: no epoch logged yet")
    df = pd.DataFrame(records)
    if "epoch" not in df.columns:
        df["epoch"] = np.arange(1, len(df) + 1)
    return df.sort_values("epoch", kind="stable").reset_index(drop=True)


def run_kind(metrics: pd.DataFrame) -> str:
    """``"pretrain"`` (a ``loss`` column) or ``"finetune"`` (``train_loss``)."""
    if "train_loss" in metrics.columns:
        return "finetune"
    if "loss" in metrics.columns:
        return "pretrain"
    raise DataError(f"metrics with columns {list(metrics.columns)}: neither a pre-training "
                    "(loss) nor a fine-tuning (train_loss) log")


# --------------------------------------------------------------------------- drawing


def _figure(n_axes: int, width: float = 4.2, height: float = 3.2) -> tuple[Any, list[Any]]:
    fig = Figure(figsize=(width * n_axes, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, axes


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp)
    return path


def _selected_epoch(run_dir: Path) -> int | None:
    try:
        return int(json.loads((run_dir / "test_metrics.json").read_text())["selected_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plot_run(run_dir: str | os.PathLike[str], out_png: str | os.PathLike[str],
             title: str | None = None) -> Path:
    """One figure of one run (pre-training or fine-tuning, see the module docstring).

    Raises:
        DataError: no usable ``metrics.jsonl`` in ``run_dir``.
    """
    run_dir = Path(run_dir)
    m = read_metrics(run_dir)
    kind = run_kind(m)
    title = title or run_dir.name
    ep = m["epoch"].to_numpy()
    if kind == "pretrain":
        knn = [c for c in ("knn_acc", "knn_pla") if c in m and m[c].notna().any()]
        fig, axes = _figure(3 if knn else 2)
        ax_loss, ax_lr = axes[0], axes[-1]
        ax_loss.plot(ep, m["loss"], marker="o", ms=3)
        ax_loss.set_ylabel("NT-Xent loss")
        ax_loss.set_title(f"{title}: pre-training loss", fontsize=9)
        if knn:  # the kNN monitor (mpcs.engine.knn_monitor) on validation patients
            for col, name in zip(knn, ("kNN ILA", "kNN PLA"), strict=False):
                ok = m[col].notna()
                axes[1].plot(ep[ok.to_numpy()], 100 * m.loc[ok, col].astype(float),
                             marker="o", ms=3, label=name)
            axes[1].set_ylabel("accuracy (%)")
            axes[1].set_title(f"{title}: kNN monitor (validation)", fontsize=9)
            axes[1].legend(fontsize=8)
    else:
        fig, (ax_loss, ax_acc, ax_lr) = _figure(3)
        ax_loss.plot(ep, m["train_loss"], marker="o", ms=3, label="train")
        if "val_loss" in m:
            ax_loss.plot(ep, m["val_loss"], marker="o", ms=3, label="validation")
        ax_loss.set_ylabel("cross-entropy")
        ax_loss.set_title(f"{title}: loss", fontsize=9)
        ax_loss.legend(fontsize=8)
        for col, name in (("val_ila", "val ILA"), ("val_pla", "val PLA")):
            if col in m:
                ax_acc.plot(ep, 100 * m[col].astype(float), marker="o", ms=3, label=name)
        ax_acc.set_ylabel("accuracy (%)")
        ax_acc.set_title(f"{title}: validation accuracy", fontsize=9)
        selected = _selected_epoch(run_dir)
        if selected is not None:
            for ax in (ax_loss, ax_acc):
                ax.axvline(selected, color="k", ls="--", lw=0.8)
            ax_acc.plot([], [], color="k", ls="--", lw=0.8, label=f"selected (epoch {selected})")
        ax_acc.legend(fontsize=8)
    if "lr" in m:
        ax_lr.plot(ep, m["lr"], marker="o", ms=3, color="#555555")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title(f"{title}: learning rate (epoch start)" if kind == "finetune"
                    else f"{title}: learning rate", fontsize=9)
    return _save(fig, Path(out_png))


# --------------------------------------------------------------------------- experiments


def _runs(root: Path) -> list[Path]:
    """Run folders under ``root`` (those holding a ``metrics.jsonl``), sorted."""
    return sorted(p.parent for p in root.rglob("metrics.jsonl"))


def _fold_of(path: Path) -> int | None:
    for part in path.parts:
        m = re.fullmatch(r"fold(\d+)", part)
        if m:
            return int(m.group(1))
    return None


def _method_of(run: Path, root: Path) -> str:
    """The method of an experiment cell: ``cell.json``, else the folder after ``fold<k>``."""
    try:
        return str(json.loads((run / "cell.json").read_text())["method"])
    except (OSError, ValueError, KeyError):
        parts = run.relative_to(root).parts
        return parts[1] if len(parts) > 1 else run.name


def _mean_curve(curves: Sequence[pd.Series]) -> pd.Series:
    """Per-epoch mean of curves of possibly different lengths (early stopping)."""
    return pd.concat(curves, axis=1).mean(axis=1)


def pretrain_figure(exp_dir: str | os.PathLike[str], out_png: str | os.PathLike[str]
                    ) -> Path | None:
    """Pre-training loss per epoch of each strategy of an experiment: thin lines per fold,
    a thick line for the mean over folds. None when no pre-training run is logged."""
    root = Path(exp_dir)
    groups: dict[str, list[tuple[int | None, pd.Series]]] = {}
    runs = sorted(root.glob("fold*/pretrain-*"))
    if not runs:  # not an experiment: any pre-training run below (e.g. `mpcs demo`'s)
        runs = [r for r in _runs(root) if r.name.startswith("pretrain")]
    for run in runs:
        try:
            m = read_metrics(run)
            if run_kind(m) != "pretrain":
                continue
        except DataError:
            continue
        strategy = run.name.removeprefix("pretrain-")
        label = strategy_label(strategy)
        groups.setdefault(label, []).append((_fold_of(run), m.set_index("epoch")["loss"]))
    if not groups:
        return None
    fig, (ax,) = _figure(1, width=6.0, height=3.8)
    for colour, (label, curves) in zip(_PALETTE * 3, sorted(groups.items()), strict=False):
        for _, s in curves:
            ax.plot(s.index, s.to_numpy(), color=colour, alpha=0.3, lw=1)
        mean = _mean_curve([s for _, s in curves])
        ax.plot(mean.index, mean.to_numpy(), color=colour, lw=2.2,
                label=f"{label} (mean of {len(curves)} fold{'s' * (len(curves) > 1)})")
    ax.set_ylabel("NT-Xent loss")
    ax.set_title("Pre-training loss per epoch (thin: one fold)", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, Path(out_png))


def finetune_figure(exp_dir: str | os.PathLike[str], out_png: str | os.PathLike[str]
                    ) -> Path | None:
    """Train loss and validation ILA per epoch of each method, mean over its cells (folds,
    magnifications, label fractions). None when no fine-tuning run is logged."""
    root = Path(exp_dir)
    groups: dict[str, list[pd.DataFrame]] = {}
    for run in _runs(root):
        if run.name.startswith("pretrain-"):
            continue
        try:
            m = read_metrics(run)
            if run_kind(m) != "finetune":
                continue
        except DataError:
            continue
        groups.setdefault(_method_of(run, root), []).append(m.set_index("epoch"))
    if not groups:
        return None
    fig, (ax_loss, ax_acc) = _figure(2, width=5.0, height=3.6)
    for colour, (method, runs) in zip(_PALETTE * 3, sorted(groups.items()), strict=False):
        loss = _mean_curve([r["train_loss"] for r in runs])
        ax_loss.plot(loss.index, loss.to_numpy(), color=colour, lw=1.8,
                     label=f"{method} ({len(runs)} runs)")
        if all("val_ila" in r for r in runs):
            acc = _mean_curve([100 * r["val_ila"].astype(float) for r in runs])
            ax_acc.plot(acc.index, acc.to_numpy(), color=colour, lw=1.8, label=method)
    ax_loss.set_ylabel("train cross-entropy")
    ax_loss.set_title("Fine-tuning / linear evaluation: train loss", fontsize=10)
    ax_acc.set_ylabel("validation ILA (%)")
    ax_acc.set_title("Validation image-level accuracy", fontsize=10)
    ax_loss.legend(fontsize=8)
    ax_acc.legend(fontsize=8)
    return _save(fig, Path(out_png))


def experiment_figures(exp_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]
                       ) -> list[Path]:
    """The combined figures of an experiment: ``pretrain_loss.png`` and
    ``finetune_curves.png`` (those that have data)."""
    out = Path(out_dir)
    written = [pretrain_figure(exp_dir, out / "pretrain_loss.png"),
               finetune_figure(exp_dir, out / "finetune_curves.png")]
    return [p for p in written if p is not None]


def _run_png_name(run: Path, root: Path) -> str:
    rel = run.relative_to(root).parts if run != root else (run.name,)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "_".join(rel)) + ".png"


def plot_curves(path: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> list[Path]:
    """Curves of a run folder (one PNG) or of every run of an experiment (one PNG per run,
    named after its relative path, plus :func:`experiment_figures`). Returns the PNGs.

    Raises:
        DataError: no ``metrics.jsonl`` under ``path``.
    """
    root = Path(path)
    out = Path(out_dir)
    if (root / "metrics.jsonl").is_file():
        return [plot_run(root, out / f"{_run_png_name(root, root)}")]
    runs = _runs(root) if root.is_dir() else []
    if not runs:
        raise DataError(f"{root}: no metrics.jsonl found (give a run folder or an experiment "
                        "folder)")
    written = []
    for run in runs:
        try:
            written.append(plot_run(run, out / _run_png_name(run, root),
                                    title="/".join(run.relative_to(root).parts)))
        except DataError as e:
            log.warning("curves: %s", e)
    return written + experiment_figures(root, out)


def plot_metrics(metrics: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """A pre-training run's loss per epoch and, when recorded, its kNN accuracies on held-out
    patients (right axis) as one PNG (``mpcs plot-metrics``); ``metrics`` is the run folder
    or its ``metrics.jsonl``."""
    df = read_metrics(metrics)
    fig = Figure(figsize=(6, 3.6), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(df["epoch"], df["loss"], color="tab:blue", label="loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("pre-training loss", color="tab:blue")
    if "knn_acc" in df and df["knn_acc"].notna().any():
        knn = df.dropna(subset=["knn_acc"])
        ax2 = ax.twinx()
        ax2.plot(knn["epoch"], 100 * knn["knn_acc"], "o-", color="tab:red", label="kNN ILA")
        if "knn_pla" in knn:
            ax2.plot(knn["epoch"], 100 * knn["knn_pla"], "s--", color="tab:orange",
                     label="kNN PLA")
        ax2.set_ylabel("kNN accuracy on held-out patients (%)", color="tab:red")
        ax2.legend(loc="lower right", fontsize=8)
    path = Path(metrics)
    ax.set_title((path if path.is_dir() else path.parent).name)
    return _save(fig, Path(out))
