"""Pictures of an experiment folder for ``mpcs report``, and the HTML version of the report.

:func:`add_figures` writes, under ``DIR/figures/``:

* ``pretrain_loss.png`` and ``finetune_curves.png``: training curves
  (:mod:`mpcs.viz.curves`);
* ``tsne_fold<k>.png``: t-SNE of the pooled features of each pre-trained encoder of one fold
  (``fold<k>/pretrain-*/checkpoints/last.pt``) on that fold's test images (those in its cells'
  ``test_predictions.csv``; at most ``tsne_images`` of them, sampled with a fixed seed);
* ``gradcam_fold<k>.png``: Grad-CAM of the baseline and MPCS-OP (else another MPCS variant)
  cell of one fold, magnification and label fraction, on a few of its test images, as the
  paper's Fig. 5; the explained layer is chosen with ``layer="auto"``
  (:func:`mpcs.viz.gradcam.resolve_target_layer`): the last stage, unless its map is under
  4x4 cells at the model's input size (e.g. 1x1 for ResNet at 32 px, as in ``mpcs demo``),
  then the deepest stage that is; titles and caption name such a layer;

and appends a ``## Figures`` section linking them (relative paths) to ``report.md``. Each
figure is optional: a failure is logged as a warning naming the figure and the report keeps
its tables. :func:`finish_report` then writes the self-contained ``DIR/report.html``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure

from mpcs.core.io import atomic_path, atomic_write_text
from mpcs.core.tables import read_csv
from mpcs.core.vocab import strategy_label
from mpcs.engine.loading import compute_features, load_model
from mpcs.evaluation.html import escape_markdown, write_html
from mpcs.viz.curves import finetune_figure, pretrain_figure
from mpcs.viz.gradcam import CamImage, explain, grid_figure
from mpcs.viz.tsne import CLASS_COLOURS, OTHER_COLOUR, embed_2d

__all__ = ["Figure", "add_figures", "finish_report"]

log = logging.getLogger(__name__)

FIGURES_DIR = "figures"
_BASELINES = ("ImageNet", "Random init")
_MPCS_PREFERENCE = ("MPCS-OP", "MPCS-FP", "MPCS-RP")


@dataclass
class Figure:
    """One picture of the report: its file (relative to the report) and a caption."""

    path: Path
    caption: str


# --------------------------------------------------------------------------- the pictures


def _curves(exp: Path, out: Path) -> list[Figure]:
    figs = []
    p = pretrain_figure(exp, out / "pretrain_loss.png")
    if p is not None:
        figs.append(Figure(p, "Pre-training NT-Xent loss per epoch of each pair strategy "
                              "(thin lines: folds; thick: mean over folds)."))
    p = finetune_figure(exp, out / "finetune_curves.png")
    if p is not None:
        figs.append(Figure(p, "Fine-tuning / linear evaluation: train loss and validation "
                              "image-level accuracy per epoch, mean over each method's cells."))
    return figs


def _first_fold(exp: Path) -> Path | None:
    folds = sorted((p for p in exp.glob("fold*") if p.is_dir()),
                   key=lambda p: (len(p.name), p.name))
    return folds[0] if folds else None


def _test_images(fold: Path) -> pd.DataFrame:
    """The fold's test images (path, label, magnification), from its cells' predictions."""
    frames = [read_csv(p, usecols=["path", "label", "magnification"])
              for p in sorted(fold.rglob("test_predictions.csv"))]
    if not frames:
        return pd.DataFrame(columns=["path", "label", "magnification"])
    return pd.concat(frames).drop_duplicates("path").sort_values("path").reset_index(drop=True)


def _tsne(exp: Path, out: Path, max_images: int, seed: int = 0) -> list[Figure]:
    fold = _first_fold(exp)
    if fold is None:
        return []
    runs = sorted(p for p in fold.glob("pretrain-*") if (p / "checkpoints" / "last.pt").is_file())
    if not runs:
        return []
    images = _test_images(fold)
    images = images[[Path(p).is_file() for p in images["path"]]]
    if len(images) < 3:
        raise FileNotFoundError(f"{fold}: fewer than 3 test images found on disk (moved data?)")
    total = len(images)
    if total > max_images:
        images = images.sample(n=max_images, random_state=seed).sort_values("path")
    files = [Path(p) for p in images["path"]]
    labels = images["label"].astype(str).to_numpy()
    fig = MplFigure(figsize=(4.2 * len(runs), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    for i, run in enumerate(runs, start=1):
        loaded = load_model(run / "checkpoints" / "last.pt")
        kept, feats, _ = compute_features(loaded, files, progress=False, skip_bad=True)
        keep = np.isin([str(f) for f in files], [str(k) for k in kept])
        xy = embed_2d(feats, perplexity=30, seed=seed)
        ax = fig.add_subplot(1, len(runs), i)
        for name in sorted(set(labels[keep].tolist())):
            mask = labels[keep] == name
            ax.scatter(xy[mask, 0], xy[mask, 1], s=10, alpha=0.8,
                       c=CLASS_COLOURS.get(name, OTHER_COLOUR), label=f"{name} ({int(mask.sum())})")
        strategy = run.name.removeprefix("pretrain-")
        ax.set_title(strategy_label(strategy), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = out / f"tsne_{fold.name}.png"
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp)
    shown = f"{len(files)} of {total}" if total > len(files) else f"all {total}"
    return [Figure(path, f"t-SNE of the pooled backbone features of each pre-trained encoder "
                         f"of {fold.name} on {shown} test images of that fold (all "
                         "magnifications; blue benign, red malignant).")]


def _cell_checkpoints(fold: Path) -> dict[tuple[str, str, str], Path]:
    """``{(method, magnification, lf folder): best.pt}`` of the fold's finished cells."""
    found = {}
    for meta in sorted(fold.rglob("cell.json")):
        cell = meta.parent
        if (cell / "best.pt").is_file() and (cell / "test_predictions.csv").is_file():
            try:
                method = str(json.loads(meta.read_text())["method"])
            except (OSError, ValueError, KeyError):
                continue
            found[(method, cell.parent.name, cell.name)] = cell / "best.pt"
    return found


def _pick_images(preds: pd.DataFrame, n: int) -> list[Path]:
    """Up to ``n`` test images on disk, alternating benign and malignant, spread over
    patients (deterministic)."""
    preds = preds[[Path(p).is_file() for p in preds["path"]]].sort_values("path")
    by_label = [g.drop_duplicates("patient_id") for _, g in preds.groupby("label", sort=True)]
    picked: list[Path] = []
    for i in range(n):
        for g in by_label:
            if i < len(g) and len(picked) < n:
                picked.append(Path(g["path"].iloc[i]))
    return picked


def _layer_caption(items: dict[str, CamImage]) -> str:
    """A caption sentence naming the explained layer of each model (label -> one of its
    Grad-CAM results) when it is not the last stage (``layer="auto"`` at a small input size);
    empty when all are the last stage."""
    notes = {label: item.layer_note for label, item in items.items()}
    if not any(notes.values()):
        return ""
    if len(set(notes.values())) == 1:
        where = f"{next(iter(notes.values()))} of both models"
    else:
        where = "; ".join(f"{label}: {n or 'last stage'}" for label, n in notes.items())
    return (f" Maps from an intermediate layer ({where}): the last stage is too small at this "
            "input size to localise, and an intermediate map is less class-specific.")


def _gradcam(exp: Path, out: Path, n_images: int, layer: str = "auto") -> list[Figure]:
    fold = _first_fold(exp)
    if fold is None:
        return []
    cells = _cell_checkpoints(fold)
    base = next((b for b in _BASELINES if any(k[0] == b for k in cells)), None)
    mpcs = next((m for m in _MPCS_PREFERENCE if any(k[0] == m for k in cells)), None)
    if base is None or mpcs is None:
        return []
    settings = sorted({k[1:] for k in cells if k[0] == base} & {k[1:] for k in cells
                                                                  if k[0] == mpcs})
    if not settings:
        return []
    mag, lf = settings[0]
    ckpts = [cells[(base, mag, lf)], cells[(mpcs, mag, lf)]]
    files = _pick_images(read_csv(ckpts[1].parent / "test_predictions.csv"), n_images)
    if not files:
        raise FileNotFoundError(f"{ckpts[1].parent}: no test image found on disk (moved data?)")
    runs = [explain(ckpt, files, "predicted", max_side=256, layer=layer)[1] for ckpt in ckpts]
    rows = [list(items) for items in zip(*runs, strict=True)]
    grid = grid_figure([base, mpcs], rows, "predicted", out / f"gradcam_{fold.name}.png")
    layers = _layer_caption({base: runs[0][0], mpcs: runs[1][0]})
    return [Figure(grid, f"Grad-CAM of the predicted class, {base} vs {mpcs}, {fold.name}, "
                         f"{mag}, label fraction {lf.removeprefix('lf')}, on "
                         f"{len(files)} test images (titles: predicted class and its "
                         f"probability; red: high activation).{layers}")]


# --------------------------------------------------------------------------- report


def _run_figure(name: str, make: Callable[[], list[Figure]]) -> list[Figure]:
    t0 = time.perf_counter()
    try:
        figs = make()
    except Exception as e:  # noqa: BLE001 - a picture must never cost the report its tables
        log.warning("report figure %r skipped: %s: %s", name, type(e).__name__, e)
        return []
    log.info("report figure %r: %d picture(s) in %.1f s", name, len(figs),
             time.perf_counter() - t0)
    return figs


def add_figures(exp_dir: str | os.PathLike[str], tsne_images: int = 200,
                gradcam_images: int = 4) -> list[Figure]:
    """Write the report's pictures under ``exp_dir/figures`` (see the module docstring);
    return those written, paths relative to ``exp_dir``. Never raises for a figure."""
    exp = Path(exp_dir)
    out = exp / FIGURES_DIR
    out.mkdir(parents=True, exist_ok=True)
    figs = [*_run_figure("training curves", lambda: _curves(exp, out)),
            *_run_figure("t-SNE", lambda: _tsne(exp, out, tsne_images)),
            *_run_figure("Grad-CAM", lambda: _gradcam(exp, out, gradcam_images))]
    return [Figure(f.path.relative_to(exp), f.caption) for f in figs]


def figures_markdown(figs: list[Figure]) -> str:
    """The ``## Figures`` section: per figure an image line and its caption (captions name
    methods and folders: escaped with :func:`escape_markdown`)."""
    if not figs:
        return ""
    lines = ["## Figures", ""]
    for f in figs:
        caption = escape_markdown(f.caption)
        lines += [f"![{caption}]({f.path.as_posix()})", "", caption, ""]
    return "\n".join(lines)


def finish_report(exp_dir: str | os.PathLike[str], md_path: str | os.PathLike[str],
                  figures: bool = True) -> Path:
    """Append the figures to ``report.md`` (unless ``figures`` is False) and write the
    self-contained ``report.html`` beside it (images inlined). Returns the HTML path."""
    md_path = Path(md_path)
    text = md_path.read_text()
    if figures:
        section = figures_markdown(add_figures(exp_dir))
        if section:
            text = text.rstrip("\n") + "\n\n" + section
            atomic_write_text(md_path, text)
    return write_html(text, md_path.with_suffix(".html"), base_dir=md_path.parent,
                      title="mpcs experiment report")
