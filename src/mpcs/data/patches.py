"""Patch datasets of large labelled images, and majority voting back to the image.

One mechanism for every data set of large images with one label each (BACH photos, UCSB
BCC images, or any folder): an *image manifest* (one row per source image: ``path``,
``image_id``, ``label``) is cut into square patches on a regular grid, optionally
stain-normalised (:mod:`mpcs.data.stain`), and written once as PNG files into a cache folder.
The resulting *patch table* has one row per patch with the columns the fine-tuning engine
expects (``path`` of the patch, ``patient_id`` = the source image's id, ``label``,
``magnification``), so the existing train/val/test machinery keeps every patch of an image in
the same part. Predictions per patch are turned back into one prediction per image by
:func:`majority_vote`.

Grid: patches of ``size x size`` at ``x = 0, stride, 2*stride, ...`` while ``x + size <=
width`` (same for ``y``); the strip beyond the last full patch is not used. A 2048x1536 BACH
photo with size 512 and stride 256 (50% overlap) gives 7 x 5 = 35 patches; an 896x768 BCC
image with size 224 and stride 224 gives 4 x 3 = 12.

Cache layout: ``<cache>/patches/<spec key>/<image key>/`` holds ``x<X>_y<Y>.png`` and, written
last, ``patches.json`` (positions and which patches fell back to the raw pixels). The spec key
hashes patch size, stride and the normaliser (method + reference file identity); the image key
hashes the source file's path, size and modification time, so a changed image is cut again
and an unchanged one is reused across folds, runs and experiments.

Example:
    >>> images = scan_bcc("/data/bcc")                                 # doctest: +SKIP
    >>> patches = extract_patches(images, PatchSpec(224, 224))          # doctest: +SKIP
    >>> votes = majority_vote(patches.assign(prediction=...), probs, classes)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from mpcs.core.errors import ConfigError, DataError
from mpcs.core.io import atomic_path, atomic_write_text
from mpcs.core.runtime import default_cache_dir
from mpcs.data.images import load_rgb
from mpcs.data.stain import StainNormaliser, file_identity

log = logging.getLogger(__name__)

PATCH_CACHE_VERSION = 1
#: ``magnification`` of every patch row (the fine-tuning engine groups results by it).
NO_MAGNIFICATION = "-"
IMAGE_COLUMNS: tuple[str, ...] = ("path", "image_id", "label")
PATCH_COLUMNS: tuple[str, ...] = ("path", "patient_id", "image_id", "label", "magnification",
                                  "source", "x", "y", "stain_fallback")


@dataclass(frozen=True)
class PatchSpec:
    """Patch side and grid stride in pixels of the source image."""

    size: int
    stride: int

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ConfigError(f"patch size must be >= 8 pixels, got {self.size}")
        if not 1 <= self.stride:
            raise ConfigError(f"patch stride must be >= 1 pixel, got {self.stride}")


def patch_grid(width: int, height: int, size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners ``(x, y)`` of the patches, row by row.

    Example:
        >>> patch_grid(896, 768, 224, 224)[:5]
        [(0, 0), (224, 0), (448, 0), (672, 0), (0, 224)]
        >>> len(patch_grid(2048, 1536, 512, 256))
        35
    """
    if width < size or height < size:
        raise ValueError(f"a {width}x{height} image is smaller than a {size}x{size} patch")
    xs = range(0, width - size + 1, stride)
    ys = range(0, height - size + 1, stride)
    return [(x, y) for y in ys for x in xs]


def image_manifest(paths: Sequence[str | os.PathLike[str]], labels: Sequence[str],
                   root: str | os.PathLike[str]) -> pd.DataFrame:
    """Image table for a folder of large labelled images.

    Columns: ``path``, ``image_id`` (the path relative to ``root``, with ``/``), ``label``,
    and, so that :func:`mpcs.data.splits.make_splits` splits by image, ``patient_id`` (=
    ``image_id``), ``subtype`` (= ``label``) and ``magnification`` (:data:`NO_MAGNIFICATION`).
    ``attrs["root"]`` is ``root``.
    """
    root = Path(root).resolve()
    rows = []
    for path, label in zip(paths, labels, strict=True):
        p = Path(path).resolve()
        image_id = os.path.relpath(p, root).replace(os.sep, "/")
        rows.append({"path": str(p), "image_id": image_id, "label": str(label),
                     "patient_id": image_id, "subtype": str(label),
                     "magnification": NO_MAGNIFICATION})
    frame = pd.DataFrame(rows, columns=["path", "image_id", "label", "patient_id", "subtype",
                                        "magnification"])
    frame = frame.sort_values("image_id", kind="stable").reset_index(drop=True)
    frame.attrs["root"] = str(root)
    return frame


def _spec_key(spec: PatchSpec, normaliser: StainNormaliser | None) -> str:
    norm = normaliser.identity if normaliser is not None else "none"
    text = f"v{PATCH_CACHE_VERSION}|{spec.size}|{spec.stride}|{norm}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def patch_cache_dir(spec: PatchSpec, normaliser: StainNormaliser | None,
                    cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder that holds the patches of ``spec`` (and normaliser) for every image."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "patches" / _spec_key(spec, normaliser)


def _read_done(folder: Path) -> list[dict] | None:
    try:
        data = json.loads((folder / "patches.json").read_text())
        rows = data["patches"]
        if all((folder / r["file"]).is_file() for r in rows):
            return rows
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _cut_image(source: Path, folder: Path, spec: PatchSpec,
               normaliser: StainNormaliser | None) -> list[dict]:
    """Cut (and normalise) one image into ``folder``; returns its patch records."""
    rgb = np.asarray(load_rgb(source))
    height, width = rgb.shape[:2]
    try:
        grid = patch_grid(width, height, spec.size, spec.stride)
    except ValueError as e:
        raise DataError(f"{source}: {e}") from None
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for x, y in grid:
        patch = np.ascontiguousarray(rgb[y:y + spec.size, x:x + spec.size])
        fallback = False
        if normaliser is not None:
            patch, ok = normaliser.normalise(patch)
            fallback = not ok
        name = f"x{x}_y{y}.png"
        with atomic_path(folder / name, suffix=".tmp.png") as tmp:
            Image.fromarray(patch).save(tmp, compress_level=1)
        rows.append({"file": name, "x": x, "y": y, "stain_fallback": fallback})
    atomic_write_text(folder / "patches.json", json.dumps(
        {"source": str(source), "width": width, "height": height, "size": spec.size,
         "stride": spec.stride, "normaliser": normaliser.identity if normaliser else "none",
         "patches": rows}, indent=0))
    return rows


def extract_patches(images: pd.DataFrame, spec: PatchSpec,
                    normaliser: StainNormaliser | None = None,
                    cache_dir: str | os.PathLike[str] | None = None,
                    progress: bool = True) -> pd.DataFrame:
    """Cut every image of ``images`` (see :func:`image_manifest`) into patches, once.

    Returns the patch table (columns :data:`PATCH_COLUMNS`, one row per patch, images in
    the order of ``images``); patches already in the cache are not cut again. The number of
    patches whose stain normalisation fell back to the raw pixels is logged (and is
    ``frame.attrs["stain_fallbacks"]``).

    Raises:
        DataError: an unreadable image, or one smaller than a patch.
    """
    missing = [c for c in IMAGE_COLUMNS if c not in images.columns]
    if missing:
        raise ConfigError(f"the image table lacks the column(s) {', '.join(missing)}")
    base = patch_cache_dir(spec, normaliser, cache_dir)
    rows = []
    cut = 0
    bar = tqdm(images.itertuples(index=False), total=len(images), desc="patches",
               unit="image", disable=not progress, leave=False)
    for image in bar:
        source = Path(image.path)
        key = file_identity(source) + "_" + source.stem[:40]
        folder = base / key
        records = _read_done(folder)
        if records is None:
            records = _cut_image(source, folder, spec, normaliser)
            cut += 1
        for r in records:
            rows.append({"path": str(folder / r["file"]), "patient_id": str(image.image_id),
                         "image_id": str(image.image_id), "label": str(image.label),
                         "magnification": NO_MAGNIFICATION, "source": str(source),
                         "x": int(r["x"]), "y": int(r["y"]),
                         "stain_fallback": bool(r["stain_fallback"])})
    frame = pd.DataFrame(rows, columns=list(PATCH_COLUMNS))
    fallbacks = int(frame["stain_fallback"].sum()) if len(frame) else 0
    frame.attrs["stain_fallbacks"] = fallbacks
    frame.attrs["cache"] = str(base)
    log.info("patches: %d images -> %d patches of %dx%d (stride %d) in %s (%d images cut "
             "now, %d from the cache)", len(images), len(frame), spec.size, spec.size,
             spec.stride, base, cut, len(images) - cut)
    if normaliser is not None:
        log.info("stain normalisation (%s): %d of %d patches fell back to the raw patch "
                 "(too little tissue or a degenerate patch)", normaliser.method, fallbacks,
                 len(frame))
    return frame


def majority_vote(image_ids: Sequence[str], probabilities: np.ndarray,
                  class_names: Sequence[str]) -> pd.DataFrame:
    """One prediction per image from its patches' class probabilities.

    Each patch votes for its most probable class; the image takes the class with most
    votes; a tie between classes goes to the tied class with the highest mean probability
    over the image's patches (then to the first in ``class_names``).

    Args:
        image_ids: ``[N]`` the source image of each patch.
        probabilities: ``[N, C]`` class probabilities of each patch.
        class_names: the ``C`` class names, in column order.

    Returns:
        One row per image (in order of first appearance): ``image_id``, ``prediction``,
        ``n_patches``, ``votes_<class>`` and ``prob_<class>`` (mean probability) per class.

    Example:
        >>> p = np.array([[.9, .1], [.2, .8], [.4, .6], [.45, .55]])
        >>> majority_vote(["a", "a", "b", "b"], p, ["benign", "malignant"])[
        ...     ["image_id", "prediction"]].values.tolist()
        [['a', 'benign'], ['b', 'malignant']]
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    ids = np.asarray(image_ids).astype(str)
    if probs.ndim != 2 or probs.shape != (len(ids), len(class_names)):
        raise ValueError(f"probabilities must be [{len(ids)}, {len(class_names)}], got "
                         f"{probs.shape}")
    votes = np.eye(len(class_names))[probs.argmax(axis=1)] if len(ids) else probs
    order = list(dict.fromkeys(ids))
    frame_v = pd.DataFrame(votes, columns=list(class_names)).groupby(ids).sum()
    frame_p = pd.DataFrame(probs, columns=list(class_names)).groupby(ids).mean()
    rows = []
    for image in order:
        v = frame_v.loc[image].to_numpy()
        p = frame_p.loc[image].to_numpy()
        tied = np.flatnonzero(v == v.max())
        winner = tied[np.argmax(p[tied])]
        rows.append({"image_id": image, "prediction": class_names[winner],
                     "n_patches": int(v.sum()),
                     **{f"votes_{c}": int(v[i]) for i, c in enumerate(class_names)},
                     **{f"prob_{c}": float(p[i]) for i, c in enumerate(class_names)}})
    return pd.DataFrame(rows)
