"""Where pre-training pairs come from (config ``data.source``), with one interface.

* ``breakhis``: the four magnifications of each sample of a BreakHis-layout folder
  (:class:`mpcs.engine.pretrain.PairData`); pairs are magnification indices.
* ``zoom``: any folder of single-scale images; nested crops around a common centre
  (:class:`mpcs.data.zoom.ZoomPairData`).
* ``wsi``: whole-slide images; tissue locations read at any physical scale
  (:class:`mpcs.data.wsi.WSIPairData`).

For ``zoom`` and ``wsi`` the pair sampler yields ``(scale, u, v)`` view specs
(:class:`mpcs.data.pairs.ScaleViewSampler`); every source answers
``views(index, first, second) -> (view1, view2)`` and has ``samples`` (with ``patient_id``)
and ``dropped``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mpcs.data.pairs import (
    MAGNIFICATION_SCALES,
    SameImagePair,
    ScaleViewSampler,
    create_pair_sampler,
)
from mpcs.errors import DataError

log = logging.getLogger(__name__)


def max_scale(cfg: Mapping[str, Any]) -> float:
    """The largest relative magnification the configured sampler can ask for."""
    p = cfg["pairs"]
    if p["strategy"] == "continuous":
        return float(p["scale_range"][1])
    return float(MAGNIFICATION_SCALES.max())


def create_view_sampler(cfg: Mapping[str, Any], same_image: bool = False) -> Any:
    """The pair sampler for ``cfg``'s source: BreakHis index pairs, or scale view specs."""
    p = cfg["pairs"]
    base = create_pair_sampler(p["strategy"], tuple(p["scale_range"]), p["min_ratio"])
    if cfg["data"].get("source", "breakhis") == "breakhis":
        return SameImagePair() if same_image else base
    return ScaleViewSampler(base, same_image)


def load_scale_source(cfg: Mapping[str, Any], data_dir: str | Path, progress: bool = True
                      ) -> Any:
    """A ``zoom`` or ``wsi`` pair source for ``data_dir``, restricted to ``data.patients``.

    Raises:
        DataError: nothing usable in ``data_dir`` (names it), or no listed patient found.
    """
    d = cfg["data"]
    source = d["source"]
    if source == "zoom":
        from mpcs.data.zoom import ZoomPairData, default_base_size, list_images

        images = list_images(data_dir)
        images = _restrict(images, d["patients"], data_dir)
        base = d["zoom_base_size"] or default_base_size(d["input_size"], max_scale(cfg))
        return ZoomPairData(images, d["input_size"], base, progress=progress,
                            on_bad_image=d["on_bad_image"])
    if source == "wsi":
        from mpcs.data.wsi import WSIOptions, WSIPairData, list_slides

        slides = list_slides(data_dir)
        return WSIPairData(slides, d["input_size"], WSIOptions(**cfg["wsi"]),
                           max_scale=max_scale(cfg), seed=int(cfg["seed"]),
                           patients=d["patients"])
    raise ValueError(f"not a scale source: {source!r}")


def _restrict(table: Any, patients: Any, data_dir: str | Path) -> Any:
    if patients is None:
        return table
    wanted = set(map(str, patients))
    unknown = sorted(wanted - set(table["patient_id"]))
    if unknown:
        raise DataError(f"{data_dir}: patients not in the data set: {', '.join(unknown[:5])}")
    return table[table["patient_id"].isin(wanted)].reset_index(drop=True)


def pair_scale_rows(epoch: int, step: int, index: np.ndarray, first: np.ndarray,
                    second: np.ndarray) -> list[tuple[int, int, int, float, float, float]]:
    """Rows ``(epoch, step, sample, scale1, scale2, relative)`` for ``pair_scales.csv``."""
    from mpcs.data.pairs import relative_scale, scales_of

    s1, s2 = scales_of(first, second)
    rel = relative_scale(s1, s2)
    return [(epoch, step, int(i), float(a), float(b), float(r))
            for i, a, b, r in zip(index, s1, s2, rel, strict=True)]
