"""The pairs a pre-training run trains on: finding and loading the pair sources, the images
left out, each epoch's draws (order, magnifications) per step, each rank's pixels, and the
optional log of the pairs' scales.

Example:
    >>> batch_bounds(10, 4, drop_last=False, world_size=2)
    [(0, 4), (4, 8)]
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mpcs.core.errors import ConfigError, DataError, OutputError
from mpcs.core.io import atomic_write_text
from mpcs.core.runtime import default_cache_dir
from mpcs.core.tables import safe_rows
from mpcs.data.loader import pin
from mpcs.data.pairs.breakhis import PairData, pair_samples
from mpcs.data.pairs.samplers import as_row_sampler
from mpcs.data.pairs.sources import (
    MixedPairData,
    breakhis_strategy,
    load_scale_source,
    pair_scale_rows,
    source_names,
)
from mpcs.engine.distributed import SINGLE, DistContext, guarded, shard

log = logging.getLogger(__name__)

SKIPPED_IMAGES = "skipped_images.csv"
PAIR_SCALES = "pair_scales.csv"


# --------------------------------------------------------------------------- sources


def find_pair_sources(cfg: Mapping[str, Any], data_dir: str | Path, progress: bool
                      ) -> list[tuple[str, Any]]:
    """``(name, source)`` of each configured source: the pairable samples of ``breakhis``
    (a table; decoded by :func:`load_pair_data`), or a loaded ``zoom``/``wsi`` source."""
    d, p = cfg["data"], cfg["pairs"]
    found: list[tuple[str, Any]] = []
    for name in source_names(cfg):
        if name == "breakhis":
            found.append((name, pair_samples(data_dir, d["patients"],
                                             on_bad_image=d["on_bad_image"],
                                             strategy=breakhis_strategy(cfg),
                                             complete_only=p["complete_only"])))
        else:
            found.append((name, load_scale_source(cfg, data_dir, progress, source=name)))
    return found


def sample_count(sources: Sequence[tuple[str, Any]]) -> int:
    """Samples of all sources together (before any decoding)."""
    return sum(len(source) for _, source in sources)


def load_pair_data(cfg: Mapping[str, Any], sources: Sequence[tuple[str, Any]],
                   progress: bool, ctx: DistContext) -> Any:
    """The pair data of the run: each source loaded (a mixed source when several)."""
    parts = [load_source(cfg, source, progress, ctx) for _, source in sources]
    if len(parts) == 1:
        return parts[0]
    return MixedPairData([name for name, _ in sources], parts, cfg["data"]["source_weights"])


def load_source(cfg: Mapping[str, Any], samples: Any, progress: bool, ctx: DistContext) -> Any:
    """Decoded pixels on every rank; with the cache, the node-local rank 0 builds it first
    and the node's other ranks then open it (one decode per machine, not per process)."""
    if not isinstance(samples, pd.DataFrame):  # a zoom / wsi source, already loaded
        return samples
    d = cfg["data"]
    cache_dir = (d["cache_dir"] or default_cache_dir()) if d["use_cache"] else None

    def build() -> PairData:
        return PairData(samples, d["input_size"], cache_dir, progress=progress,
                        on_bad_image=d["on_bad_image"],
                        complete_only=cfg["pairs"]["complete_only"],
                        strategy=breakhis_strategy(cfg))

    if cache_dir is None or not ctx.enabled:
        data = guarded(ctx, build)
    else:
        data = guarded(ctx, build, run_here=ctx.local_rank == 0)
        later = guarded(ctx, build, run_here=ctx.local_rank != 0)
        data = data if later is None else later
    assert data is not None
    return data


# --------------------------------------------------------------------------- images left out


def skipped_images(sources: Sequence[tuple[str, Any]], data: Any) -> list[tuple[str, str, str]]:
    """``(path, stage, reason)`` of every image left out: by the scan (header check) or by
    the decode (its sample then loses its pairs)."""
    rows = [(p, "scan", r) for _, source in sources for p, r in source.attrs.get("skipped", [])]
    rows += [(p, "decode", f"{r}; sample {key} dropped from pre-training pairs")
             for key, p, r in data.dropped]
    return rows


def write_skipped(run_dir: Path, rows: Sequence[tuple[str, str, str]], data: Any) -> Path:
    """``RUN/skipped_images.csv`` (``data.on_bad_image=skip``), and a warning when any."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "stage", "reason"])
    writer.writerows(safe_rows(rows, run_dir / SKIPPED_IMAGES))
    path = run_dir / SKIPPED_IMAGES
    atomic_write_text(path, buf.getvalue())
    if rows:
        log.warning("skipped %d unusable image(s) (%d found by the scan, %d failed to "
                    "decode; %d sample(s) dropped from pairs by decode failures); listed "
                    "in %s", len(rows), len(rows) - len(data.dropped), len(data.dropped),
                    len({k for k, _, _ in data.dropped}), path)
    return path


def require_pairs(data: Any, sources: Sequence[tuple[str, Any]], data_dir: str | Path,
                  run_dir: Path) -> None:
    """Refuse data that lost every sample to decode failures."""
    if len(data) == 0:
        raise DataError(f"{data_dir}: every one of the {sample_count(sources)} samples lost an "
                        f"image it needs to a decode failure; nothing is left to pre-train on "
                        f"(see {run_dir / SKIPPED_IMAGES})")


# --------------------------------------------------------------------------- steps


def batch_bounds(num_samples: int, batch_size: int, drop_last: bool,
                 world_size: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of each step's global batch within the epoch's sample order.

    ``batch_size`` is the GLOBAL batch (pairs per optimiser step over all processes). With
    ``drop_last=False`` the last, shorter batch is cut to a multiple of ``world_size`` (every
    rank needs the same number of pairs) and left out when that leaves fewer than 2 pairs
    per rank (NT-Xent needs a negative); a single process thus never trains on one pair.

    Example:
        >>> batch_bounds(11, 4, drop_last=False)
        [(0, 4), (4, 8), (8, 11)]
    """
    full = num_samples // batch_size
    bounds = [(i * batch_size, (i + 1) * batch_size) for i in range(full)]
    rest = num_samples - full * batch_size
    if not drop_last and rest:
        rest -= rest % world_size
        if rest >= 2 * world_size:
            bounds.append((full * batch_size, full * batch_size + rest))
    return bounds


def steps_per_epoch(num_samples: int, batch_size: int, drop_last: bool,
                    world_size: int = 1) -> int:
    """Optimiser steps per epoch (see :func:`batch_bounds`); refuses 0 with a clear error."""
    steps = len(batch_bounds(num_samples, batch_size, drop_last, world_size))
    if steps == 0:
        raise ConfigError(
            f"train.batch_size={batch_size} is larger than the {num_samples} samples available "
            f"for pre-training with train.drop_last={str(drop_last).lower()}: no step would "
            f"run. Lower the batch size" + ("" if not drop_last else
                                             " or set train.drop_last=false") + ".")
    return steps


@dataclass(frozen=True)
class StepPlan:
    """The draws of one step: global pair rows, magnifications, augmentation range."""

    index: np.ndarray
    mag1: np.ndarray
    mag2: np.ndarray


def epoch_plan(num_samples: int, bounds: Sequence[tuple[int, int]], sampler: Any,
               np_rng: np.random.Generator) -> list[StepPlan]:
    """The epoch's sample order and each step's magnification pairs, drawn in the order a
    step-by-step loop draws them (so the plan does not change a seeded run). ``sampler`` is
    a :class:`mpcs.data.pairs.RowSampler` or a plain pair sampler (any sample, any pair)."""
    sampler = as_row_sampler(sampler)
    order = sampler.epoch_order(num_samples, np_rng)
    plans = []
    for start, stop in bounds:
        idx = order[start:stop]
        m1, m2 = sampler.sample_rows(idx, np_rng)
        plans.append(StepPlan(idx, m1, m2))
    return plans


def rank_views(data: PairData, plan: StepPlan, ctx: DistContext = SINGLE,
               pin_memory: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's shard of a step's pairs as two uint8 ``[N/W, 3, S, S]`` tensors (the
    pixels of both magnifications). Pure (no randomness): safe in a background thread."""
    v1, v2 = data.views(shard(plan.index, ctx.rank, ctx.world_size),
                        shard(plan.mag1, ctx.rank, ctx.world_size),
                        shard(plan.mag2, ctx.rank, ctx.world_size))
    return pin(v1, pin_memory), pin(v2, pin_memory)


# --------------------------------------------------------------------------- scale log


def log_pair_scales(run_dir: Path, epoch: int, step: int, plans: Sequence[StepPlan]) -> None:
    """Append the epoch's pairs to ``RUN/pair_scales.csv``: epoch, step, sample, the two
    relative magnifications and their ratio (``pairs.log_scales=true``)."""
    path = run_dir / PAIR_SCALES
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if epoch == 1 or not path.exists():
        writer.writerow(["epoch", "step", "sample", "scale1", "scale2", "relative_scale"])
    for i, plan in enumerate(plans):
        writer.writerows(pair_scale_rows(epoch, step + i + 1, plan.index, plan.mag1, plan.mag2))
    mode = "w" if epoch == 1 else "a"
    try:
        if mode == "a" and path.exists() and _last_csv_epoch(path) >= epoch:
            # resumed after a crash: drop the lines of epochs that are redone
            kept = [x for x in path.read_text().splitlines(keepends=True)
                    if not x[:1].isdigit() or int(x.split(",", 1)[0]) < epoch]
            atomic_write_text(path, "".join(kept))
        with open(path, mode) as f:
            f.write(buf.getvalue())
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _last_csv_epoch(path: Path) -> int:
    """The epoch (first column) of the last complete line of a CSV file, or 0."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 4096))
        lines = f.read().decode(errors="replace").splitlines()
    for line in reversed(lines):
        head = line.split(",", 1)[0]
        if head.isdigit():
            return int(head)
    return 0
