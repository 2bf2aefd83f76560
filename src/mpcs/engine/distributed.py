"""Multi-process (DDP) pre-training: process group from torchrun's environment, rank roles,
sharding of the global batch, and collective error handling.

Start several processes with torchrun; each becomes one rank::

    torchrun --nproc_per_node 4 -m mpcs pretrain --data DATA --out RUN --preset ...
    # several machines: the same command on each, with torchrun's rendezvous options
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d \\
        --rdzv_endpoint HOST:29400 --rdzv_id mpcs1 -m mpcs pretrain ...

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``
in every process; :func:`distributed_context` reads them and joins the process group
(``nccl`` on CUDA, ``gloo`` on CPU). Without them the run is a single process, exactly as
before. A process group initialised by the caller (``torch.distributed.init_process_group``)
is used as it is and left open.

Roles: every rank trains; only rank 0 writes the run folder (config, run.json, metrics,
checkpoints, skipped-image list) and logs; the node-local rank 0 of each machine builds the
decoded-image cache while the node's other ranks wait, then they all read it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import numpy as np
import torch
from torch import distributed as dist

from mpcs.core import errors
from mpcs.core.errors import ConfigError, MpcsError
from mpcs.core.runtime import select_device

log = logging.getLogger(__name__)

#: The variables torchrun sets that a rank needs; all or none must be present.
TORCHRUN_VARS: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                  "MASTER_PORT")
BACKENDS: tuple[str, ...] = ("auto", "nccl", "gloo")
T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the run.

    Attributes:
        rank: global rank (0 for a single process).
        world_size: number of processes (1 for a single process).
        local_rank: rank on this machine (picks the GPU).
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (single process).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes the run folder and logs."""
        return self.rank == 0


SINGLE = DistContext()


def _int_var(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} must be an integer "
                          f"(it is set by torchrun)") from None


def env_ranks(environ: dict[str, str] | None = None) -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's variables, or ``None`` when none
    of them is set (a single process).

    Raises:
        ConfigError: when only some of :data:`TORCHRUN_VARS` are set (naming the missing
            ones), or their values are not consistent integers.

    Example:
        >>> env_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1",
        ...            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
        (1, 2, 1)
    """
    env = os.environ if environ is None else environ
    present = [v for v in TORCHRUN_VARS if env.get(v, "") != ""]
    if not present:
        return None
    missing = [v for v in TORCHRUN_VARS if v not in present]
    if missing:
        raise ConfigError(
            f"distributed launch half set up: {', '.join(f'{v}={env[v]}' for v in present)} "
            f"but {', '.join(missing)} not set. Start multi-process pre-training with "
            f"`torchrun --nproc_per_node N -m mpcs pretrain ...` (it sets all of "
            f"{', '.join(TORCHRUN_VARS)}), or unset these variables for a single process.")
    rank = _int_var("RANK", env["RANK"])
    world = _int_var("WORLD_SIZE", env["WORLD_SIZE"])
    local = _int_var("LOCAL_RANK", env["LOCAL_RANK"])
    _int_var("MASTER_PORT", env["MASTER_PORT"])
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, "
                          f"WORLD_SIZE={world}, LOCAL_RANK={local} (need 0 <= RANK < "
                          f"WORLD_SIZE and LOCAL_RANK >= 0)")
    return rank, world, local


def pick_backend(device_type: str, requested: str = "auto") -> str:
    """``nccl`` for CUDA and ``gloo`` for CPU unless ``requested`` names one."""
    if requested not in BACKENDS:
        raise ConfigError(f"distributed.backend must be one of {', '.join(BACKENDS)}, "
                          f"got {requested!r}")
    if requested != "auto":
        if requested == "nccl" and device_type != "cuda":
            raise ConfigError("distributed.backend=nccl needs CUDA devices; use gloo (or "
                              "auto) on CPU")
        return requested
    return "nccl" if device_type == "cuda" else "gloo"


def rank_device(device_name: str, local_rank: int, world_size: int) -> torch.device:
    """The device of this rank: ``cuda:LOCAL_RANK`` for ``auto``/``cuda`` when CUDA is
    present, else the CPU.

    Raises:
        ConfigError: for an explicit ``cuda:N`` with several processes (each rank must
            use its own GPU), or a GPU index the machine lacks.
    """
    if device_name == "cpu" or (device_name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if device_name not in ("auto", "cuda"):
        if world_size > 1:
            raise ConfigError(f"train.device={device_name} with {world_size} processes: each "
                              f"rank takes the GPU of its LOCAL_RANK, so use train.device="
                              f"auto or cuda (pick GPUs with CUDA_VISIBLE_DEVICES)")
        return torch.device(device_name)
    if not torch.cuda.is_available():
        raise ConfigError(f"train.device={device_name} but CUDA is not available; use cpu "
                          f"or auto")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise ConfigError(f"LOCAL_RANK={local_rank} but this machine has {count} visible "
                          f"GPU(s); start at most {count} processes per node "
                          f"(--nproc_per_node)")
    return torch.device("cuda", local_rank)


@contextmanager
def distributed_context(device_name: str = "auto", backend: str = "auto",
                        timeout_minutes: float = 30.0
                        ) -> Iterator[tuple[DistContext, torch.device]]:
    """Join (or reuse) the process group for the run; yields ``(context, device)``.

    * torchrun's variables set: initialise the group from them (``env://``) and destroy it
      on exit;
    * a group already initialised by the caller: use it (``LOCAL_RANK`` if set, else the
      rank, picks the GPU) and leave it open;
    * neither: a single process (:data:`SINGLE`) on ``device_name``.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        device = rank_device(device_name, local, world)
        if device.type == "cuda":
            torch.cuda.set_device(device)  # NCCL's object collectives use the current GPU
        yield DistContext(rank, world, local, dist.get_backend()), device
        return
    ranks = env_ranks()
    if ranks is None or ranks[1] == 1:
        yield SINGLE, select_device(device_name)
        return
    if not dist.is_available():
        raise ConfigError("torchrun started several processes but this torch build has no "
                          "torch.distributed")
    rank, world, local = ranks
    device = rank_device(device_name, local, world)
    chosen = pick_backend(device.type, backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(chosen, init_method="env://", rank=rank, world_size=world,
                            timeout=timedelta(minutes=timeout_minutes))
    try:
        yield DistContext(rank, world, local, chosen), device
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- batches


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """Pairs per rank of a global batch of ``global_batch`` pairs.

    Raises:
        ConfigError: unless ``global_batch`` is a multiple of ``world_size`` with at least
            one pair per rank.
    """
    if global_batch % world_size or global_batch < world_size:
        raise ConfigError(
            f"train.batch_size={global_batch} is the GLOBAL batch (pairs per optimiser step "
            f"over all {world_size} processes) and must be a multiple of the world size "
            f"{world_size}; use e.g. {max(world_size, global_batch // world_size * world_size)}")
    return global_batch // world_size


def shard(values: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous slice of a global batch whose length is a multiple of
    ``world_size`` (rank 0 first, so concatenating the shards in rank order restores it).

    Example:
        >>> shard(np.arange(8), 1, 4)
        array([2, 3])
    """
    n = len(values)
    if n % world_size:
        raise ValueError(f"cannot split {n} items evenly over {world_size} ranks")
    per = n // world_size
    return values[rank * per:(rank + 1) * per]


# --------------------------------------------------------------------------- collectives


def all_mean(ctx: DistContext, value: float, device: torch.device) -> float:
    """Mean of a float over all ranks (the value itself for a single process)."""
    if not ctx.enabled:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / ctx.world_size


def all_true(ctx: DistContext, flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on every rank (a collective decision, so
    that all ranks take the same branch)."""
    if not ctx.enabled:
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def broadcast_object(ctx: DistContext, obj: Any, device: torch.device) -> Any:
    """``obj`` of rank 0 on every rank (pickled; fine for a checkpoint's state)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def guarded(ctx: DistContext, fn: Callable[[], T], run_here: bool = True,
            device: torch.device | None = None) -> T | None:
    """Run ``fn`` on the ranks where ``run_here`` is true, then agree on the outcome.

    A rank where ``fn`` raised re-raises its exception; every other rank raises the same
    error (type and message of the lowest failing rank; an :class:`MpcsError` pointing at
    that rank for other exceptions), so that no rank waits forever in a later collective
    for one that stopped. A single process simply runs ``fn``. Returns ``fn()``'s value
    (``None`` where it did not run).
    """
    result: T | None = None
    failure: tuple[str, str] | None = None
    raised: BaseException | None = None
    if run_here:
        try:
            result = fn()
        except MpcsError as exc:
            failure, raised = (type(exc).__name__, str(exc)), exc
        except Exception as exc:  # noqa: BLE001 - reported to the other ranks, re-raised
            failure, raised = ("", f"{type(exc).__name__}: {exc}"), exc
    if not ctx.enabled:
        if raised is not None:
            raise raised
        return result
    outcomes: list[tuple[str, str] | None] = [None] * ctx.world_size
    dist.all_gather_object(outcomes, failure)
    if raised is not None:
        raise raised
    for rank, outcome in enumerate(outcomes):
        if outcome is None:
            continue
        kind, message = outcome
        if not kind:
            raise MpcsError(f"rank {rank} failed ({message}); see its traceback")
        raise _error(kind, message)
    return result


def _error(kind: str, message: str) -> MpcsError:
    """An :class:`MpcsError` subclass by name (from :mod:`mpcs.core.errors`)."""
    cls = getattr(errors, kind, MpcsError)
    if not (isinstance(cls, type) and issubclass(cls, MpcsError)):
        cls = MpcsError
    return cls(message)


def quiet_non_main(ctx: DistContext) -> None:
    """Ranks other than 0 log only errors (rank 0 speaks for the run)."""
    if ctx.enabled and not ctx.is_main:
        logging.getLogger("mpcs").setLevel(logging.ERROR)
