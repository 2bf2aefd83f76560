"""Shared helpers of the benchmarks: timing, peak RSS, a header describing the machine."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (ru_maxrss is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


def header(name: str) -> None:
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    print(f"== {name}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  "
          f"cpus {os.cpu_count()}  torch threads {torch.get_num_threads()}  "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def time_calls(fn: Callable[[], object], iters: int, warmup: int) -> list[float]:
    """Seconds of each of ``iters`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_calls_cpu(fn: Callable[[], object], iters: int, warmup: int
                   ) -> tuple[list[float], list[float]]:
    """Wall seconds and CPU seconds of this process for each of ``iters`` calls of ``fn``
    after ``warmup`` untimed calls. On a machine shared with other work the CPU seconds of a
    single-threaded ``fn`` are the steadier measure (the wall time includes waiting for a
    core)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(iters):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def verdict(label: str, ratio: float, target: float, higher_is_better: bool) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    op = ">=" if higher_is_better else "<="
    return f"{label} = {ratio:.2f}  target {op} {target:g}  {'PASS' if ok else 'MISS'}"
