"""The pre-training loop: epochs of steps of any :class:`mpcs.methods.PairMethod`.

A step: this rank's pixels (:func:`mpcs.engine.pair_data.rank_views`, in a background
thread) -> the method's views of its slice of the global batch (``make_views``) -> the
method's loss, backward (DDP averages the gradients) -> finite checks on every rank ->
optimiser and scheduler steps -> ``after_step``. The loop knows nothing method-specific: it
calls the :class:`~mpcs.methods.PairMethod` interface only.

A non-finite loss or gradient never reaches the weights: ``train.on_nonfinite=stop`` stops
before the optimiser step; ``skip`` skips it (the learning-rate schedule still advances) and
stops once more than :data:`MAX_SKIPPED_FRACTION` of an epoch's steps were skipped.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mpcs.core.checkpoint import PRETRAIN_KIND
from mpcs.core.errors import ConfigError, NonFiniteLossError
from mpcs.core.runtime import autocast_for
from mpcs.data.loader import LoaderSettings, Prefetcher
from mpcs.data.transforms import UniformPairAugment
from mpcs.engine.distributed import SINGLE, DistContext, all_mean, all_true, guarded
from mpcs.engine.pair_data import StepPlan, epoch_plan, log_pair_scales, rank_views
from mpcs.engine.resume import rng_state
from mpcs.engine.run_records import end_of_epoch, last_good
from mpcs.engine.runinfo import RunFolder
from mpcs.methods import PairMethod

log = logging.getLogger(__name__)

#: With ``train.on_nonfinite=skip`` a run stops anyway once more than this fraction of an
#: epoch's steps had to be skipped.
MAX_SKIPPED_FRACTION = 0.1


def all_finite(tensors: Sequence[torch.Tensor | None]) -> bool:
    """True when every floating-point tensor (``None`` entries ignored) is finite."""
    tensors = [t for t in tensors if t is not None and t.is_floating_point()]
    if not tensors:
        return True
    return bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


# --------------------------------------------------------------------------- one step


@dataclass
class StepResult:
    """What :func:`train_step` did: ``loss`` (this rank's), or ``problem`` when the step
    must not reach the weights (non-finite loss on any rank, or non-finite gradients)."""

    loss: torch.Tensor
    problem: str | None = None


def train_step(model: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor,
               optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter],
               device: torch.device, amp: str = "off", ctx: DistContext = SINGLE
               ) -> StepResult:
    """Forward (the method's loss of this rank's pairs ``x1``, ``x2``), finite checks and
    backward of one step; leaves the optimiser step to the caller.

    ``model`` is a :class:`~mpcs.methods.PairMethod` or its DDP wrapper (see
    :func:`prepare_for_ranks`): then ``backward`` averages the gradients over the ranks,
    and with the method's global-batch statistics they equal the gradients of one process
    on the concatenated global batch. The finite checks are collective, so every rank takes
    the same branch (a rank skipping ``backward`` alone would hang).
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast_for(device, amp):
        loss = model(x1, x2).float()
    if not all_true(ctx, bool(torch.isfinite(loss)), device):
        value = loss.item()
        what = f"non-finite loss ({value})" if not math.isfinite(value) else \
            "non-finite loss on another rank"
        return StepResult(loss.detach(), what)
    loss.backward()
    if not all_finite([p.grad for p in params]):  # all-reduced: the same on every rank
        return StepResult(loss.detach(), f"non-finite gradients (loss {loss.item():.4g})")
    return StepResult(loss.detach())


def prepare_for_ranks(method: PairMethod, cfg: Mapping[str, Any], ctx: DistContext,
                      device: torch.device) -> torch.nn.Module:
    """``method`` itself for one process; for several, the method's loss statistics over the
    global batch (:meth:`~mpcs.methods.PairMethod.use_global_batch`), optionally
    SyncBatchNorm, then DDP."""
    method.use_global_batch(ctx.enabled)
    if not ctx.enabled:
        return method
    if cfg.get("distributed", {}).get("sync_bn"):
        if device.type != "cuda":
            raise ConfigError("distributed.sync_bn=true needs CUDA devices (torch's "
                              "SyncBatchNorm runs on GPUs only); on CPU each rank normalises "
                              "with its own batch statistics: set distributed.sync_bn=false")
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
    return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda"
                                   else None)


# --------------------------------------------------------------------------- the run


@dataclass
class RunPaths:
    """The run folder (written by rank 0) and the lock that holds it."""

    run_dir: Path
    folder: RunFolder | None = None

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def metrics(self) -> Path:
        return self.run_dir / "metrics.jsonl"


@dataclass
class Training:
    """A pre-training run ready to train: what the loop reads, and the counters it
    advances (``epoch`` is the next one to train, counted from 0)."""

    cfg: Mapping[str, Any]
    ctx: DistContext
    device: torch.device
    method: PairMethod
    trained: torch.nn.Module  # the method, or its DDP wrapper
    optimizer: torch.optim.Optimizer
    scheduler: Any
    aug: UniformPairAugment
    sampler: Any
    data: Any
    bounds: list[tuple[int, int]]
    np_rng: np.random.Generator
    gen: torch.Generator
    loading: LoaderSettings
    monitor: Any
    paths: RunPaths
    progress: bool
    epoch: int = 0
    global_step: int = 0
    total_skipped: int = 0
    last_loss: float = float("nan")
    saved_epoch: int = 0
    params: list[torch.nn.Parameter] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return len(self.bounds)

    @property
    def epochs(self) -> int:
        return int(self.cfg["train"]["epochs"])


@dataclass
class EpochStats:
    """What one epoch's steps add up to on this rank."""

    seen: int = 0
    loss_sum: float = 0.0
    skipped_steps: int = 0
    started: float = field(default_factory=time.perf_counter)


def train(tr: Training) -> None:
    """Train the epochs from ``tr.epoch`` to the configured number."""
    tr.params = [p for p in tr.method.parameters() if p.requires_grad]
    while tr.epoch < tr.epochs:
        stats = run_epoch(tr)
        finish_epoch(tr, stats)
        tr.epoch += 1


def run_epoch(tr: Training) -> EpochStats:
    """The steps of epoch ``tr.epoch``: draw the epoch's plan, then one step per batch."""
    tr.trained.train()
    plans = epoch_plan(len(tr.data), tr.bounds, tr.sampler, tr.np_rng)
    if tr.cfg["pairs"].get("log_scales") and tr.ctx.is_main:
        log_pair_scales(tr.paths.run_dir, tr.epoch + 1, tr.global_step, plans)
    stats = EpochStats()
    bar = tqdm(total=tr.steps, desc=f"epoch {tr.epoch + 1}/{tr.epochs}", unit="step",
               disable=not tr.progress, leave=False)
    gather = partial(rank_views, tr.data, ctx=tr.ctx, pin_memory=tr.loading.pin_memory)
    with Prefetcher(gather, plans, tr.loading.num_workers, tr.loading.prefetch) as batches:
        for i, (plan, (v1, v2)) in enumerate(zip(plans, batches, strict=True)):
            bar.update(1)
            loss = one_step(tr, i, plan, v1, v2, stats)
            if loss is not None:
                rate = stats.seen / max(time.perf_counter() - stats.started, 1e-9)
                bar.set_postfix(loss=f"{loss:.4f}",
                                lr=f"{tr.optimizer.param_groups[0]['lr']:.2e}", img_s=f"{rate:.0f}")
    bar.close()
    return stats


def one_step(tr: Training, i: int, plan: StepPlan, v1: torch.Tensor, v2: torch.Tensor,
             stats: EpochStats) -> float | None:
    """Step ``i`` of the epoch on this rank's pixels; its loss, or None when skipped."""
    n = v1.shape[0]
    x1, x2 = tr.method.make_views(tr.aug, v1.to(tr.device, non_blocking=True),
                                  v2.to(tr.device, non_blocking=True), tr.gen,
                                  global_pairs=len(plan.index), first=tr.ctx.rank * n)
    t = tr.cfg["train"]
    result = train_step(tr.trained, x1, x2, tr.optimizer, tr.params, tr.device, t["amp"],
                        tr.ctx)
    if result.problem is not None:
        skip_step(tr, i, result.problem, stats)
        return None
    tr.optimizer.step()
    tr.scheduler.step()
    tr.global_step += 1
    tr.method.after_step(tr.global_step, tr.steps * tr.epochs)
    stats.seen += 2 * len(plan.index)
    loss_value = result.loss.item()
    stats.loss_sum += loss_value
    return loss_value


def skip_step(tr: Training, i: int, problem: str, stats: EpochStats) -> None:
    """A step with a non-finite loss or gradient: stop (``train.on_nonfinite=stop``, or too
    many skipped), or skip the optimiser step and advance the schedule."""
    where = (f"epoch {tr.epoch + 1}/{tr.epochs}, step {i + 1}/{tr.steps} "
             f"(global step {tr.global_step + 1})")
    good = last_good(tr.paths.ckpt_dir, tr.saved_epoch)
    if tr.cfg["train"]["on_nonfinite"] == "stop":
        raise NonFiniteLossError(
            f"{problem} at {where}; stopped before the optimiser step, so no non-finite "
            f"value reached the weights or a checkpoint. {good} Lower optim.lr or raise "
            f"loss.temperature (a new run), or skip such steps with "
            f"--set train.on_nonfinite=skip (also with --resume).")
    stats.skipped_steps += 1
    tr.optimizer.zero_grad(set_to_none=True)
    log.warning("%s at %s: optimiser step skipped (%d skipped in this epoch)", problem, where,
                stats.skipped_steps)
    if stats.skipped_steps > MAX_SKIPPED_FRACTION * tr.steps:
        raise NonFiniteLossError(
            f"{stats.skipped_steps} of the {tr.steps} steps of epoch {tr.epoch + 1} had a "
            f"non-finite loss or gradient, more than {MAX_SKIPPED_FRACTION:.0%}, so the run "
            f"stopped although train.on_nonfinite=skip; the last one was at {where}. "
            f"{good} Lower optim.lr or raise loss.temperature.")
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()"
        warnings.simplefilter("ignore", UserWarning)
        tr.scheduler.step()
    tr.global_step += 1


# --------------------------------------------------------------------------- end of epoch


def finish_epoch(tr: Training, stats: EpochStats) -> None:
    """The epoch's loss over all ranks, its record (kNN monitor included), and rank 0's
    metrics line and checkpoint(s)."""
    seconds = time.perf_counter() - stats.started
    # The mean of the ranks' means is the loss of the global batch (equal shards).
    tr.last_loss = all_mean(tr.ctx, stats.loss_sum / (tr.steps - stats.skipped_steps),
                            tr.device)
    tr.total_skipped += stats.skipped_steps
    if not all_finite(list(tr.method.state_dict().values())):
        raise NonFiniteLossError(
            f"the weights became non-finite during epoch {tr.epoch + 1} although every loss "
            f"and gradient was finite; they were not saved. "
            f"{last_good(tr.paths.ckpt_dir, tr.saved_epoch)} Lower optim.lr.")
    record = epoch_record(tr, stats, seconds)
    t = tr.cfg["train"]
    guarded(tr.ctx, partial(end_of_epoch, record, checkpoint_state(tr), tr.paths.metrics,
                            tr.paths.ckpt_dir, tr.saved_epoch, t, tr.progress),
            run_here=tr.ctx.is_main)
    done = tr.epoch + 1
    if done % t["last_every"] == 0 or done == tr.epochs:
        tr.saved_epoch = done
        if tr.paths.folder is not None:  # --overwrite: the new run can be resumed from now on
            tr.paths.folder.discard_replaced()


def epoch_record(tr: Training, stats: EpochStats, seconds: float) -> dict[str, Any]:
    """The epoch's ``metrics.jsonl`` line: loss, lr, speed, skipped steps, the method's
    values and (every ``monitor.knn_every`` epochs) the kNN monitor's scores."""
    record: dict[str, Any] = {
        "epoch": tr.epoch + 1, "step": tr.global_step, "loss": tr.last_loss,
        "lr": tr.optimizer.param_groups[0]["lr"], "images_per_s": stats.seen / seconds,
        "seconds": seconds, "skipped_steps": stats.skipped_steps}
    if tr.ctx.enabled:
        record["world_size"] = tr.ctx.world_size
    record.update(tr.method.loggable())
    every = tr.cfg["monitor"]["knn_every"] if "monitor" in tr.cfg else 0
    if every and ((tr.epoch + 1) % every == 0 or tr.epoch + 1 == tr.epochs):
        # Labels are used only here. Rank 0 (the only one with a monitor) scores; every
        # rank takes part in the guard, so a failure stops all of them with its message
        # instead of leaving the others waiting in the next collective.
        enc, monitor = tr.method.encoder, tr.monitor
        scores = guarded(tr.ctx, lambda: monitor.evaluate(enc, tr.device) if monitor else {},
                         run_here=tr.ctx.is_main)
        record.update(scores or {})
    return record


def checkpoint_state(tr: Training) -> dict[str, Any]:
    """Everything ``--resume`` needs after epoch ``tr.epoch``: weights, optimiser,
    scheduler, counters, every RNG state, the configuration."""
    enc = tr.method.encoder
    return {"model": tr.method.state_dict(), "optimizer": tr.optimizer.state_dict(),
            "scheduler": tr.scheduler.state_dict(), "epoch": tr.epoch + 1,
            "global_step": tr.global_step, "skipped_steps": tr.total_skipped,
            "loss": tr.last_loss, "steps_per_epoch": tr.steps, "pair_samples": len(tr.data),
            "rng": rng_state(tr.np_rng, tr.gen), "config": dict(tr.cfg),
            "kind": PRETRAIN_KIND, "world_size": tr.ctx.world_size,
            # The normalisation the encoder was trained with (ImageNet's, or [-1, 1] for
            # EfficientNet-Lite weights); a rebuilt encoder must use the same.
            "encoder_norm": {"mean": list(enc.mean), "std": list(enc.std)}}
