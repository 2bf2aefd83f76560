"""t-SNE (and, when ``umap`` is installed, UMAP) maps of a checkpoint's image features.

The features of every image are computed once and saved as ``features.npz`` (``features``,
``paths``, ``labels``, ``magnifications``); then one map is drawn per magnification and one
for all images, points coloured benign/malignant.

Example:
    >>> tsne_plot("runs/demo/checkpoints/last.pt", "data/BreaKHis_v1", "tsne")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import manifold

from mpcs.core.errors import ConfigError, DataError
from mpcs.core.io import atomic_path
from mpcs.data.datasets.breakhis_names import breakhis_fields
from mpcs.data.images import list_images
from mpcs.engine.loading import PRETRAIN_KIND, compute_features, load_model

__all__ = ["FEATURE_KINDS", "tsne_plot"]

log = logging.getLogger(__name__)

FEATURE_KINDS = ("backbone", "projection")
CLASS_COLOURS = {"benign": "#1f77b4", "malignant": "#d62728"}
OTHER_COLOUR = "#7f7f7f"
_MIN_POINTS = 3
#: Below this many points t-SNE is exact: Barnes-Hut's tree costs more than it saves on
#: small sets (2 busy CPU cores, 512 features: 300 points 4 s exact, 19 s Barnes-Hut; about
#: equal near 1,000; issue 14 saw 128 s for 64 images).
EXACT_BELOW = 1000


def embed_2d(features: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    n = len(features)
    p = float(min(perplexity, n - 1))
    method = "exact" if n < EXACT_BELOW else "barnes_hut"
    return manifold.TSNE(n_components=2, perplexity=p, init="pca", random_state=seed,
                learning_rate="auto", method=method).fit_transform(features.astype(np.float64))


def _umap(features: np.ndarray, seed: int) -> np.ndarray:
    import umap  # optional dependency

    n_neighbors = max(2, min(15, len(features) - 1))
    return umap.UMAP(n_neighbors=n_neighbors, random_state=seed).fit_transform(features)


def _draw(xy: np.ndarray, labels: np.ndarray, title: str, path: Path) -> Path:
    fig = Figure(figsize=(6, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name in sorted(set(labels.tolist()), key=lambda v: (v not in CLASS_COLOURS, v)):
        mask = labels == name
        ax.scatter(xy[mask, 0], xy[mask, 1], s=12, alpha=0.8,
                   c=CLASS_COLOURS.get(name, OTHER_COLOUR), label=f"{name} ({int(mask.sum())})")
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp)
    return path


def tsne_plot(checkpoint: str | os.PathLike[str],
              data_dir_or_images: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
              out_dir: str | os.PathLike[str], features: str = "backbone",
              perplexity: float = 30, seed: int = 0, batch_size: int = 64,
              skip_bad: bool = False, progress: bool = True) -> list[Path]:
    """Draw t-SNE maps of the features of a checkpoint; return the PNG paths.

    Writes ``out_dir/features.npz`` and ``out_dir/tsne_all.png`` plus one
    ``tsne_<magnification>.png`` per magnification found in the BreakHis names (and the same
    with ``umap_`` when the optional ``umap`` package is importable). The perplexity is
    clipped to ``n - 1`` for each map; a group with fewer than 3 images gets no map. Maps of
    fewer than :data:`EXACT_BELOW` points use exact t-SNE, larger ones Barnes-Hut.

    Args:
        features: ``"backbone"`` (pooled encoder features h) or ``"projection"`` (the
            projection head's output z; pre-training checkpoints only).

    Raises:
        ConfigError: unknown ``features``, ``"projection"`` with a fine-tuned checkpoint, or
            a non-positive perplexity.
    """
    if features not in FEATURE_KINDS:
        raise ConfigError(f"features must be one of {', '.join(FEATURE_KINDS)}, "
                          f"got {features!r}")
    if not perplexity > 0:
        raise ConfigError(f"perplexity must be > 0, got {perplexity}")
    loaded = load_model(checkpoint)
    if features == "projection" and (loaded.kind != PRETRAIN_KIND or loaded.head is None):
        raise ConfigError(f"{checkpoint}: projection features need a pre-training checkpoint "
                          "(a fine-tuned model has no projection head); use features=backbone")
    files = list_images(data_dir_or_images, skip_bad=skip_bad)
    kept, feats, _ = compute_features(loaded, files, features == "projection", batch_size,
                                      skip_bad, progress)
    if len(kept) < _MIN_POINTS:
        raise DataError(f"t-SNE needs at least {_MIN_POINTS} readable images, got {len(kept)}")
    fields = [breakhis_fields(f) for f in kept]
    labels = np.array([f["label"] or "unknown" for f in fields])
    mags = np.array([f["magnification"] or "unknown" for f in fields])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "features.npz", features=feats, paths=np.array([str(p) for p in kept]),
             labels=labels, magnifications=mags, kind=np.array(features))

    groups: list[tuple[str, np.ndarray]] = [("all", np.ones(len(kept), bool))]
    for mag in sorted(set(mags.tolist()) - {"unknown"}, key=lambda m: (len(m), m)):
        groups.append((mag, mags == mag))
    use_umap = importlib.util.find_spec("umap") is not None
    written: list[Path] = []
    for name, mask in groups:
        n = int(mask.sum())
        if n < _MIN_POINTS:
            log.warning("t-SNE: %s has %d image(s), too few for a map; skipped", name, n)
            continue
        what = "all magnifications" if name == "all" else name
        xy = embed_2d(feats[mask], perplexity, seed)
        title = f"t-SNE of {features} features, {what} ({n} images)"
        written.append(_draw(xy, labels[mask], title, out / f"tsne_{name}.png"))
        if use_umap:
            try:
                uv = _umap(feats[mask], seed)
            except Exception as e:  # noqa: BLE001 - optional extra; never fail the t-SNE run
                log.warning("UMAP failed for %s (%s); skipped", name, e)
                continue
            title = f"UMAP of {features} features, {what} ({n} images)"
            written.append(_draw(uv, labels[mask], title, out / f"umap_{name}.png"))
    return written
