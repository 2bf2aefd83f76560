"""Synthetic magnification for single-magnification images: nested crop-and-resize around a
common centre.

A user with one scale of patches (BCC, BACH, any folder of images) gets MPCS's magnification
prior by zooming: each image is decoded once at a base resolution ``B x B`` (the short side
resized to ``B``, centre square kept). A view at relative magnification ``s >= 1`` is the
``B/s x B/s`` crop around a centre, resized to the network input; the two views of a pair
share the centre (drawn uniformly where the wider crop fits), so the zoomed-in view is the
middle of the zoomed-out one, like the same region under two objectives. Choose
``B >= input_size * max_scale`` to avoid up-sampling the most zoomed-in view (the default).

Crop + resize is one batched :func:`torchvision.ops.roi_align` with adaptive sampling: every
output pixel averages the source pixels it covers, an area filter that does not alias.

Example:
    >>> x = torch.rand(2, 3, 64, 64)
    >>> boxes = centred_boxes(np.array([32., 32.]), np.array([32., 32.]), np.array([1., 4.]), 64)
    >>> crop_resize(x, boxes, 16).shape
    torch.Size([2, 3, 16, 16])
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from mpcs.core.errors import ConfigError, DataError
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.images import is_image_file, is_stray_file, load_rgb
from mpcs.data.transforms.geometry import crop_resize

log = logging.getLogger(__name__)

#: Largest base side decoded by default (memory: 3 * B^2 bytes per image).
MAX_BASE_SIZE = 1024


def centred_boxes(cx: np.ndarray, cy: np.ndarray, scale: np.ndarray, base: int) -> Tensor:
    """Boxes ``[N, 4]`` of side ``base / scale`` centred on ``(cx, cy)``."""
    half = base / (2 * np.asarray(scale, dtype=np.float64))
    return torch.from_numpy(np.stack([cx - half, cy - half, cx + half, cy + half], axis=1)
                            ).float()


def common_centres(s1: np.ndarray, s2: np.ndarray, base: int, uv: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Centres where the wider of the two crops (the lower magnification) fits in the image;
    ``uv`` ``[N, 2]`` in [0, 1] places them within that free range (0.5: image centre)."""
    half = base / (2 * np.minimum(s1, s2))
    free = base - 2 * half
    return half + uv[:, 0] * free, half + uv[:, 1] * free


def zoom_pair(base: Tensor, s1: np.ndarray, s2: np.ndarray, size: int,
              rng: np.random.Generator | None = None, uv: np.ndarray | None = None
              ) -> tuple[Tensor, Tensor]:
    """Two nested views of each base image: float ``[N, 3, B, B]`` (any range) and relative
    magnifications ``s1, s2 >= 1`` ([N]) -> two float tensors ``[N, 3, size, size]``. The
    common centres come from ``uv`` (``[N, 2]`` in [0, 1]) or are drawn from ``rng``."""
    s1, s2 = np.asarray(s1, np.float64), np.asarray(s2, np.float64)
    if (s1 < 1).any() or (s2 < 1).any():
        raise ValueError("relative magnifications must be >= 1 (1 = the whole base image)")
    if uv is None:
        if rng is None:
            raise ValueError("give the centres (uv) or a generator to draw them")
        uv = rng.uniform(0.0, 1.0, (len(s1), 2))
    b = base.shape[-1]
    cx, cy = common_centres(s1, s2, b, np.asarray(uv, np.float64))
    both = crop_resize(torch.cat([base, base]),
                       torch.cat([centred_boxes(cx, cy, s1, b), centred_boxes(cx, cy, s2, b)]),
                       size)
    return both[:len(base)], both[len(base):]


def decode_square(path: str | os.PathLike[str], side: int) -> np.ndarray:
    """uint8 ``[3, side, side]``: short side resized to ``side`` (area filter), centre square."""
    img = load_rgb(path)
    w, h = img.size
    k = side / min(w, h)
    nw, nh = max(side, round(w * k)), max(side, round(h * k))
    img = img.resize((nw, nh), Image.Resampling.BOX if k < 1 else Image.Resampling.BILINEAR)
    left, top = (nw - side) // 2, (nh - side) // 2
    img = img.crop((left, top, left + side, top + side))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


#: Values of ``data.zoom_magnification``: every image, each patient's lowest magnification,
#: or one magnification (the last two need a BreakHis-layout folder to mean anything).
ZOOM_MAGNIFICATIONS = ("all", "lowest", *MAGNIFICATIONS)


def zoom_image_table(root: str | os.PathLike[str], magnification: str = "lowest"
                     ) -> pd.DataFrame:
    """Image files under ``root`` with a ``patient_id`` each.

    A BreakHis-layout tree gives its images at ``magnification``: ``all`` of them, each
    patient's ``lowest`` magnification present (the widest field of view), or one of
    40X..400X; the table's ``attrs["patients"]`` lists every patient of the tree, so that a
    caller can tell a patient without images at that magnification from an unknown one.
    Another folder gives every image, its patient the first sub-folder under ``root``
    (``root/<patient>/.../x.png``) or, for files directly in ``root``, the file stem.

    Raises:
        DataError: ``root`` is not a folder or holds no image.
        ConfigError: a magnification other than ``all`` for a folder that is not a BreakHis
            tree, or not one of :data:`ZOOM_MAGNIFICATIONS`.
    """
    if magnification not in ZOOM_MAGNIFICATIONS:
        raise ConfigError(f"data.zoom_magnification must be one of "
                          f"{', '.join(ZOOM_MAGNIFICATIONS)}, got {magnification!r}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of images")
    try:
        manifest = scan_breakhis(root, check_images=False)
    except DataError:
        manifest = None
    if manifest is not None and len(manifest):
        return _breakhis_images(manifest, magnification)
    if magnification not in ("all", "lowest"):
        raise ConfigError(f"data.zoom_magnification={magnification} needs a BreakHis-layout "
                          f"folder; {root} is not one (use all)")
    rows = []
    for dirpath, dirnames, files in os.walk(root):
        dirnames.sort()
        for name in sorted(files):
            if not is_image_file(name) or is_stray_file(name):
                continue
            path = Path(dirpath) / name
            rel = path.relative_to(root)
            patient = rel.parts[0] if len(rel.parts) > 1 else path.stem
            rows.append({"path": str(path), "patient_id": patient})
    if not rows:
        raise DataError(f"{root}: no image files found (looked for PNG, JPEG, TIFF, ... "
                        f"recursively)")
    return pd.DataFrame(rows)


def _breakhis_images(manifest: pd.DataFrame, magnification: str) -> pd.DataFrame:
    rows = manifest.assign(patient_id=manifest["patient_id"].astype(str))
    if magnification == "lowest":
        rank = rows["magnification"].map({m: i for i, m in enumerate(MAGNIFICATIONS)})
        rows = rows[rank == rank.groupby(rows["patient_id"]).transform("min")]
    elif magnification != "all":
        rows = rows[rows["magnification"] == magnification]
    table = pd.DataFrame({"path": rows["path"].astype(str).to_numpy(),
                          "patient_id": rows["patient_id"].to_numpy(),
                          "magnification": rows["magnification"].to_numpy()})
    table.attrs["patients"] = sorted(set(manifest["patient_id"].astype(str)))
    table.attrs["magnification"] = magnification
    return table


class ZoomPairData:
    """Pair source of synthetic magnifications: base images uint8 ``[S, 3, B, B]``.

    Args:
        images: table with ``path`` and ``patient_id`` (see :func:`zoom_image_table`).
        input_size: side of the views returned by :meth:`views`.
        base_size: side ``B`` of the decoded base images.
        on_bad_image: ``"error"`` raises on an unreadable file; ``"skip"`` leaves it out
            (``dropped``: ``(path, path, reason)``).

    Example:
        >>> data = ZoomPairData(zoom_image_table("my_patches"), 48, 192)   # doctest: +SKIP
        >>> v1, v2 = data.views(np.arange(8), s1, s2, rng)            # doctest: +SKIP
    """

    def __init__(self, images: pd.DataFrame, input_size: int, base_size: int,
                 progress: bool = True, on_bad_image: str = "error") -> None:
        if base_size < input_size:
            raise DataError(f"zoom base size {base_size} is smaller than the input size "
                            f"{input_size}")
        self.input_size, self.base_size = int(input_size), int(base_size)
        pixels, keep = [], []
        self.dropped: list[tuple[str, str, str]] = []
        for i, path in enumerate(tqdm(images["path"], desc="decode", unit="img",
                                      disable=not progress, leave=False)):
            try:
                pixels.append(decode_square(path, self.base_size))
                keep.append(i)
            except DataError as err:
                if on_bad_image != "skip":
                    raise
                self.dropped.append((str(path), str(path), str(err)))
                log.warning("%s", err)
        if not pixels:
            raise DataError("no readable image left for synthetic magnification pairs")
        self.pixels = np.stack(pixels)
        self.samples = images.iloc[keep].reset_index(drop=True)
        self.attrs: dict[str, list] = {"skipped": []}  # as a BreakHis samples table's

    def __len__(self) -> int:
        return len(self.samples)

    def views(self, index: np.ndarray, first: np.ndarray, second: np.ndarray,
              rng: np.random.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Views of samples ``index`` with common centres: two float tensors in [0, 1],
        ``[N, 3, input_size, input_size]``. ``first``/``second`` are view specs ``[N, 3]``
        ``(scale, u, v)`` (:class:`mpcs.data.pairs.ScaleViewSampler`) or relative
        magnifications ``[N]`` (>= 1; centres then drawn from ``rng``)."""
        base = torch.from_numpy(self.pixels[np.asarray(index)]).float().div_(255)
        first, second = np.asarray(first), np.asarray(second)
        if first.ndim == 2:
            return zoom_pair(base, first[:, 0], second[:, 0], self.input_size, uv=first[:, 1:])
        return zoom_pair(base, first, second, self.input_size, rng)


def default_base_size(input_size: int, max_scale: float) -> int:
    """``input_size * max_scale`` (no up-sampling), at most :data:`MAX_BASE_SIZE`."""
    return int(min(MAX_BASE_SIZE, max(input_size, round(input_size * max_scale))))
