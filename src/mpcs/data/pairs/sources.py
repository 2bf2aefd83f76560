"""Where pre-training pairs come from (config ``data.source``), with one interface.

* ``breakhis``: the magnifications of each sample of a BreakHis-layout folder
  (:class:`mpcs.data.breakhis_pairs.PairData`); pairs are magnification indices.
* ``zoom``: any folder of single-scale images; nested crops around a common centre
  (:class:`mpcs.data.zoom.ZoomPairData`).
* ``wsi``: whole-slide images; tissue locations read at any physical scale
  (:class:`mpcs.data.wsi.WSIPairData`).

* a list, e.g. ``[breakhis, zoom]``: several sources of one folder in one run
  (:class:`MixedPairData`); ``data.source_weights`` gives each source's share of every
  epoch (default: in proportion to its samples). Real collections hold a few samples at
  several magnifications and many single images; this lets both contribute. With
  ``pairs.strategy=continuous`` the ``breakhis`` part draws random pairs (two distinct
  magnifications: the discrete strategy with the same degrees of freedom).

For ``zoom`` and ``wsi`` the pair sampler yields ``(scale, u, v)`` view specs
(:class:`mpcs.data.pairs.ScaleViewSampler`); every source answers
``views(index, first, second) -> (view1, view2)`` and has ``samples`` (with ``patient_id``)
and ``dropped``; :func:`create_row_sampler` gives the epoch sampler of a loaded source.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mpcs.core.errors import DataError
from mpcs.data.pairs.breakhis import PairData
from mpcs.data.pairs.samplers import (
    MAGNIFICATION_SCALES,
    RowSampler,
    SameImagePair,
    ScaleViewSampler,
    create_pair_sampler,
    relative_scale,
    scales_of,
)
from mpcs.data.pairs.wsi import WSIOptions, WSIPairData, list_slides
from mpcs.data.pairs.zoom import ZoomPairData, default_base_size, zoom_image_table
from mpcs.data.transforms import to_float

log = logging.getLogger(__name__)

#: The pair sources ``data.source`` names (one, or a list of them mixed in one run).
SOURCE_NAMES: tuple[str, ...] = ("breakhis", "zoom", "wsi")


def max_scale(cfg: Mapping[str, Any]) -> float:
    """The largest relative magnification the configured sampler can ask for."""
    p = cfg["pairs"]
    if p["strategy"] == "continuous":
        return float(p["scale_range"][1])
    return float(MAGNIFICATION_SCALES.max())


def source_names(cfg: Mapping[str, Any]) -> list[str]:
    """The configured sources as a list (``data.source`` is a name or a list of names)."""
    source = cfg["data"].get("source", "breakhis")
    return list(source) if isinstance(source, list) else [source]


def is_mixed(cfg: Mapping[str, Any]) -> bool:
    return len(source_names(cfg)) > 1


def create_view_sampler(cfg: Mapping[str, Any], same_image: bool = False,
                        source: str | None = None) -> Any:
    """The pair sampler of one source (default: the configured one): BreakHis index pairs, or
    scale view specs."""
    p = cfg["pairs"]
    source = source or source_names(cfg)[0]
    strategy = p["strategy"]
    if source == "breakhis" and strategy == "continuous" and is_mixed(cfg):
        strategy = "random"  # see the module docstring
    base = create_pair_sampler(strategy, tuple(p["scale_range"]), p["min_ratio"])
    if source == "breakhis":
        return SameImagePair() if same_image else base
    return ScaleViewSampler(base, same_image)


def breakhis_strategy(cfg: Mapping[str, Any]) -> str:
    """The strategy the ``breakhis`` source uses (random for continuous in a mixed run)."""
    strategy = cfg["pairs"]["strategy"]
    return "random" if strategy == "continuous" and is_mixed(cfg) else strategy


def create_row_sampler(cfg: Mapping[str, Any], data: Any, same_image: bool = False,
                       source: str | None = None) -> RowSampler:
    """The epoch sampler (order and pairs, :class:`mpcs.data.pairs.RowSampler`) of a loaded
    source."""
    if isinstance(data, MixedPairData):
        parts = [create_row_sampler(cfg, part, same_image, name)
                 for name, part in zip(data.names, data.parts, strict=True)]
        return MixedRowSampler(parts, data.sizes, data.fractions)
    sampler = create_view_sampler(cfg, same_image, source)
    if isinstance(data, PairData):
        return data.row_sampler(sampler)
    return RowSampler(sampler)


def load_scale_source(cfg: Mapping[str, Any], data_dir: str | Path, progress: bool = True,
                      source: str | None = None) -> Any:
    """A ``zoom`` or ``wsi`` pair source for ``data_dir``, restricted to ``data.patients``.

    Raises:
        DataError: nothing usable in ``data_dir`` (names it), or no listed patient found.
    """
    d = cfg["data"]
    source = source_names(cfg)[-1] if source is None else source
    if source == "zoom":
        images = zoom_image_table(data_dir, d["zoom_magnification"])
        images = _restrict(images, d["patients"], data_dir)
        log.info("zoom: %d images of %d patients (data.zoom_magnification=%s)", len(images),
                 images["patient_id"].nunique(), d["zoom_magnification"])
        base = d["zoom_base_size"] or default_base_size(d["input_size"], max_scale(cfg))
        return ZoomPairData(images, d["input_size"], base, progress=progress,
                            on_bad_image=d["on_bad_image"])
    if source == "wsi":
        slides = list_slides(data_dir)
        return WSIPairData(slides, d["input_size"], WSIOptions(**cfg["wsi"]),
                           max_scale=max_scale(cfg), seed=int(cfg["seed"]),
                           patients=d["patients"])
    raise ValueError(f"not a scale source: {source!r}")


def _restrict(table: Any, patients: Any, data_dir: str | Path) -> Any:
    """The rows of ``patients``; an unknown patient, or (BreakHis trees) one without an image
    at the chosen zoom magnification, is an error that names them."""
    if patients is None:
        return table
    wanted = set(map(str, patients))
    known = set(table.attrs.get("patients", table["patient_id"]))
    unknown = sorted(wanted - known)
    if unknown:
        raise DataError(f"{data_dir}: patients not in the data set: {', '.join(unknown[:5])}"
                        + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    lacking = sorted(wanted - set(table["patient_id"]))
    if lacking:
        mag = table.attrs.get("magnification", "all")
        raise DataError(
            f"{data_dir}: {len(lacking)} of the {len(wanted)} pre-training patients have no "
            f"image at {mag}: {', '.join(lacking[:5])}"
            + (f" and {len(lacking) - 5} more" if len(lacking) > 5 else "")
            + "; set data.zoom_magnification=all (every image) or lowest (each patient's "
            "lowest magnification), or leave these patients out")
    return table[table["patient_id"].isin(wanted)].reset_index(drop=True)


def pair_scale_rows(epoch: int, step: int, index: np.ndarray, first: np.ndarray,
                    second: np.ndarray) -> list[tuple[int, int, int, float, float, float]]:
    """Rows ``(epoch, step, sample, scale1, scale2, relative)`` for ``pair_scales.csv``."""
    s1, s2 = scales_of(first, second)
    rel = relative_scale(s1, s2)
    return [(epoch, step, int(i), float(a), float(b), float(r))
            for i, a, b, r in zip(index, s1, s2, rel, strict=True)]


def source_fractions(names: Sequence[str], sizes: Sequence[int],
                     weights: Sequence[float] | None) -> np.ndarray:
    """Each source's share of an epoch: ``weights`` normalised, or the sources' sizes."""
    w = np.asarray(sizes if weights is None else weights, dtype=np.float64)
    if len(w) != len(names):
        raise DataError(f"data.source_weights has {len(w)} values for {len(names)} sources "
                        f"({', '.join(names)})")
    return w / w.sum()


class MixedPairData:
    """Several pair sources in one run: rows ``0..n_1-1`` are the first source's samples,
    the next ``n_2`` the second's, and so on; views come back as float tensors in [0, 1].

    Args:
        names: the source names (``breakhis``, ``zoom``, ``wsi``).
        parts: the loaded sources, one per name.
        weights: each source's share of an epoch (None: in proportion to the samples).
    """

    def __init__(self, names: Sequence[str], parts: Sequence[Any],
                 weights: Sequence[float] | None = None) -> None:
        self.names, self.parts = list(names), list(parts)
        empty = [n for n, p in zip(self.names, self.parts, strict=True) if len(p) == 0]
        if empty:
            raise DataError(f"pair source {', '.join(empty)} has no sample to pair")
        self.sizes = [len(p) for p in self.parts]
        self.offsets = np.cumsum([0, *self.sizes[:-1]])
        self.fractions = source_fractions(self.names, self.sizes, weights)
        self.samples = pd.concat(
            [p.samples[["patient_id"]].astype(str).assign(source=n)
             for n, p in zip(self.names, self.parts, strict=True)], ignore_index=True)
        self.dropped = [d for p in self.parts for d in p.dropped]
        self.attrs = {"skipped": []}
        log.info("mixed pairs: %s", ", ".join(
            f"{n} {size} samples ({f:.0%} of each epoch)"
            for n, size, f in zip(self.names, self.sizes, self.fractions, strict=True)))

    def __len__(self) -> int:
        return int(sum(self.sizes))

    def views(self, index: np.ndarray, first: np.ndarray, second: np.ndarray
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float ``[N, 3, S, S]`` views in [0, 1] of rows ``index``; ``first``/``second`` are
        view specs ``[N, 3]`` (:class:`MixedRowSampler`)."""
        index = np.asarray(index)
        out1: torch.Tensor | None = None
        out2: torch.Tensor | None = None
        for part, start, size in zip(self.parts, self.offsets, self.sizes, strict=True):
            mask = (index >= start) & (index < start + size)
            if not mask.any():
                continue
            a, b = part.views(index[mask] - start, first[mask], second[mask])
            a, b = to_float(a), to_float(b)
            if out1 is None:
                out1 = torch.empty((len(index), *a.shape[1:]), dtype=a.dtype)
                out2 = torch.empty_like(out1)
            where = torch.from_numpy(np.flatnonzero(mask))
            out1[where], out2[where] = a, b
        assert out1 is not None and out2 is not None
        return out1, out2


class MixedRowSampler(RowSampler):
    """The epoch sampler of :class:`MixedPairData`: each epoch takes ``fractions[i]`` of its
    rows from source ``i`` (without repeats while the source has rows left, then another
    pass), shuffled together; each row's pair comes from its source's sampler, as a view
    spec ``(scale, u, v)`` (BreakHis magnifications as their relative scales)."""

    def __init__(self, parts: Sequence[RowSampler], sizes: Sequence[int],
                 fractions: Sequence[float]) -> None:
        self.parts, self.sizes = list(parts), [int(n) for n in sizes]
        self.offsets = np.cumsum([0, *self.sizes[:-1]])
        self.fractions = np.asarray(fractions, dtype=np.float64)
        self.name = "+".join(p.name for p in self.parts)

    def epoch_order(self, n: int, rng: np.random.Generator) -> np.ndarray:
        counts = np.floor(self.fractions * n).astype(np.int64)
        # largest remainders get the rows that rounding down left over
        rest = np.argsort(-(self.fractions * n - counts), kind="stable")[:n - counts.sum()]
        counts[rest] += 1
        chunks = []
        for size, start, count in zip(self.sizes, self.offsets, counts, strict=True):
            passes = -(-int(count) // size)
            rows = np.concatenate([rng.permutation(size) for _ in range(passes)])[:count]
            chunks.append(rows + start)
        return rng.permutation(np.concatenate(chunks))

    def sample_rows(self, index: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
        index = np.asarray(index)
        first, second = np.zeros((len(index), 3)), np.zeros((len(index), 3))
        for part, start, size in zip(self.parts, self.offsets, self.sizes, strict=True):
            mask = (index >= start) & (index < start + size)
            if mask.any():
                a, b = part.sample_rows(index[mask] - start, rng)
                first[mask], second[mask] = _as_spec(a), _as_spec(b)
        return first, second


def _as_spec(pairs: np.ndarray) -> np.ndarray:
    """View specs ``[n, 3]`` from BreakHis magnification indices ``[n]`` (or specs)."""
    pairs = np.asarray(pairs)
    if pairs.ndim == 2:
        return pairs
    return np.column_stack([MAGNIFICATION_SCALES[pairs], np.zeros((len(pairs), 2))])
