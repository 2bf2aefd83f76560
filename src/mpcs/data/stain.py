"""Stain normalisation of H&E patches (Reinhard, Macenko) through torchstain.

A :class:`StainNormaliser` is fitted once on a reference image given by path and then maps
uint8 RGB patches ``[H, W, 3]`` to the reference's colour statistics (Reinhard: mean and std
of each LAB channel; Macenko: the stain matrix and the 99th-percentile concentrations).

Normalisation of a patch can fail: Macenko needs enough stained pixels to estimate the two
stain vectors, and both methods break on a uniform (blank) patch. :meth:`normalise` then
returns the RAW patch with ``ok=False``; callers count these fallbacks and report them
(:func:`mpcs.data.patches.extract_patches` logs the count and records it per patch).

Example:
    >>> norm = StainNormaliser("macenko", "reference.tif")          # doctest: +SKIP
    >>> out, ok = norm.normalise(patch)                               # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np

from mpcs.core.errors import ConfigError, DataError
from mpcs.data.images import load_rgb

log = logging.getLogger(__name__)

STAIN_METHODS: tuple[str, ...] = ("none", "reinhard", "macenko")
#: Light transmitted through an empty slide and the optical density below which a pixel is
#: background, as in Macenko et al. (and torchstain's defaults).
_IO, _BETA = 240, 0.15


def tissue_fraction(rgb: np.ndarray, beta: float = _BETA, io: int = _IO) -> float:
    """Fraction of pixels of a uint8 ``[H, W, 3]`` image whose optical density reaches
    ``beta`` in every channel (Macenko's "not transparent" pixels).

    Example:
        >>> tissue_fraction(np.full((4, 4, 3), 255, np.uint8))
        0.0
    """
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1.0) / io)
    return float(np.all(od >= beta, axis=1).mean()) if od.size else 0.0


def file_identity(path: str | os.PathLike[str]) -> str:
    """``sha1(resolved path, size, mtime)`` of a file, to key caches that depend on it."""
    p = Path(path).resolve()
    st = p.stat()
    return hashlib.sha1(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


class StainNormaliser:
    """Reinhard or Macenko normalisation fitted on one reference image.

    Args:
        method: ``"reinhard"`` or ``"macenko"``.
        reference: path of the reference image (any format :func:`load_rgb` reads).
        min_tissue: Macenko only: a patch with a smaller :func:`tissue_fraction` is not
            normalised (falls back to the raw patch); the reference must reach it too.

    Raises:
        ConfigError: an unknown method or a missing reference path.
        DataError: the reference cannot be read, or normalisation cannot be fitted on it.
    """

    def __init__(self, method: str, reference: str | os.PathLike[str],
                 min_tissue: float = 0.05) -> None:
        if method not in STAIN_METHODS[1:]:
            raise ConfigError(f"stain normalisation must be one of "
                              f"{', '.join(STAIN_METHODS[1:])}, got {method!r}")
        if reference is None or not Path(reference).is_file():
            raise ConfigError(f"stain normalisation ({method}) needs a reference image; "
                              f"{reference!r} is not a file")
        from torchstain.numpy.normalizers import (
            NumpyMacenkoNormalizer,
            NumpyReinhardNormalizer,
        )

        self.method = method
        self.reference = str(Path(reference).resolve())
        self.min_tissue = float(min_tissue)
        self.identity = f"{method}|{file_identity(reference)}|{self.min_tissue:g}"
        ref = np.asarray(load_rgb(reference))
        self._norm = (NumpyMacenkoNormalizer() if method == "macenko"
                      else NumpyReinhardNormalizer())
        if method == "macenko" and tissue_fraction(ref) < self.min_tissue:
            raise DataError(f"{reference}: too little stained tissue to fit Macenko stain "
                            f"normalisation ({100 * tissue_fraction(ref):.1f}% < "
                            f"{100 * self.min_tissue:g}%); choose another reference image")
        try:
            with np.errstate(divide="raise", invalid="raise", over="raise"):
                self._norm.fit(ref)
        except (ArithmeticError, ValueError, IndexError, np.linalg.LinAlgError) as e:
            raise DataError(f"{reference}: cannot fit {method} stain normalisation on this "
                            f"reference image ({e})") from None

    def normalise(self, rgb: np.ndarray) -> tuple[np.ndarray, bool]:
        """``(normalised, True)``, or ``(rgb, False)`` where normalisation fails.

        ``rgb`` is uint8 ``[H, W, 3]``; the result has the same shape and dtype.
        """
        if rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"expected an RGB patch [H, W, 3], got shape {rgb.shape}")
        if self.method == "macenko" and tissue_fraction(rgb) < self.min_tissue:
            return rgb, False
        if float(rgb.reshape(-1, 3).std(axis=0).min()) < 1e-3:
            return rgb, False  # a uniform channel: LAB standardisation divides by zero
        try:
            with np.errstate(divide="raise", invalid="raise", over="raise"):
                if self.method == "macenko":
                    out = self._norm.normalize(rgb, stains=False)[0]
                else:
                    out = self._norm.normalize(rgb)
        except (ArithmeticError, ValueError, IndexError, np.linalg.LinAlgError):
            return rgb, False
        out = np.asarray(out)
        if out.shape != rgb.shape:
            return rgb, False
        return np.ascontiguousarray(out.astype(np.uint8)), True


def build_normaliser(method: str, reference: str | os.PathLike[str] | None,
                     min_tissue: float = 0.05) -> StainNormaliser | None:
    """``None`` for ``method="none"``, else a fitted :class:`StainNormaliser`."""
    if method == "none":
        return None
    return StainNormaliser(method, reference, min_tissue=min_tissue)  # type: ignore[arg-type]
