"""Pre-training: pairs of views -> a method's loss (MPCS: magnification pairs -> uniform views
-> encoder + head -> NT-Xent; any method of :mod:`mpcs.methods`) -> checkpoints.

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
every method computes its batch statistics over all ranks (NT-Xent's negatives, Barlow
Twins' cross-correlation, VICReg's variance and covariance; BYOL and SimSiam have none), so
a step equals one process's step on the whole batch (with ``distributed.sync_bn`` on CUDA
also for BatchNorm). Only rank 0 writes ``RUN``; ``--resume`` gives every rank rank 0's
checkpoint.

Where the parts live: this module is the entry point (checks, set-up, summary);
:mod:`mpcs.engine.pair_data` finds and loads the pairs and draws each epoch's plan;
:mod:`mpcs.engine.trainer` is the loop (epochs, steps, end-of-epoch records), calling only
the :class:`mpcs.methods.PairMethod` interface; :mod:`mpcs.engine.resume` holds the RNG
states, the data fingerprint and the checks of ``--resume``; :mod:`mpcs.engine.run_records`
writes metrics and checkpoints.

Example:
    >>> from mpcs.config import resolve
    >>> cfg = resolve(preset="cpu-small", overrides=["train.epochs=1"])
    >>> pretrain(cfg, "data/BreaKHis_v1", "runs/demo")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mpcs.config import PRETRAIN_DEFAULTS
from mpcs.core.errors import OutputError
from mpcs.data.loader import LoaderSettings, loader_settings
from mpcs.data.pairs.sources import create_row_sampler
from mpcs.data.transforms import AugmentConfig, UniformPairAugment
from mpcs.engine.distributed import (
    SINGLE,
    DistContext,
    broadcast_object,
    distributed_context,
    guarded,
    per_rank_batch,
    quiet_non_main,
)
from mpcs.engine.knn_monitor import build_monitor
from mpcs.engine.loading import load_pretrained
from mpcs.engine.optim import build_optimizer, build_scheduler
from mpcs.engine.pair_data import (
    SKIPPED_IMAGES,
    batch_bounds,
    find_pair_sources,
    load_pair_data,
    require_pairs,
    sample_count,
    skipped_images,
    steps_per_epoch,
    write_skipped,
)
from mpcs.engine.resume import (
    RESUME_MAY_DIFFER,
    check_steps,
    checked_fingerprint,
    data_fingerprint,
    restore_rng,
    resume_state,
    seeded_generators,
    trim_metrics,
)
from mpcs.engine.run_records import interrupted, write_start_records
from mpcs.engine.runinfo import (
    START_RECORDS,
    FolderRules,
    RunFolder,
    check_run_folder,
    open_run_folder,
)
from mpcs.engine.trainer import RunPaths, Training, prepare_for_ranks, train
from mpcs.methods import PairMethod, create_method
from mpcs.models.weights import check_weights

log = logging.getLogger(__name__)

#: A pre-training run folder: ``--resume`` continues it; ``--overwrite`` moves the previous
#: run aside until the new one has written its first checkpoint (its resume point).
RUN_FOLDER = FolderRules(resumable=True,
                         replaced_until="once the new run has written its first checkpoint",
                         records=(*START_RECORDS, "pretrain_patients.txt", SKIPPED_IMAGES),
                         subdirs=("checkpoints",))

__all__ = ["RESUME_MAY_DIFFER", "RUN_FOLDER", "build_model", "data_fingerprint",
           "load_pretrained", "optim_settings", "pretrain"]


def build_model(cfg: Mapping[str, Any]) -> PairMethod:
    """The configured method (``method``, default ``mpcs``: the paper) as a
    :class:`mpcs.methods.PairMethod`: ``forward(x1, x2) -> loss``, ``.encoder``, ``.head``."""
    return create_method(cfg.get("method", "mpcs"), cfg)


def optim_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``optim.*`` for :func:`mpcs.engine.optim.build_optimizer`, the learning rates scaled
    by ``batch_size / 256`` with ``optim.scale_lr_with_batch``."""
    o = dict(cfg["optim"])
    if o.pop("scale_lr_with_batch"):
        scale = cfg["train"]["batch_size"] / 256
        o["lr"] = o["lr"] * scale
        if o.get("lr_biases") is not None:
            o["lr_biases"] = o["lr_biases"] * scale
    if o.get("lr_biases") is None:
        o.pop("lr_biases", None)
    return o


def pretrain(cfg: Mapping[str, Any], data_dir: str | Path, run_dir: str | Path,
             resume: bool = False, progress: bool = True, overwrite: bool = False
             ) -> dict[str, Any]:
    """Pre-train as configured; returns a summary (epochs, steps, final loss, paths).

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
        samples = _checked_start(cfg, data_dir, run_dir, resume, overwrite, progress, ctx)
        folder = guarded(ctx, lambda: open_run_folder(run_dir, RUN_FOLDER, resume, overwrite),
                         run_here=ctx.is_main)
        try:
            summary = _pretrain(cfg, data_dir, run_dir, samples, device, resume, progress, ctx,
                                folder)
        except KeyboardInterrupt:
            if not ctx.is_main:
                raise
            raise interrupted(run_dir, folder) from None
        finally:
            if folder is not None:
                folder.close()
        return {**summary, "rank": ctx.rank, "world_size": ctx.world_size}


def _checked_start(cfg: Mapping[str, Any], data_dir: str | Path, run_dir: Path, resume: bool,
                   overwrite: bool, progress: bool, ctx: DistContext) -> list[tuple[str, Any]]:
    """Everything that can be refused before the run folder is opened: the folder, the
    model weights (before any data), the pair sources and the batch; returns the sources."""
    t = cfg["train"]
    guarded(ctx, lambda: check_run_folder(run_dir, RUN_FOLDER, resume, overwrite),
            run_here=ctx.is_main)
    guarded(ctx, lambda: check_weights(cfg["model"]["weights"]))  # before any data
    if t["threads"]:
        torch.set_num_threads(t["threads"])
    samples = guarded(ctx, lambda: find_pair_sources(cfg, data_dir, progress))
    assert samples is not None
    guarded(ctx, lambda: (per_rank_batch(t["batch_size"], ctx.world_size),
                          steps_per_epoch(sample_count(samples), t["batch_size"],
                                          t["drop_last"], ctx.world_size)))
    return samples


def _pretrain(cfg: Mapping[str, Any], data_dir: str | Path, run_dir: Path,
              samples: Sequence[tuple[str, Any]], device: torch.device, resume: bool,
              progress: bool, ctx: DistContext = SINGLE, folder: RunFolder | None = None
              ) -> dict[str, Any]:
    """:func:`pretrain` in its opened run folder: resume point, data, set-up, the loop."""
    t = cfg["train"]
    paths = RunPaths(run_dir, folder)
    state = None
    if resume:  # rank 0 reads and checks the checkpoint; every rank gets the same state
        state = guarded(ctx, lambda: resume_state(run_dir, cfg), run_here=ctx.is_main)
        state = broadcast_object(ctx, state, device)
    fingerprint = guarded(ctx, lambda: checked_fingerprint(run_dir, samples, state is not None),
                          run_here=ctx.is_main)
    np_rng, gen = seeded_generators(int(cfg["seed"]))
    data = load_pair_data(cfg, samples, progress, ctx)
    skipped = skipped_images(samples, data)
    if cfg["data"]["on_bad_image"] == "skip" and ctx.is_main:
        write_skipped(run_dir, skipped, data)
    require_pairs(data, samples, data_dir, run_dir)
    bounds = batch_bounds(len(data), t["batch_size"], t["drop_last"], ctx.world_size)
    steps = steps_per_epoch(len(data), t["batch_size"], t["drop_last"], ctx.world_size)
    check_steps(state, steps, len(data), ctx.world_size, paths.ckpt_dir)
    loading = loader_settings(cfg["data"], device)
    info = _run_info(cfg, data_dir, device, data, steps, skipped, ctx, loading, fingerprint)
    guarded(ctx, lambda: write_start_records(
        run_dir, cfg, info, list(data.samples["patient_id"].unique()), state is not None),
        run_here=ctx.is_main)
    tr = _training(cfg, data_dir, data, bounds, (np_rng, gen), loading, paths, progress, ctx,
                   device)
    if state is not None:
        _continue_from(tr, state)
        state = None  # free the copy
    tr.trained = prepare_for_ranks(tr.method, cfg, ctx, device)
    train(tr)
    return {"run_dir": str(run_dir), "epochs": t["epochs"], "global_step": tr.global_step,
            "skipped_steps": tr.total_skipped, "final_loss": tr.last_loss,
            "checkpoint": str(paths.ckpt_dir / "last.pt"), "pair_samples": len(data),
            "skipped_images": len(skipped)}


def _run_info(cfg: Mapping[str, Any], data_dir: str | Path, device: torch.device, data: Any,
              steps: int, skipped: Sequence[Any], ctx: DistContext, loading: LoaderSettings,
              fingerprint: Mapping[str, Any] | None) -> dict[str, Any]:
    """What ``run.json`` records of this start (and the log lines that say it)."""
    t = cfg["train"]
    local_batch = per_rank_batch(t["batch_size"], ctx.world_size)
    if ctx.enabled:
        log.info("DDP: %d processes (backend %s); train.batch_size=%d is the global batch: "
                 "%d pairs per rank per step; the loss's batch statistics span all ranks",
                 ctx.world_size, ctx.backend, t["batch_size"], local_batch)
    log.info("data: %s", loading.describe())
    return {"data": str(data_dir), "device": str(device), "pair_samples": len(data),
            "steps_per_epoch": steps, "skipped_images": len(skipped),
            "world_size": ctx.world_size, "backend": ctx.backend,
            "global_batch": t["batch_size"], "batch_per_rank": local_batch,
            "loader": {"num_workers": loading.num_workers, "prefetch": loading.prefetch,
                       "pin_memory": loading.pin_memory},
            "data_fingerprint": fingerprint}


def _training(cfg: Mapping[str, Any], data_dir: str | Path, data: Any,
              bounds: list[tuple[int, int]],
              generators: tuple[np.random.Generator, torch.Generator], loading: LoaderSettings,
              paths: RunPaths, progress: bool, ctx: DistContext, device: torch.device
              ) -> Training:
    """The method, views, sampler, monitor, optimiser and schedule of a fresh run (in the
    order a seeded run has always built them)."""
    method = build_model(cfg).to(device)
    if cfg["model"]["channels_last"]:
        method = method.to(memory_format=torch.channels_last)
    enc = method.encoder
    aug = UniformPairAugment(AugmentConfig(**cfg["augment"]), cfg["data"]["input_size"],
                             mean=tuple(enc.mean), std=tuple(enc.std))
    sampler = create_row_sampler(cfg, data, same_image=method.same_image)
    monitor = guarded(ctx, lambda: build_monitor(cfg, data_dir, progress), run_here=ctx.is_main)
    optimizer = build_optimizer(method, optim_settings(cfg))
    steps, s = len(bounds), cfg["schedule"]
    scheduler = build_scheduler(optimizer, total_steps=steps * cfg["train"]["epochs"],
                                warmup_steps=steps * s["warmup_epochs"], schedule=s["name"],
                                final_lr_fraction=s["final_lr_fraction"])
    np_rng, gen = generators
    return Training(cfg=cfg, ctx=ctx, device=device, method=method, trained=method,
                    optimizer=optimizer, scheduler=scheduler, aug=aug, sampler=sampler,
                    data=data, bounds=bounds, np_rng=np_rng, gen=gen, loading=loading,
                    monitor=monitor, paths=paths, progress=progress)


def _continue_from(tr: Training, state: Mapping[str, Any]) -> None:
    """Weights, optimiser, schedule, RNG states and counters of a checkpoint; the metrics
    lines of epochs after it are dropped (they are redone)."""
    tr.method.load_state_dict(state["model"])
    tr.optimizer.load_state_dict(state["optimizer"])
    tr.scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"], tr.np_rng, tr.gen)
    tr.epoch, tr.global_step = state["epoch"], state["global_step"]
    tr.saved_epoch = tr.epoch
    tr.total_skipped = int(state.get("skipped_steps", 0))
    tr.last_loss = float(state.get("loss", tr.last_loss))
    run_dir = tr.paths.run_dir
    if tr.epoch >= tr.epochs:
        log.info("resuming %s: all %d epochs are done; nothing to train", run_dir, tr.epochs)
    else:
        log.info("resuming %s at epoch %d (step %d)", run_dir, tr.epoch + 1, tr.global_step)
    if tr.ctx.is_main:
        try:
            trim_metrics(tr.paths.metrics, tr.epoch)
        except OSError as exc:
            raise OutputError(f"cannot rewrite {tr.paths.metrics}: "
                              f"{exc.strerror or exc}") from None
