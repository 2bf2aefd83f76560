"""Batch loading for pre-training: background prefetch, settings, and that they never change
a seeded run."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from mpcs.config import resolve
from mpcs.core.checkpoint import load_checkpoint
from mpcs.core.errors import ConfigError
from mpcs.data.loader import LoaderSettings, Prefetcher, loader_settings
from mpcs.engine.pretrain import pretrain
from tests.conftest import TINY_OVERRIDES


@pytest.mark.parametrize("workers, depth", [(0, 1), (1, 1), (1, 3), (3, 2)])
def test_prefetcher_yields_every_result_in_order(workers: int, depth: int) -> None:
    def slow_square(x: int) -> int:
        time.sleep(0.002 * (x % 3))  # finish out of order with several threads
        return x * x

    with Prefetcher(slow_square, range(10), workers=workers, depth=depth) as it:
        assert list(it) == [x * x for x in range(10)]


def test_prefetcher_works_ahead_in_a_background_thread() -> None:
    threads: list[str] = []

    def record(x: int) -> int:
        threads.append(threading.current_thread().name)
        return x

    with Prefetcher(record, [1, 2, 3], workers=1, depth=2) as it:
        first = next(iter(it))
        time.sleep(0.05)
        assert first == 1 and len(threads) >= 2  # the next item was prepared ahead
    assert all(name.startswith("mpcs-batch") for name in threads)


def test_prefetcher_raises_an_items_error_at_its_turn() -> None:
    def fail_on_two(x: int) -> int:
        if x == 2:
            raise ValueError("bad item 2")
        return x

    got = []
    with Prefetcher(fail_on_two, [0, 1, 2, 3], workers=1, depth=2) as it:
        with pytest.raises(ValueError, match="bad item 2"):
            for v in it:
                got.append(v)
    assert got == [0, 1]


def test_auto_settings_follow_the_device() -> None:
    auto = {"num_workers": None, "prefetch": 2, "pin_memory": None}
    assert loader_settings(auto, torch.device("cpu")) == LoaderSettings(1, 2, False)
    assert loader_settings({**auto, "num_workers": 0, "prefetch": 4},
                           torch.device("cpu")) == LoaderSettings(0, 4, False)
    # pinned memory only exists with CUDA; asking for it without is harmless
    assert not loader_settings({**auto, "pin_memory": True}, torch.device("cpu")).pin_memory \
        or torch.cuda.is_available()


@pytest.mark.parametrize("bad", ["data.num_workers=-1", "data.prefetch=0",
                                 "data.pin_memory=3", "distributed.backend=mpi"])
def test_bad_loader_and_distributed_settings_are_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match=bad.split("=")[0]):
        resolve(preset="cpu-small", overrides=[bad])


def test_loader_settings_do_not_change_a_seeded_run(tiny_breakhis: Path,
                                                    tmp_path: Path) -> None:
    runs = {}
    for name, extra in (("inline", ["data.num_workers=0"]),
                        ("threads", ["data.num_workers=2", "data.prefetch=3"])):
        cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, *extra])
        pretrain(cfg, tiny_breakhis, tmp_path / name, progress=False)
        runs[name] = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
        info = json.loads((tmp_path / name / "run.json").read_text())
        assert info["loader"]["num_workers"] == int(extra[0].split("=")[1])
    a, b = runs["inline"]["model"], runs["threads"]["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k
