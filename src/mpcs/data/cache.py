"""Decoded-image cache: each image decoded once, resized, stored as uint8 in a memory map.

Decoding a 700x460 PNG costs far more than a training step's augmentation of the decoded
pixels, so pre-training and feature extraction read pixels from a ``[N, 3, S, S]`` uint8
array instead of the files. The array lives in ``<cache_dir>/<key>.npy`` where ``key`` is a
hash of the image paths, their sizes and modification times, and ``S``; it is reused across
runs and folds, rebuilt when any file changes, and safe to delete at any time.

Images are resized to ``S x S`` with Pillow's antialiased bilinear filter (BreakHis' 700x460
becomes square, as in the authors' pipeline, which resized to the square network input).

Example:
    >>> pixels = load_images(["a.png", "b.png"], size=64, cache_dir=None)  # doctest: +SKIP
    >>> pixels.shape
    (2, 3, 64, 64)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mpcs.data.images import load_rgb
from mpcs.errors import DataError

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$MPCS_CACHE`` if set, else ``~/.cache/mpcs``."""
    env = os.environ.get("MPCS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mpcs"


def decode_resized(path: str | Path, size: int) -> np.ndarray:
    """One image as uint8 [3, size, size] RGB (errors name the file: see ``load_rgb``)."""
    img = load_rgb(path).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def cache_key(paths: Sequence[str | Path], size: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}".encode())
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            raise DataError(f"{p}: cannot read file ({exc.strerror or exc})") from None
        h.update(f"|{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _decode_all(paths: Sequence[str | Path], size: int, out: np.ndarray,
                progress: bool, workers: int) -> None:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        it = pool.map(lambda p: decode_resized(p, size), paths)
        for i, arr in enumerate(tqdm(it, total=len(paths), desc=f"decode@{size}",
                                     unit="img", disable=not progress, leave=False)):
            out[i] = arr


def load_images(paths: Sequence[str | Path], size: int, cache_dir: str | Path | None = None,
                progress: bool = True, workers: int | None = None) -> np.ndarray:
    """Decoded, resized pixels of ``paths`` as uint8 ``[N, 3, size, size]``.

    With ``cache_dir`` (a folder) the array is memory-mapped from, or first written to, that
    folder; with ``None`` it is decoded into memory and not kept.
    """
    workers = workers or min(4, os.cpu_count() or 1)
    shape = (len(paths), 3, size, size)
    if cache_dir is None:
        out = np.empty(shape, dtype=np.uint8)
        _decode_all(paths, size, out, progress, workers)
        return out
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    key = cache_key(paths, size)
    final, meta = folder / f"{key}.npy", folder / f"{key}.json"
    if final.exists() and meta.exists():
        arr = np.load(final, mmap_mode="r")
        if arr.shape == shape:
            return arr
    tmp = folder / f"{key}.{os.getpid()}.tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    try:
        _decode_all(paths, size, out, progress, workers)
        out.flush()
        del out
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    meta.write_text(json.dumps({"size": size, "count": len(paths),
                                "first": str(paths[0]) if paths else None}))
    log.info("cached %d images at %dx%d in %s", len(paths), size, size, final)
    return np.load(final, mmap_mode="r")
