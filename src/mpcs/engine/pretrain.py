"""MPCS pre-training: magnification pairs -> uniform views -> encoder + head -> NT-Xent.

One run lives in one folder ``RUN``:

* ``config.yaml`` and ``run.json``: the resolved configuration, seed, versions, git commit;
* ``metrics.jsonl``: one line per epoch (loss, lr, images/s, seconds, skipped_steps);
* ``checkpoints/last.pt`` (every epoch) and ``checkpoints/epoch_XXXX.pt`` (every k epochs):
  model, optimiser, scheduler, epoch, global step and every RNG state, written atomically,
  so ``--resume`` continues exactly where the last checkpoint left off;
* ``pretrain_patients.txt``: the patients whose images were used (fold training part);
* ``skipped_images.csv`` (with ``data.on_bad_image=skip``): every image left out, with the
  stage that found it (``scan``: header check; ``decode``: full decode in the image cache)
  and the reason. A sample loses its pairs when any of its four images is left out.

Nothing lost, nothing leaked:

* The output folder is checked before any work and created (and locked against a second
  process) before the images are decoded; failing to write it is a clear
  :class:`OutputError`. A folder that holds a run is refused unless ``--resume`` continues
  it or ``--overwrite`` replaces it: the old run is moved to ``RUN.replaced-<time>`` beside
  it and deleted only once the new run has written its first checkpoint.
* ``run.json`` records a fingerprint of the images (:func:`data_fingerprint`); ``--resume``
  refuses other images (added, removed, relabelled, or the same names with other sizes or
  modification times) and names what changed.
* A bad image stops the run with one line naming the file (``data.on_bad_image=error``) or
  is left out and listed (``skip``).
* A non-finite loss or gradient never reaches the weights: ``train.on_nonfinite=stop``
  stops before the optimiser step, naming epoch and step, keeping the last good
  checkpoint; ``skip`` skips that optimiser step (the learning-rate schedule still advances),
  logs and counts it (``skipped_steps`` in ``metrics.jsonl``), and stops anyway when more
  than :data:`MAX_SKIPPED_FRACTION` of an epoch's steps are skipped. Weights are checked to
  be finite before every checkpoint.
* A failed checkpoint write (disk full) stops the run with the message; the previous
  ``last.pt`` is untouched (atomic writes). After a crash, ``--resume`` removes leftover
  temporary files, drops ``metrics.jsonl`` lines of epochs after the checkpoint (they are
  redone) and continues bit-for-bit as an uninterrupted run would (same device and threads).
  Ctrl-C, also during a checkpoint write, ends with :class:`RunInterrupted` naming the last
  checkpoint and its epoch.

Several processes (``torchrun --nproc_per_node N -m mpcs pretrain ...``, see
:mod:`mpcs.engine.distributed`): ``train.batch_size`` is the GLOBAL batch; every rank draws
the same seeded order, magnification pairs and augmentation parameters and trains on its
contiguous slice of each batch (``batch_size / N`` pairs); DDP averages the gradients and
NT-Xent takes its negatives from all ranks, so a step equals one process's step on the whole
batch (with ``distributed.sync_bn`` on CUDA also for BatchNorm). Only rank 0 writes ``RUN``;
``--resume`` gives every rank rank 0's checkpoint.

Structure of a step (kept apart so that other methods can plug in): :func:`epoch_plan` (the
draws), :func:`rank_views` (this rank's pixels, in a background thread, see
:mod:`mpcs.data.loader`), :func:`augment_shard`, :func:`train_step` (which calls
:func:`forward_loss`: model forward -> loss, the method-specific part), then the optimiser
and scheduler steps in the loop.

Example:
    >>> from mpcs.config import resolve
    >>> cfg = resolve(preset="cpu-small", overrides=["train.epochs=1"])
    >>> pretrain(cfg, "data/BreaKHis_v1", "runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import random
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from mpcs.config import PRETRAIN_DEFAULTS, resume_conflicts, with_defaults
from mpcs.core.checkpoint import checkpoint_epoch, load_checkpoint, save_checkpoint
from mpcs.core.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    NonFiniteLossError,
    OutputError,
    RunInterrupted,
)
from mpcs.core.io import append_line, atomic_write_text
from mpcs.core.runtime import autocast_for, default_cache_dir
from mpcs.core.tables import safe_rows
from mpcs.data.cache import CACHE_VERSION, cache_key
from mpcs.data.loader import Prefetcher, loader_settings, pin
from mpcs.data.pairs.breakhis import PATH_COLUMNS, PairData, pair_samples
from mpcs.data.pairs.samplers import as_row_sampler
from mpcs.data.pairs.sources import (
    MixedPairData,
    breakhis_strategy,
    create_row_sampler,
    load_scale_source,
    source_names,
)
from mpcs.data.splits import dataset_fingerprint
from mpcs.data.transforms import AugmentConfig, UniformPairAugment
from mpcs.engine.distributed import (
    SINGLE,
    DistContext,
    all_mean,
    all_true,
    broadcast_object,
    distributed_context,
    guarded,
    per_rank_batch,
    quiet_non_main,
    shard,
)
from mpcs.engine.knn_monitor import build_monitor
from mpcs.engine.optim import build_optimizer, build_scheduler
from mpcs.engine.runinfo import (
    START_RECORDS,
    FolderRules,
    RunFolder,
    check_run_folder,
    last_recorded,
    open_run_folder,
    write_run_info,
)
from mpcs.losses import NTXentLoss
from mpcs.models import MPCSModel, create_mpcs_model
from mpcs.models.encoders import check_weights

log = logging.getLogger(__name__)

#: With ``train.on_nonfinite=skip`` a run stops anyway once more than this fraction of an
#: epoch's steps had to be skipped.
MAX_SKIPPED_FRACTION = 0.1
#: Keys that may differ between a checkpoint's configuration and the resuming one: policies
#: for bad input, which do not change what a good step computes.
RESUME_MAY_DIFFER = ("data.on_bad_image", "train.on_nonfinite", "data.num_workers",
                     "data.prefetch", "data.pin_memory", "distributed.backend",
                     "train.checkpoint_every", "train.last_every", "pairs.log_scales",
                     "monitor.")  # a key ending in "." covers its whole section
SKIPPED_IMAGES = "skipped_images.csv"
#: A pre-training run folder: ``--resume`` continues it; ``--overwrite`` moves the previous
#: run aside until the new one has written its first checkpoint (its resume point).
RUN_FOLDER = FolderRules(resumable=True,
                         replaced_until="once the new run has written its first checkpoint",
                         records=(*START_RECORDS, "pretrain_patients.txt", SKIPPED_IMAGES),
                         subdirs=("checkpoints",))


def _rng_state(np_rng: np.random.Generator, gen: torch.Generator) -> dict[str, Any]:
    return {"numpy": np_rng.bit_generator.state, "torch_aug": gen.get_state(),
            "torch": torch.get_rng_state(), "python": list(random.getstate()[1])}


def _restore_rng(state: Mapping[str, Any], np_rng: np.random.Generator,
                 gen: torch.Generator) -> None:
    np_rng.bit_generator.state = state["numpy"]
    gen.set_state(state["torch_aug"])
    torch.set_rng_state(state["torch"])
    if state.get("python"):
        random.setstate((3, tuple(int(x) for x in state["python"]), None))


def build_model(cfg: Mapping[str, Any]) -> MPCSModel:
    """Encoder + head for MPCS (``method: mpcs``, the paper); another ``method`` gives its
    :class:`mpcs.methods.PairMethod` (``forward(x1, x2) -> loss``, ``.encoder``, ``.head``)."""
    if cfg.get("method", "mpcs") != "mpcs":
        from mpcs.methods import create_method

        return create_method(cfg["method"], cfg)  # type: ignore[return-value]
    m = cfg["model"]
    return create_mpcs_model(m["encoder"], weights=m["weights"], head_hidden=m["head_hidden"],
                             head_out=m["head_out"], channels_last=m["channels_last"],
                             frozen_stages=m.get("frozen_stages", 0),
                             frozen_norm=m.get("frozen_norm", False))


def _optim_cfg(cfg: Mapping[str, Any]) -> dict[str, Any]:
    o = dict(cfg["optim"])
    if o.pop("scale_lr_with_batch"):
        scale = cfg["train"]["batch_size"] / 256
        o["lr"] = o["lr"] * scale
        if o.get("lr_biases") is not None:
            o["lr_biases"] = o["lr_biases"] * scale
    if o.get("lr_biases") is None:
        o.pop("lr_biases", None)
    return o


def batch_bounds(num_samples: int, batch_size: int, drop_last: bool,
                 world_size: int = 1) -> list[tuple[int, int]]:
    """``(start, stop)`` of each step's global batch within the epoch's sample order.

    ``batch_size`` is the GLOBAL batch (pairs per optimiser step over all processes). With
    ``drop_last=False`` the last, shorter batch is cut to a multiple of ``world_size`` (every
    rank needs the same number of pairs) and left out when that leaves fewer than 2 pairs
    per rank (NT-Xent needs a negative); a single process thus never trains on one pair.

    Example:
        >>> batch_bounds(10, 4, drop_last=False, world_size=2)
        [(0, 4), (4, 8)]
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


# --------------------------------------------------------------------------- run folder


def _interrupted(run_dir: Path, folder: RunFolder | None) -> RunInterrupted:
    """Ctrl-C: where the run stands and how to continue it (one line for the user)."""
    last = run_dir / "checkpoints" / "last.pt"
    epoch = checkpoint_epoch(last) if last.is_file() else None
    if last.is_file():
        where = f"the last checkpoint is {last}" + (f" (epoch {epoch})" if epoch else "")
        where += "; continue with --resume"
    else:
        where = f"no checkpoint was written yet in {run_dir}; start again with --resume"
    if folder is not None and folder.replaced is not None:
        where += f"; the previous run (--overwrite) is kept in {folder.replaced}"
    return RunInterrupted(where)


def _write_skipped(run_dir: Path, rows: Sequence[tuple[str, str, str]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "stage", "reason"])
    writer.writerows(safe_rows(rows, run_dir / SKIPPED_IMAGES))
    path = run_dir / SKIPPED_IMAGES
    atomic_write_text(path, buf.getvalue())
    return path


def _trim_metrics(path: Path, last_epoch: int) -> None:
    """Keep the ``metrics.jsonl`` lines of epochs up to the checkpoint's (a crash may have
    recorded an epoch whose checkpoint was never written; it is redone)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if int(json.loads(line)["epoch"]) <= last_epoch:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by the crash
    if len(kept) != len(lines):
        log.info("%s: dropped %d line(s) of epochs after the checkpoint (epoch %d); they are "
                 "redone", path, len(lines) - len(kept), last_epoch)
        atomic_write_text(path, "".join(f"{x}\n" for x in kept))


# --------------------------------------------------------------------------- checkpoints


def _load(path: Path) -> dict[str, Any]:
    return load_checkpoint(path)


def _resume_state(run_dir: Path, cfg: Mapping[str, Any]) -> dict[str, Any] | None:
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        log.warning("--resume: no checkpoint in %s, starting from scratch", run_dir)
        return None
    state = _load(last)
    diff = resume_conflicts(state.get("config", {}), cfg, PRETRAIN_DEFAULTS, RESUME_MAY_DIFFER)
    if diff:
        raise CheckpointError(f"{last} was written with a different configuration; refusing to "
                              "resume. Differing keys:\n  " + "\n  ".join(diff))
    return state


def data_fingerprint(sources: Sequence[tuple[str, Any]]) -> dict[str, Any] | None:
    """What ``--resume`` checks the images against (recorded in ``run.json``).

    For the image-folder sources (``breakhis``): the images' common folder (``root``), their
    number, :func:`mpcs.data.splits.dataset_fingerprint` of their names relative to it,
    patients and labels (``names``), and per patient the :func:`mpcs.data.cache.cache_key`
    of its files: paths, sizes, modification times (``patients``). None without such a
    source (zoom and wsi sources are not fingerprinted).
    """
    frames = [source for _, source in sources if isinstance(source, pd.DataFrame)]
    if not frames:
        return None
    images = pd.concat([f.melt(id_vars=["patient_id", "label"], value_vars=PATH_COLUMNS,
                               value_name="path") for f in frames]).dropna(subset=["path"])
    paths = [os.path.abspath(p) for p in images["path"]]
    manifest = pd.DataFrame({"path": paths, "patient_id": images["patient_id"].astype(str),
                             "label": images["label"].astype(str)})
    manifest.attrs["root"] = os.path.commonpath([os.path.dirname(p) for p in paths])
    patients = {str(pid): cache_key(sorted(group), 0, missing_ok=True)
                for pid, group in manifest.groupby("patient_id")["path"]}
    return {"root": manifest.attrs["root"], "images": len(manifest),
            "names": dataset_fingerprint(manifest), "key_version": CACHE_VERSION,
            "patients": patients}


def _few(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def data_change(saved: Mapping[str, Any], now: Mapping[str, Any] | None) -> str | None:
    """What changed between two :func:`data_fingerprint` records, in words; None if
    nothing did (or there is nothing to compare)."""
    if now is None:
        return None
    before, after = dict(saved.get("patients") or {}), dict(now["patients"])
    in_place = saved.get("root") == now["root"] and saved.get("key_version") == now[
        "key_version"]
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    if saved.get("names") != now["names"]:
        what = [f"images were added, removed, renamed or relabelled ({saved.get('images')} "
                f"then, {now['images']} now)"]
        added, removed = sorted(after.keys() - before.keys()), sorted(before.keys() - after)
        what += [f"new patients: {_few(added)}"] if added else []
        what += [f"patients gone: {_few(removed)}"] if removed else []
        what += [f"patients with changed files: {_few(changed)}"] if changed and in_place else []
        return "; ".join(what)
    if saved.get("root") != now["root"]:
        return (f"the images moved from {saved.get('root')} to {now['root']} (same names; their "
                f"sizes and modification times were recorded at the old place, so other pixels "
                f"cannot be ruled out: put the data back there, or link it there)")
    if changed and in_place:
        return (f"the images of patient(s) {_few(changed)} have the same names but other sizes "
                f"or modification times (other pixels)")
    return None


def _checked_fingerprint(run_dir: Path, sources: Sequence[tuple[str, Any]],
                         resuming: bool) -> dict[str, Any] | None:
    """This start's :func:`data_fingerprint`; when ``resuming`` a checkpoint, refuse data
    other than that recorded in ``run.json`` (a run started by an older mpcs has none: a
    logged note, and it resumes unchecked)."""
    now = data_fingerprint(sources)
    if not resuming:
        return now
    run_json = run_dir / "run.json"
    saved = last_recorded(run_json, "data_fingerprint")
    if not isinstance(saved, Mapping):
        log.info("%s records no fingerprint of the data (a run started by an older mpcs); "
                 "resuming without checking that the images are unchanged", run_json)
        return now
    change = data_change(saved, now)
    if change:
        raise DataError(f"{run_json}: refusing to resume on other data: {change}, since the run "
                        f"started; its checkpoint was trained on the images as they were. "
                        f"Restore them, or start a new run (--overwrite, or another --out)")
    return now


def _last_good(ckpt_dir: Path, saved_epoch: int) -> str:
    if saved_epoch:
        return f"The last good checkpoint is {ckpt_dir / 'last.pt'} (epoch {saved_epoch})."
    return "No checkpoint was written yet (this happened in the first epoch of the run)."


def _finite(tensors: Sequence[torch.Tensor]) -> bool:
    tensors = [t for t in tensors if t is not None and t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _save(state: dict[str, Any], path: Path, epoch: int, ckpt_dir: Path,
          saved_epoch: int) -> None:
    try:
        save_checkpoint(state, path)
    except OSError as exc:
        raise OutputError(
            f"cannot write checkpoint {path} at the end of epoch {epoch}: "
            f"{exc.strerror or exc}; the run stopped. {_last_good(ckpt_dir, saved_epoch)} "
            f"Free space (or fix the folder), then continue with --resume.") from None


def _save_epoch_file(state: dict[str, Any], ckpt_dir: Path, epoch: int,
                     same_as_last: bool) -> None:
    """``epoch_XXXX.pt``; a hard link to ``last.pt`` when that holds the same state (no
    second write of the same bytes), a file of its own where links are not possible."""
    path = ckpt_dir / f"epoch_{epoch:04d}.pt"
    if same_as_last:
        try:
            path.unlink(missing_ok=True)
            os.link(ckpt_dir / "last.pt", path)
            return
        except OSError:
            pass
    _save(state, path, epoch, ckpt_dir, epoch)


# --------------------------------------------------------------------------- training


def pretrain(cfg: Mapping[str, Any], data_dir: str | Path, run_dir: str | Path,
             resume: bool = False, progress: bool = True, overwrite: bool = False
             ) -> dict[str, Any]:
    """Pre-train MPCS as configured; returns a summary (epochs, steps, final loss, paths).

    A ``run_dir`` that holds a run is refused before any work unless ``resume`` (continue
    it) or ``overwrite`` (move it aside to ``<run_dir>.replaced-<time>``, deleted once the
    new run has written its first checkpoint). Ctrl-C raises :class:`RunInterrupted`,
    naming the last checkpoint.

    Started by torchrun (its ``RANK``/``WORLD_SIZE``/... variables set) or inside an
    initialised process group, every process calls this and trains on its shard of each
    global batch (see :mod:`mpcs.engine.distributed`); only rank 0 writes ``run_dir``. The
    summary also holds ``rank`` and ``world_size``.
    """
    run_dir = Path(run_dir)
    t = cfg["train"]
    dcfg = cfg.get("distributed", PRETRAIN_DEFAULTS["distributed"])
    with distributed_context(t["device"], dcfg["backend"]) as (ctx, device), \
            warnings.catch_warnings():
        # torch.distributed.nn's all_gather (the one whose backward sums the ranks'
        # gradients) warns on every call that it is deprecated; once per rank and step.
        warnings.filterwarnings("ignore", message=".*all_gather is deprecated",
                                category=FutureWarning)
        quiet_non_main(ctx)
        progress = progress and ctx.is_main
        guarded(ctx, lambda: check_run_folder(run_dir, RUN_FOLDER, resume, overwrite),
                run_here=ctx.is_main)
        guarded(ctx, lambda: check_weights(cfg["model"]["weights"]))  # before any data
        if t["threads"]:
            torch.set_num_threads(t["threads"])
        samples = guarded(ctx, lambda: find_pair_sources(cfg, data_dir, progress))
        assert samples is not None
        guarded(ctx, lambda: (per_rank_batch(t["batch_size"], ctx.world_size),
                              steps_per_epoch(sum(len(x) for _, x in samples),
                                              t["batch_size"], t["drop_last"],
                                              ctx.world_size)))
        folder = guarded(ctx, lambda: open_run_folder(run_dir, RUN_FOLDER, resume, overwrite),
                         run_here=ctx.is_main)
        try:
            summary = _pretrain(cfg, data_dir, run_dir, samples, device, resume, progress, ctx,
                                folder)
        except KeyboardInterrupt:
            if not ctx.is_main:
                raise
            raise _interrupted(run_dir, folder) from None
        finally:
            if folder is not None:
                folder.close()
        return {**summary, "rank": ctx.rank, "world_size": ctx.world_size}


def forward_loss(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor,
                 loss_fn: torch.nn.Module, device: torch.device, amp: str,
                 channels_last: bool) -> torch.Tensor:
    """The method-specific part of a step: model forward of both views -> scalar loss.

    ``x1``, ``x2``: the two augmented views of this rank's N pairs, ``[N, 3, S, S]``
    float on ``device``. MPCS: both views go through encoder and head in one batch of 2N;
    NT-Xent on the float32 projections (row i of each half is a positive pair).
    """
    if _is_method(model):  # other objectives (mpcs.methods): forward(x1, x2) -> loss
        with autocast_for(device, amp):
            return model(x1, x2).float()
    n = x1.shape[0]
    x = torch.cat([x1, x2])
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast_for(device, amp):
        _, z = model(x)
    return loss_fn(z[:n].float(), z[n:].float())


def _is_method(model: torch.nn.Module) -> bool:
    from mpcs.methods import PairMethod

    return isinstance(getattr(model, "module", model), PairMethod)


@dataclass
class StepResult:
    """What :func:`train_step` did: ``loss`` (this rank's), or ``problem`` when the step
    must not reach the weights (non-finite loss on any rank, or non-finite gradients)."""

    loss: torch.Tensor
    problem: str | None = None


def train_step(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor,
               loss_fn: torch.nn.Module, optimizer: torch.optim.Optimizer,
               params: Sequence[torch.nn.Parameter], device: torch.device, amp: str = "off",
               channels_last: bool = False, ctx: DistContext = SINGLE) -> StepResult:
    """Forward, loss and backward of one step; leaves the optimiser step to the caller.

    Under DDP (``model`` a ``DistributedDataParallel``) the gradients are averaged over the
    ranks in ``backward``; with NT-Xent gathering all ranks' views they equal the gradients
    of a single process on the concatenated global batch. The finite checks are collective,
    so every rank takes the same branch (a rank skipping ``backward`` alone would hang).
    """
    optimizer.zero_grad(set_to_none=True)
    loss = forward_loss(model, x1, x2, loss_fn, device, amp, channels_last)
    if not all_true(ctx, bool(torch.isfinite(loss)), device):
        value = loss.item()
        what = f"non-finite loss ({value})" if not math.isfinite(value) else \
            "non-finite loss on another rank"
        return StepResult(loss.detach(), what)
    loss.backward()
    if not _finite([p.grad for p in params]):  # all-reduced: the same on every rank
        return StepResult(loss.detach(), f"non-finite gradients (loss {loss.item():.4g})")
    return StepResult(loss.detach())


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


def augment_shard(aug: UniformPairAugment, v1: torch.Tensor, v2: torch.Tensor,
                  global_pairs: int, gen: torch.Generator, ctx: DistContext = SINGLE
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment this rank's views with its slice of the global batch's parameters.

    Every rank draws the parameters of all ``global_pairs`` pairs (the same draw, the same
    generator state afterwards) and uses its own slice, so W ranks see exactly the views a
    single process would make of the whole batch, and a resumed run draws the same.
    """
    n = v1.shape[0]
    params = aug.sample(global_pairs, gen).take(ctx.rank * n, (ctx.rank + 1) * n)
    return aug(v1, v2, params=params)


def _wrap_model(model: MPCSModel, cfg: Mapping[str, Any], ctx: DistContext,
                device: torch.device) -> torch.nn.Module:
    """``model`` itself for one process; under DDP optionally SyncBatchNorm, then DDP."""
    if not ctx.enabled:
        return model
    if cfg.get("distributed", {}).get("sync_bn"):
        if device.type != "cuda":
            raise ConfigError("distributed.sync_bn=true needs CUDA devices (torch's "
                              "SyncBatchNorm runs on GPUs only); on CPU each rank normalises "
                              "with its own batch statistics: set distributed.sync_bn=false")
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                   else None)


def find_pair_sources(cfg: Mapping[str, Any], data_dir: str | Path, progress: bool
                      ) -> list[tuple[str, Any]]:
    """``(name, source)`` of each configured source: the pairable samples of ``breakhis``
    (a table; decoded by :func:`_load_pair_data`), or a loaded ``zoom``/``wsi`` source."""
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


def _skipped_at_scan(sources: Sequence[tuple[str, Any]]) -> list[tuple[str, str]]:
    return [x for _, source in sources for x in source.attrs.get("skipped", [])]


def _load_pair_data(cfg: Mapping[str, Any], sources: Sequence[tuple[str, Any]],
                    progress: bool, ctx: DistContext) -> Any:
    """The pair data of the run: each source loaded (a mixed source when several)."""
    parts = [_load_one(cfg, source, progress, ctx) for _, source in sources]
    if len(parts) == 1:
        return parts[0]
    return MixedPairData([name for name, _ in sources], parts, cfg["data"]["source_weights"])


def _load_one(cfg: Mapping[str, Any], samples: Any, progress: bool, ctx: DistContext) -> Any:
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


def _pretrain(cfg: Mapping[str, Any], data_dir: str | Path, run_dir: Path,
              samples: Sequence[tuple[str, Any]], device: torch.device, resume: bool,
              progress: bool, ctx: DistContext = SINGLE, folder: RunFolder | None = None
              ) -> dict[str, Any]:
    t, d = cfg["train"], cfg["data"]
    if ctx.enabled and cfg.get("method", "mpcs") != "mpcs":
        # Their batch statistics (Barlow Twins, VICReg), negatives (SimCLR) and view draws
        # would be per process: a different objective from one process's on the whole batch.
        raise ConfigError(f"method={cfg['method']} runs in one process only; under torchrun "
                          "only method=mpcs is supported (its negatives come from all ranks)")
    main = ctx.is_main
    ckpt_dir = run_dir / "checkpoints"
    metrics_path = run_dir / "metrics.jsonl"
    state = None
    if resume:  # rank 0 reads and checks the checkpoint; every rank gets the same state
        state = guarded(ctx, lambda: _resume_state(run_dir, cfg), run_here=main)
        state = broadcast_object(ctx, state, device)
    fingerprint = guarded(ctx, lambda: _checked_fingerprint(run_dir, samples, state is not None),
                          run_here=main)

    seed = int(cfg["seed"])
    torch.manual_seed(seed)
    random.seed(seed)
    np_rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)

    data = _load_pair_data(cfg, samples, progress, ctx)
    skipped = [(p, "scan", r) for p, r in _skipped_at_scan(samples)]
    skipped += [(p, "decode", f"{r}; sample {key} dropped from pre-training pairs")
                for key, p, r in data.dropped]
    if d["on_bad_image"] == "skip" and main:
        listing = _write_skipped(run_dir, skipped)
        if skipped:
            log.warning("skipped %d unusable image(s) (%d found by the scan, %d failed to "
                        "decode; %d sample(s) dropped from pairs by decode failures); listed "
                        "in %s", len(skipped), len(skipped) - len(data.dropped),
                        len(data.dropped), len({k for k, _, _ in data.dropped}), listing)
    if len(data) == 0:
        raise DataError(f"{data_dir}: every one of the {sum(len(x) for _, x in samples)} "
                        f"samples lost an image it needs to a decode failure; nothing is left "
                        f"to pre-train on (see {run_dir / SKIPPED_IMAGES})")
    bounds = batch_bounds(len(data), t["batch_size"], t["drop_last"], ctx.world_size)
    steps = steps_per_epoch(len(data), t["batch_size"], t["drop_last"], ctx.world_size)
    local_batch = per_rank_batch(t["batch_size"], ctx.world_size)
    if state is not None and state.get("steps_per_epoch", steps) != steps:
        raise CheckpointError(
            f"{ckpt_dir / 'last.pt'} was written with {state['steps_per_epoch']} steps per "
            f"epoch but the data now give {steps} ({len(data)} samples, world size "
            f"{ctx.world_size}); the data set changed since (images added, removed or "
            f"skipped), or train.drop_last=false cuts the last batch differently for this "
            f"number of processes, so resuming would not continue the same run. Start a new "
            f"run in another folder.")
    loading = loader_settings(d, device)
    if ctx.enabled:
        log.info("DDP: %d processes (backend %s); train.batch_size=%d is the global batch: "
                 "%d pairs per rank per step; NT-Xent negatives gathered from all ranks",
                 ctx.world_size, ctx.backend, t["batch_size"], local_batch)
    log.info("data: %s", loading.describe())

    def write_info() -> None:
        try:
            write_run_info(run_dir, cfg, {
                "data": str(data_dir), "device": str(device), "pair_samples": len(data),
                "steps_per_epoch": steps, "skipped_images": len(skipped),
                "world_size": ctx.world_size, "backend": ctx.backend,
                "global_batch": t["batch_size"], "batch_per_rank": local_batch,
                "loader": {"num_workers": loading.num_workers, "prefetch": loading.prefetch,
                           "pin_memory": loading.pin_memory},
                "data_fingerprint": fingerprint}, resume=state is not None)
            atomic_write_text(run_dir / "pretrain_patients.txt",
                              "\n".join(sorted(data.samples["patient_id"].unique())) + "\n")
        except OSError as exc:
            raise OutputError(f"cannot write the run folder {run_dir}: "
                              f"{exc.strerror or exc}") from None

    guarded(ctx, write_info, run_here=main)

    model = build_model(cfg).to(device)
    channels_last = cfg["model"]["channels_last"]
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    enc = model.encoder
    aug = UniformPairAugment(AugmentConfig(**cfg["augment"]), d["input_size"],
                             mean=tuple(enc.mean), std=tuple(enc.std))
    sampler = create_row_sampler(cfg, data, same_image=getattr(model, "same_image", False))
    monitor = guarded(ctx, lambda: build_monitor(cfg, data_dir, progress), run_here=main)
    loss_fn = NTXentLoss(temperature=cfg["loss"]["temperature"],
                         gather_distributed=ctx.enabled)
    optimizer = build_optimizer(model, _optim_cfg(cfg))
    total = steps * t["epochs"]
    scheduler = build_scheduler(optimizer, total_steps=total,
                                warmup_steps=steps * cfg["schedule"]["warmup_epochs"],
                                schedule=cfg["schedule"]["name"],
                                final_lr_fraction=cfg["schedule"]["final_lr_fraction"])
    start_epoch, global_step, total_skipped = 0, 0, 0
    last_loss = float("nan")
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"], np_rng, gen)
        start_epoch, global_step = state["epoch"], state["global_step"]
        total_skipped = int(state.get("skipped_steps", 0))
        last_loss = float(state.get("loss", last_loss))
        if start_epoch >= t["epochs"]:
            log.info("resuming %s: all %d epochs are done; nothing to train", run_dir,
                     t["epochs"])
        else:
            log.info("resuming %s at epoch %d (step %d)", run_dir, start_epoch + 1,
                     global_step)
        if main:
            try:
                _trim_metrics(metrics_path, start_epoch)
            except OSError as exc:
                raise OutputError(f"cannot rewrite {metrics_path}: "
                                  f"{exc.strerror or exc}") from None
        state = None  # free the copy
    trained = _wrap_model(model, cfg, ctx, device)
    saved_epoch = start_epoch
    params = [p for p in model.parameters() if p.requires_grad]

    gather = partial(rank_views, data, ctx=ctx, pin_memory=loading.pin_memory)
    for epoch in range(start_epoch, t["epochs"]):
        trained.train()
        plans = epoch_plan(len(data), bounds, sampler, np_rng)
        if cfg["pairs"].get("log_scales") and main:
            _log_pair_scales(run_dir, epoch + 1, global_step, plans)
        t0, seen, loss_sum, skipped_steps = time.perf_counter(), 0, 0.0, 0
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{t['epochs']}", unit="step",
                   disable=not progress, leave=False)
        with Prefetcher(gather, plans, loading.num_workers, loading.prefetch) as batches:
            for i, (plan, (v1, v2)) in enumerate(zip(plans, batches, strict=True)):
                bar.update(1)
                if getattr(model, "same_image", False):  # SimCLR: independent views
                    x1, x2 = model.make_views(aug, v1.to(device, non_blocking=True),
                                              v2.to(device, non_blocking=True), gen)
                else:
                    x1, x2 = augment_shard(aug, v1.to(device, non_blocking=True),
                                           v2.to(device, non_blocking=True), len(plan.index),
                                           gen, ctx)
                result = train_step(trained, x1, x2, loss_fn, optimizer, params, device,
                                    t["amp"], channels_last, ctx)
                if result.problem is not None:
                    where = (f"epoch {epoch + 1}/{t['epochs']}, step {i + 1}/{steps} "
                             f"(global step {global_step + 1})")
                    if t["on_nonfinite"] == "stop":
                        raise NonFiniteLossError(
                            f"{result.problem} at {where}; stopped before the optimiser "
                            f"step, so no non-finite value reached the weights or a "
                            f"checkpoint. {_last_good(ckpt_dir, saved_epoch)} Lower optim.lr "
                            f"or raise loss.temperature (a new run), or skip such steps with "
                            f"--set train.on_nonfinite=skip (also with --resume).")
                    skipped_steps += 1
                    optimizer.zero_grad(set_to_none=True)
                    log.warning("%s at %s: optimiser step skipped (%d skipped in this epoch)",
                                result.problem, where, skipped_steps)
                    if skipped_steps > MAX_SKIPPED_FRACTION * steps:
                        raise NonFiniteLossError(
                            f"{skipped_steps} of the {steps} steps of epoch {epoch + 1} had a "
                            f"non-finite loss or gradient, more than "
                            f"{MAX_SKIPPED_FRACTION:.0%}, so the run stopped although "
                            f"train.on_nonfinite=skip; the last one was at {where}. "
                            f"{_last_good(ckpt_dir, saved_epoch)} Lower optim.lr or raise "
                            f"loss.temperature.")
                    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
                        warnings.simplefilter("ignore", UserWarning)
                        scheduler.step()
                    global_step += 1
                    continue
                optimizer.step()
                scheduler.step()
                global_step += 1
                if hasattr(model, "after_step"):  # BYOL's momentum encoder
                    model.after_step(global_step, total)
                seen += 2 * len(plan.index)
                loss_value = result.loss.item()
                loss_sum += loss_value
                rate = seen / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{loss_value:.4f}",
                                lr=f"{optimizer.param_groups[0]['lr']:.2e}", img_s=f"{rate:.0f}")
        bar.close()
        seconds = time.perf_counter() - t0
        # The mean of the ranks' means is the loss of the global batch (equal shards).
        last_loss = all_mean(ctx, loss_sum / (steps - skipped_steps), device)
        total_skipped += skipped_steps
        if not _finite(list(model.state_dict().values())):
            raise NonFiniteLossError(
                f"the weights became non-finite during epoch {epoch + 1} although every loss "
                f"and gradient was finite; they were not saved. "
                f"{_last_good(ckpt_dir, saved_epoch)} Lower optim.lr.")
        record = {"epoch": epoch + 1, "step": global_step, "loss": last_loss,
                  "lr": optimizer.param_groups[0]["lr"], "images_per_s": seen / seconds,
                  "seconds": seconds, "skipped_steps": skipped_steps}
        if ctx.enabled:
            record["world_size"] = ctx.world_size
        if hasattr(model, "loggable"):
            record.update(model.loggable())
        every = cfg["monitor"]["knn_every"] if "monitor" in cfg else 0
        if every and ((epoch + 1) % every == 0 or epoch + 1 == t["epochs"]):
            # Labels are used only here. Rank 0 (the only one with a monitor) scores; every
            # rank takes part in the guard, so a failure stops all of them with its message
            # instead of leaving the others waiting in the next collective.
            scores = guarded(ctx, lambda: monitor.evaluate(enc, device) if monitor else {},
                             run_here=main)
            record.update(scores or {})
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch + 1,
                "global_step": global_step, "skipped_steps": total_skipped, "loss": last_loss,
                "steps_per_epoch": steps, "pair_samples": len(data),
                "rng": _rng_state(np_rng, gen), "config": dict(cfg), "kind": "mpcs-pretrain",
                "world_size": ctx.world_size,
                # The normalisation the encoder was trained with (ImageNet's, or [-1, 1] for
                # EfficientNet-Lite weights); a rebuilt encoder must use the same.
                "encoder_norm": {"mean": list(enc.mean), "std": list(enc.std)}}
        guarded(ctx, partial(_end_of_epoch, record, ckpt, metrics_path, ckpt_dir, saved_epoch,
                             t, progress), run_here=main)
        if (epoch + 1) % t["last_every"] == 0 or epoch + 1 == t["epochs"]:
            saved_epoch = epoch + 1
            if folder is not None:  # --overwrite: the new run can be resumed from now on
                folder.discard_replaced()
    return {"run_dir": str(run_dir), "epochs": t["epochs"], "global_step": global_step,
            "skipped_steps": total_skipped, "final_loss": last_loss,
            "checkpoint": str(ckpt_dir / "last.pt"), "pair_samples": len(data),
            "skipped_images": len(skipped)}


def _log_pair_scales(run_dir: Path, epoch: int, step: int, plans: Sequence[StepPlan]) -> None:
    """Append the epoch's pairs to ``RUN/pair_scales.csv``: epoch, step, sample, the two
    relative magnifications and their ratio (``pairs.log_scales=true``)."""
    from mpcs.data.pairs.sources import pair_scale_rows

    path = run_dir / "pair_scales.csv"
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


def _end_of_epoch(record: dict[str, Any], ckpt: dict[str, Any], metrics_path: Path,
                  ckpt_dir: Path, saved_epoch: int, t: Mapping[str, Any],
                  progress: bool) -> None:
    """Rank 0: append the epoch's metrics line and write its checkpoint(s)."""
    epoch = record["epoch"]
    try:
        if epoch == 1:  # a new run: replaces the metrics of a run it starts over
            atomic_write_text(metrics_path, json.dumps(record) + "\n")
        else:
            append_line(metrics_path, json.dumps(record))
    except OSError as exc:
        raise OutputError(f"cannot write {metrics_path} at the end of epoch {epoch}: "
                          f"{exc.strerror or exc}; the run stopped. "
                          f"{_last_good(ckpt_dir, saved_epoch)} Free space (or fix the "
                          f"folder), then continue with --resume.") from None
    if progress:
        tqdm.write(f"epoch {epoch}/{t['epochs']}  loss {record['loss']:.4f}  "
                   f"lr {record['lr']:.2e}  {record['images_per_s']:.0f} img/s"
                   + (f"  ({record['skipped_steps']} steps skipped)"
                      if record["skipped_steps"] else ""))
    last = epoch == t["epochs"]
    wrote_last = epoch % t["last_every"] == 0 or last
    if wrote_last:
        _save(ckpt, ckpt_dir / "last.pt", epoch, ckpt_dir, saved_epoch)
    if epoch % t["checkpoint_every"] == 0 or last:
        _save_epoch_file(ckpt, ckpt_dir, epoch, wrote_last)


def load_pretrained(checkpoint: str | Path) -> MPCSModel:
    """Rebuild the model of a pre-training checkpoint (config inside) with its weights."""
    state = _load(Path(checkpoint))
    if "config" not in state or "model" not in state:
        raise CheckpointError(f"{checkpoint}: not an mpcs pre-training checkpoint "
                              "(no config/model entries)")
    cfg = with_defaults(state["config"], PRETRAIN_DEFAULTS)  # keys added to mpcs since
    cfg["model"] = {**cfg["model"], "weights": "none"}
    model = build_model(cfg)
    model.load_state_dict(state["model"])
    norm = state.get("encoder_norm")
    if norm:
        model.encoder.mean = tuple(float(v) for v in norm["mean"])
        model.encoder.std = tuple(float(v) for v in norm["std"])
    return model
