"""Whole-slide images as a source of magnification pairs, through OpenSlide.

For every slide: a tissue mask on a thumbnail (colour saturation above Otsu's threshold and
not white background), tissue locations sampled where the widest field of view is mostly
tissue, and views of the SAME location read at any physical scale. A view at relative
magnification ``s`` covers ``input_size`` pixels of ``mpp_at_1x / s`` micrometres each, so
``s = 1`` is the widest field and ``s = 10`` is ten times closer, as 40X -> 400X in BreakHis.
Each view is read from the pyramid level closest above the needed resolution and resized
with an area filter (never up-sampled unless the scan's own resolution is coarser).

The micrometres per pixel of level 0 come from the slide (``openslide.mpp-x``, which OpenSlide
fills from the vendor metadata or the TIFF resolution tags); a slide without them is read
with ``assume_mpp`` and a warning.

Needs the optional extra ``wsi``: ``pip install 'mpcs[wsi]'`` (openslide-python and the
OpenSlide library as the ``openslide-bin`` wheel).

Example:
    >>> data = WSIPairData(list_slides("slides/"), input_size=224, mpp_at_1x=2.0)  # doctest: +SKIP
    >>> v1, v2 = data.views(np.arange(8), np.full(8, 1.0), np.full(8, 4.0), rng)   # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor

from mpcs.core.errors import DataError, MpcsError

log = logging.getLogger(__name__)

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs",
                    ".bif", ".svslide", ".dcm")
#: Grey level above which a thumbnail pixel is background (glass).
WHITE_LEVEL = 220
#: Smallest saturation (0..255) that can count as tissue, whatever Otsu says.
MIN_SATURATION = 20


def _openslide() -> Any:
    try:
        import openslide
    except ImportError as exc:
        raise MpcsError("whole-slide images need OpenSlide: pip install 'mpcs[wsi]' "
                        f"(openslide-python and openslide-bin); import failed: {exc}") from None
    return openslide


def open_slide(path: str | os.PathLike[str]) -> Any:
    """Open a slide with OpenSlide; errors name the file."""
    openslide = _openslide()
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: slide file not found")
    try:
        return openslide.OpenSlide(str(p))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
        raise DataError(f"{p}: OpenSlide cannot read this slide ({exc})") from None


def slide_mpp(slide: Any, path: str | os.PathLike[str], assume_mpp: float | None
              ) -> tuple[float, bool]:
    """Micrometres per level-0 pixel and whether the slide's metadata gave it.

    Raises:
        DataError: no resolution in the metadata and ``assume_mpp`` is None.
    """
    props = slide.properties
    try:
        mx, my = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
        if mx > 0 and my > 0:
            return (mx + my) / 2, True
    except (KeyError, ValueError):
        pass
    if assume_mpp is None:
        raise DataError(f"{path}: the slide does not record its resolution (no "
                        f"openslide.mpp-x); set wsi.assume_mpp to the scanner's µm per pixel")
    log.warning("%s: no resolution in the slide's metadata; assuming %.3g µm per pixel "
                "(wsi.assume_mpp)", path, assume_mpp)
    return float(assume_mpp), False


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 ``values`` (the level maximising between-class variance)."""
    hist = np.bincount(np.asarray(values, dtype=np.uint8).ravel(), minlength=256).astype(float)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256)
    w0 = np.cumsum(hist)
    w1 = total - w0
    m0 = np.cumsum(hist * levels)
    mean_all = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean_all * w0 / total - m0) ** 2 / (w0 * w1 / total)
    between[~np.isfinite(between)] = -1
    return int(np.argmax(between))


def tissue_mask_rgb(rgb: np.ndarray) -> np.ndarray:
    """Tissue mask of an RGB uint8 ``[H, W, 3]`` thumbnail: saturation above
    ``max(Otsu, MIN_SATURATION)`` and grey level below :data:`WHITE_LEVEL`."""
    hsv = np.asarray(Image.fromarray(rgb).convert("HSV"))
    sat = hsv[..., 1]
    grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    thr = max(otsu_threshold(sat), MIN_SATURATION)
    return (sat > thr) & (grey < WHITE_LEVEL)


def tissue_mask(slide: Any, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """Tissue mask on a thumbnail of at most ``max_side`` pixels and its downsample factor
    (level-0 pixels per mask pixel)."""
    thumb = slide.get_thumbnail((max_side, max_side)).convert("RGB")
    w0, _ = slide.dimensions
    return tissue_mask_rgb(np.asarray(thumb)), w0 / thumb.size[0]


def _box_mean(mask: np.ndarray, k: int) -> np.ndarray:
    """Mean of ``mask`` over the k x k box centred on each pixel (zero outside)."""
    pad = k // 2
    m = np.pad(mask.astype(np.float64), ((pad + 1, k - pad), (pad + 1, k - pad)))
    c = m.cumsum(0).cumsum(1)
    h, w = mask.shape
    s = c[k:k + h, k:k + w] - c[:h, k:k + w] - c[k:k + h, :w] + c[:h, :w]
    return s / (k * k)


def sample_locations(mask: np.ndarray, downsample: float, field: float, n: int,
                     min_tissue: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` level-0 centres ``[n, 2]`` (x, y) whose ``field x field`` (level-0 pixels)
    square lies inside the slide and is at least ``min_tissue`` tissue; fewer when fewer
    mask pixels qualify (each mask pixel at most once, a random point inside it)."""
    k = max(1, int(math.ceil(field / downsample)))
    frac = _box_mean(mask, k)
    h, w = mask.shape
    ys, xs = np.nonzero(frac >= min_tissue)
    half = field / 2
    cx, cy = (xs + 0.5) * downsample, (ys + 0.5) * downsample
    inside = ((cx - half >= 0) & (cy - half >= 0) & (cx + half <= w * downsample)
              & (cy + half <= h * downsample))
    xs, ys = xs[inside], ys[inside]
    if xs.size == 0:
        return np.zeros((0, 2))
    pick = rng.choice(xs.size, size=min(n, xs.size), replace=False)
    jitter = rng.uniform(0, 1, (pick.size, 2))
    centres = np.stack([xs[pick] + jitter[:, 0], ys[pick] + jitter[:, 1]], axis=1) * downsample
    return np.clip(centres, half, [w * downsample - half, h * downsample - half])


def read_view(slide: Any, centre: Sequence[float], mpp: float, mpp0: float, size: int
              ) -> np.ndarray:
    """The ``size x size`` view at ``mpp`` µm/pixel centred on level-0 point ``centre``:
    uint8 ``[3, size, size]`` (read from the best pyramid level, area-resized; regions
    outside the slide are white)."""
    want = mpp / mpp0                      # level-0 pixels per output pixel
    level = slide.get_best_level_for_downsample(want)
    ds = slide.level_downsamples[level]
    span0 = size * want                    # side of the field in level-0 pixels
    side = max(1, int(math.ceil(span0 / ds)))
    x0, y0 = int(round(centre[0] - span0 / 2)), int(round(centre[1] - span0 / 2))
    region = slide.read_region((x0, y0), level, (side, side))
    white = Image.new("RGBA", region.size, (255, 255, 255, 255))
    rgb = Image.alpha_composite(white, region).convert("RGB")
    if rgb.size != (size, size):
        method = Image.Resampling.BOX if side > size else Image.Resampling.BILINEAR
        rgb = rgb.resize((size, size), method)
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def list_slides(path: str | os.PathLike[str]) -> list[Path]:
    """A slide file, or the slide files (:data:`SLIDE_EXTENSIONS`) in a folder, recursively."""
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise DataError(f"{p}: no such slide file or folder")
    found = sorted(f for f in p.rglob("*") if f.is_file()
                   and f.suffix.lower() in SLIDE_EXTENSIONS and not f.name.startswith("."))
    if not found:
        raise DataError(f"{p}: no whole-slide image found (extensions "
                        f"{', '.join(SLIDE_EXTENSIONS)})")
    return found


@dataclass(frozen=True)
class WSIOptions:
    """Sampling settings (config section ``wsi``)."""

    mpp_at_1x: float = 2.0           # µm per view pixel at relative magnification 1
    locations_per_slide: int = 64
    min_tissue: float = 0.5          # tissue fraction of the widest field at a location
    assume_mpp: float | None = None  # level-0 µm/pixel for slides without metadata
    mask_max_side: int = 1024


class WSIPairData:
    """Pair source of tissue locations on whole-slide images, read at any scale on demand.

    ``samples`` has one row per location: ``path``, ``patient_id`` (the slide's file stem),
    ``x``, ``y`` (level-0 centre), ``mpp0`` and ``mpp_from_metadata``.

    Args:
        slides: slide files.
        input_size: side of the views.
        options: :class:`WSIOptions`.
        max_scale: the largest relative magnification that will be requested (for a
            one-time warning when the scan cannot resolve it).
        seed: seed of the location sampling.
    """

    def __init__(self, slides: Sequence[str | os.PathLike[str]], input_size: int,
                 options: WSIOptions = WSIOptions(), max_scale: float = 10.0,
                 seed: int = 0, patients: Sequence[str] | None = None) -> None:
        self.input_size, self.options = int(input_size), options
        self._handles: dict[str, Any] = {}
        self.dropped: list[tuple[str, str, str]] = []
        rng = np.random.default_rng(seed)
        wanted = None if patients is None else set(map(str, patients))
        rows = []
        for path in slides:
            sid = Path(path).stem
            if wanted is not None and sid not in wanted:
                continue
            slide = self._slide(path)
            mpp0, from_meta = slide_mpp(slide, path, options.assume_mpp)
            if options.mpp_at_1x / max_scale < mpp0 * 0.999:
                log.warning("%s: scanned at %.3g µm/pixel, coarser than the %.3g µm/pixel of "
                            "the most zoomed-in view (relative magnification %.3g); those views "
                            "are up-sampled", path, mpp0, options.mpp_at_1x / max_scale,
                            max_scale)
            mask, ds = tissue_mask(slide, options.mask_max_side)
            field = self.input_size * options.mpp_at_1x / mpp0
            centres = sample_locations(mask, ds, field, options.locations_per_slide,
                                       options.min_tissue, rng)
            if len(centres) == 0:
                reason = (f"no {field * mpp0:.0f} µm field with {options.min_tissue:.0%} tissue "
                          f"(tissue {mask.mean():.1%} of the thumbnail)")
                self.dropped.append((str(path), str(path), reason))
                log.warning("%s: %s; slide left out (lower wsi.min_tissue or wsi.mpp_at_1x)",
                            path, reason)
                continue
            rows += [{"path": str(path), "patient_id": sid, "x": float(x), "y": float(y),
                      "mpp0": mpp0, "mpp_from_metadata": from_meta} for x, y in centres]
        if not rows:
            raise DataError("no tissue location found on any slide "
                            f"({len(slides)} given); see the warnings above")
        self.samples = pd.DataFrame(rows)
        self.attrs: dict[str, list] = {"skipped": []}  # as a BreakHis samples table's

    def _slide(self, path: str | os.PathLike[str]) -> Any:
        key = str(path)
        if key not in self._handles:
            self._handles[key] = open_slide(path)
        return self._handles[key]

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, i: int, scale: float) -> np.ndarray:
        """Location ``i`` at relative magnification ``scale``: uint8 ``[3, S, S]``."""
        row = self.samples.iloc[int(i)]
        return read_view(self._slide(row["path"]), (row["x"], row["y"]),
                         self.options.mpp_at_1x / float(scale), float(row["mpp0"]),
                         self.input_size)

    def stack(self, i: int, scales: Sequence[float]) -> np.ndarray:
        """The same location at several magnifications: uint8 ``[K, 3, S, S]``."""
        return np.stack([self.read(i, s) for s in scales])

    def views(self, index: np.ndarray, s1: np.ndarray, s2: np.ndarray,
              rng: np.random.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Views of locations ``index`` at relative magnifications ``s1`` and ``s2`` ([N], or
        view specs ``[N, 3]`` whose column 0 is the scale): two uint8 tensors
        ``[N, 3, S, S]`` (``rng`` unused: locations are fixed)."""
        s1, s2 = np.asarray(s1), np.asarray(s2)
        if s1.ndim == 2:
            s1, s2 = s1[:, 0], s2[:, 0]
        a = np.stack([self.read(i, s) for i, s in zip(index, s1, strict=True)])
        b = np.stack([self.read(i, s) for i, s in zip(index, s2, strict=True)])
        return torch.from_numpy(a), torch.from_numpy(b)

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def write_pyramid_tiff(path: str | os.PathLike[str], rgb: np.ndarray, mpp: float | None,
                       levels: int = 3, tile: int = 256) -> Path:
    """Write ``rgb`` (uint8 ``[H, W, 3]``) as a tiled pyramidal TIFF (one IFD per level,
    each half the size of the previous) that OpenSlide opens as a generic tiled TIFF; with
    ``mpp`` the resolution tags record it (OpenSlide reports it as ``openslide.mpp-x``).
    Used by the tests and the WSI demo; needs ``tifffile``."""
    import tifffile

    path = Path(path)
    img = Image.fromarray(rgb)
    with tifffile.TiffWriter(path) as tw:
        for i in range(levels):
            d = 2 ** i
            lv = img if d == 1 else img.resize((max(1, rgb.shape[1] // d),
                                                max(1, rgb.shape[0] // d)),
                                               Image.Resampling.BOX)
            extra: dict[str, Any] = {}
            if mpp is not None:
                extra = {"resolution": (1e4 / (mpp * d), 1e4 / (mpp * d)),
                         "resolutionunit": "CENTIMETER"}
            tw.write(np.asarray(lv), tile=(tile, tile), photometric="rgb",
                     compression="zlib", subfiletype=1 if i else 0, **extra)
    return path
