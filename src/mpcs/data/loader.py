"""Batch loading for pre-training from the decoded-image cache: background threads, pinned
memory, prefetch depth.

Why not a ``torch.utils.data.DataLoader``: with the decoded-image cache
(:mod:`mpcs.data.cache`) a batch is one fancy-indexing copy out of a memory-mapped uint8
array (``pixels[rows, magnification]``), and the augmentation runs on whole batches on the
training device (:class:`mpcs.data.transforms.UniformPairAugment`). There is no per-sample
decoding left for worker processes to parallelise; worker processes would only add pickling
and a second copy of every batch. What remains worth hiding behind the model step is the
copy out of the memory map (a page-cache read the first time), pinning it for a fast
host-to-GPU copy, and starting that copy. :class:`Prefetcher` does this in background
threads (numpy and torch release the GIL while copying), ``depth`` batches ahead.

All randomness (the epoch's order, magnification pairs, augmentation parameters) is drawn in
the main thread in step order, so the draws, and therefore runs and resumes, do not depend on
these settings.

Settings (config ``data.*``, all overridable with ``--set``):

============== ========= ==============================================================
key            default   meaning
============== ========= ==============================================================
num_workers    null      background threads gathering batches; null = auto (1); 0 =
                         gather in the training loop itself
prefetch       2         batches prepared ahead of the one being trained on
pin_memory     null      page-locked batches for asynchronous host-to-GPU copies;
                         null = auto (on with CUDA, off on CPU)
============== ========= ==============================================================

"Persistent workers" need no setting: the threads only live for one epoch, and starting one
costs microseconds (there is no process to fork or dataset to re-open).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")

AUTO_WORKERS = 1


@dataclass(frozen=True)
class LoaderSettings:
    """Resolved batch-loading settings (see the module docstring)."""

    num_workers: int
    prefetch: int
    pin_memory: bool

    def describe(self) -> str:
        threads = (f"{self.num_workers} background thread(s), {self.prefetch} batch(es) ahead"
                   if self.num_workers else "in the training loop (no background thread)")
        return f"batches gathered {threads}; pinned memory {'on' if self.pin_memory else 'off'}"


def loader_settings(data_cfg: Mapping[str, Any], device: torch.device) -> LoaderSettings:
    """The settings for ``device`` from a configuration's ``data`` section (nulls = auto).

    Example:
        >>> loader_settings({"num_workers": None, "prefetch": 2, "pin_memory": None},
        ...                 torch.device("cpu"))
        LoaderSettings(num_workers=1, prefetch=2, pin_memory=False)
    """
    workers = data_cfg.get("num_workers")
    pin = data_cfg.get("pin_memory")
    return LoaderSettings(
        num_workers=AUTO_WORKERS if workers is None else int(workers),
        prefetch=int(data_cfg.get("prefetch", 2)),
        pin_memory=(device.type == "cuda") if pin is None else bool(pin) and
        torch.cuda.is_available())


class Prefetcher(Generic[T, R]):
    """``fn(item)`` for each of ``items`` in order, computed up to ``depth`` items ahead by
    ``workers`` threads (``workers=0``: computed on demand in the caller's thread).

    Use it as an iterator, once; :meth:`close` (or leaving a ``with`` block) cancels what is
    still queued. An exception of ``fn`` is raised when its item's turn comes.

    Example:
        >>> with Prefetcher(lambda x: x * x, [1, 2, 3], workers=1, depth=2) as it:
        ...     list(it)
        [1, 4, 9]
    """

    def __init__(self, fn: Callable[[T], R], items: Sequence[T], workers: int = 1,
                 depth: int = 2) -> None:
        if workers < 0 or depth < 1:
            raise ValueError(f"workers must be >= 0 and depth >= 1, got {workers}, {depth}")
        self.fn, self.items = fn, list(items)
        self.depth = depth
        self.pool = (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mpcs-batch")
                     if workers else None)
        self.pending: deque[Future[R]] = deque()
        self.next_item = 0

    def _submit(self) -> None:
        assert self.pool is not None
        while len(self.pending) < self.depth and self.next_item < len(self.items):
            self.pending.append(self.pool.submit(self.fn, self.items[self.next_item]))
            self.next_item += 1

    def __iter__(self) -> Iterator[R]:
        if self.pool is None:
            for item in self.items:
                yield self.fn(item)
            return
        self._submit()
        while self.pending:
            result = self.pending.popleft().result()
            self._submit()
            yield result

    def close(self) -> None:
        if self.pool is not None:
            for f in self.pending:
                f.cancel()
            self.pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> Prefetcher[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pin(t: torch.Tensor, enabled: bool) -> torch.Tensor:
    """``t`` in page-locked memory when ``enabled`` (and CUDA is there), else as is."""
    return t.pin_memory() if enabled and torch.cuda.is_available() else t
