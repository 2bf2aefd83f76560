"""Multi-process (DDP) pre-training on CPU with gloo and 2 processes.

One spawn of 2 workers (the slow part: each imports torch) does everything; the tests then
check what it left behind:

* for EVERY method, one engine-level training step (the engine's sharding, the method's
  ``make_views`` of its slice of the global batch, ``prepare_for_ranks``: the method's
  global-batch statistics and DDP, and ``train_step``) against one process on the
  concatenated global batch: the ranks' views are the single process's views split in two,
  the mean of the ranks' losses is the single-process loss (SimCLR/MPCS: NT-Xent with
  negatives from both ranks; Barlow Twins/VICReg: the loss of the gathered global batch, the
  same on both ranks; BYOL/SimSiam: means of per-pair terms), and every gradient after
  DDP's averaging equals the single-process gradient (rtol 1e-4, atol 1e-5). The model is
  the tiny ResNet-18 with every BatchNorm replaced by GroupNorm/LayerNorm: BatchNorm
  normalises each rank's half batch with its own statistics, so a BatchNorm model is NOT
  expected to match the full batch, and torch's SyncBatchNorm (``distributed.sync_bn``)
  needs CUDA;
* ``mpcs pretrain`` (the CLI, with torchrun's environment variables set) on 2 processes:
  one set of outputs written by rank 0, and ``--resume`` from epoch 1 continues exactly;
  SimCLR (its own pair sampler and views) and BYOL (momentum target) run through the same
  loop.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import distributed as dist
from torch import nn

from mpcs.config import resolve
from mpcs.core.checkpoint import load_checkpoint
from mpcs.core.errors import ConfigError
from mpcs.data.pairs.breakhis import PairData, pair_samples
from mpcs.data.pairs.samplers import create_pair_sampler
from mpcs.data.transforms import AugmentConfig, UniformPairAugment
from mpcs.engine.distributed import (
    SINGLE,
    DistContext,
    env_ranks,
    per_rank_batch,
    shard,
)
from mpcs.engine.optim import build_optimizer
from mpcs.engine.pair_data import batch_bounds, epoch_plan, rank_views
from mpcs.engine.pretrain import build_model
from mpcs.engine.trainer import prepare_for_ranks, train_step
from tests.conftest import TINY_OVERRIDES

WORLD = 2
GLOBAL_BATCH = 8  # pairs; 4 per rank
METHODS = ["mpcs", "simclr", "byol", "simsiam", "barlow_twins", "vicreg"]
#: The methods whose loss is the global batch's on every rank (gathered statistics).
WHOLE_BATCH_LOSS = {"barlow_twins", "vicreg"}
STEP_OVERRIDES = [*TINY_OVERRIDES, f"train.batch_size={GLOBAL_BATCH}", "augment.brightness=0.3",
                  "augment.hue=0.05", "train.device=cpu"]
RUN_OVERRIDES = [*TINY_OVERRIDES, "train.epochs=2", "train.checkpoint_every=1",
                 "train.batch_size=4", "train.device=cpu"]

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="no torch.distributed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _no_batch_statistics(model: nn.Module) -> nn.Module:
    """BatchNorm2d -> GroupNorm(8), BatchNorm1d -> LayerNorm: per-sample normalisation (a
    frozen BatchNorm, as in BYOL's target network, gives a frozen replacement)."""
    for name, child in model.named_children():
        if isinstance(child, (nn.BatchNorm1d, nn.BatchNorm2d)):
            norm = (nn.GroupNorm(8, child.num_features) if isinstance(child, nn.BatchNorm2d)
                    else nn.LayerNorm(child.num_features))
            trained = child.weight is None or child.weight.requires_grad
            setattr(model, name, norm.requires_grad_(trained))
        else:
            _no_batch_statistics(child)
    return model


def one_step(cache: Path, data_dir: Path, ctx: DistContext, method: str = "mpcs"
             ) -> dict[str, Any]:
    """The engine's first step of a seeded epoch on this rank: its views, loss and the
    gradients of every trained parameter."""
    cfg = resolve(preset="cpu-small", overrides=[*STEP_OVERRIDES, f"data.cache_dir={cache}",
                                                 f"method={method}"])
    device = torch.device("cpu")
    samples = pair_samples(data_dir)
    data = PairData(samples, cfg["data"]["input_size"], cfg["data"]["cache_dir"],
                    progress=False)
    np_rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    bounds = batch_bounds(len(data), GLOBAL_BATCH, True, ctx.world_size)
    plan = epoch_plan(len(data), bounds, create_pair_sampler("ordered"), np_rng)[0]
    torch.manual_seed(0)
    model = _no_batch_statistics(build_model(cfg))
    enc = model.encoder
    aug = UniformPairAugment(AugmentConfig(**cfg["augment"]), cfg["data"]["input_size"],
                             mean=tuple(enc.mean), std=tuple(enc.std))
    v1, v2 = rank_views(data, plan, ctx)
    x1, x2 = model.make_views(aug, v1, v2, gen, global_pairs=len(plan.index),
                              first=ctx.rank * len(v1))
    trained = prepare_for_ranks(model, cfg, ctx, device)
    optimizer = build_optimizer(model, {"name": "adam", "lr": 1e-3, "weight_decay": 0.0})
    params = [p for p in model.parameters() if p.requires_grad]
    result = train_step(trained, x1, x2, optimizer, params, device, ctx=ctx)
    assert result.problem is None
    return {"loss": result.loss, "pairs": v1.shape[0], "views": (x1, x2),
            "grads": {k: p.grad.clone() for k, p in model.named_parameters()
                      if p.requires_grad}}


def _worker(rank: int, tmp: str, data_dir: str, port: int) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(WORLD), "LOCAL_RANK": str(rank),
                       "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)
    from mpcs.cli import main
    from mpcs.engine.distributed import barrier, distributed_context

    out = Path(tmp)
    with distributed_context("cpu") as (ctx, _):  # from torchrun's variables
        torch.save({m: one_step(out / "cache", Path(data_dir), ctx, m) for m in METHODS},
                   out / f"step{rank}.pt")
        args = ["--data", data_dir, "--quiet", "--set", f"data.cache_dir={out / 'cache'}",
                *[x for o in RUN_OVERRIDES for x in ("--set", o)]]
        codes = [main(["pretrain", "--out", str(out / "straight"), *args])]
        barrier(ctx)
        if ctx.is_main:  # a run stopped after epoch 1: last.pt holds epoch 1
            ckpt = out / "stopped" / "checkpoints"
            ckpt.mkdir(parents=True)
            shutil.copy(out / "straight" / "checkpoints" / "epoch_0001.pt", ckpt / "last.pt")
        barrier(ctx)
        codes.append(main(["pretrain", "--out", str(out / "stopped"), "--resume", *args]))
        for method in ("simclr", "byol"):
            codes.append(main(["pretrain", "--out", str(out / method), *args, "--set",
                               f"method={method}", "--set", "train.epochs=1"]))
        (out / f"codes{rank}.json").write_text(json.dumps(codes))


@pytest.fixture(scope="module")
def ddp_runs(tiny_breakhis: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp")
    # Build the decoded-image cache once here (numpy only, no torch thread pool yet), so the
    # workers and the reference share it.
    PairData(pair_samples(tiny_breakhis), 32, tmp / "cache", progress=False)
    # fork: the workers inherit the imported modules instead of importing torch again
    # (seconds each); like DataLoader workers, they set one torch thread first.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    mp.start_processes(_worker, args=(str(tmp), str(tiny_breakhis), _free_port()),
                       nprocs=WORLD, join=True, start_method=method)
    return tmp


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_ddp_step_equals_single_process_on_the_global_batch(ddp_runs: Path, tiny_breakhis: Path,
                                                           method: str) -> None:
    ranks = [torch.load(ddp_runs / f"step{r}.pt")[method] for r in range(WORLD)]
    full = one_step(ddp_runs / "cache", tiny_breakhis, SINGLE, method)
    assert full["pairs"] == GLOBAL_BATCH and [r["pairs"] for r in ranks] == [4, 4]
    for view in (0, 1):  # each rank made its slice of the single process's views
        torch.testing.assert_close(torch.cat([r["views"][view] for r in ranks]),
                                   full["views"][view], rtol=0, atol=1e-6)
    mean_loss = torch.stack([r["loss"] for r in ranks]).mean()
    torch.testing.assert_close(mean_loss, full["loss"], rtol=1e-4, atol=1e-5)
    if method in WHOLE_BATCH_LOSS:  # every rank computes the gathered global batch's loss
        torch.testing.assert_close(ranks[0]["loss"], ranks[1]["loss"], rtol=1e-4, atol=1e-5)
    else:
        assert not torch.equal(ranks[0]["loss"], ranks[1]["loss"]), "ranks saw the same pairs"
    for r in ranks:
        assert r["grads"].keys() == full["grads"].keys()
        for name, g in full["grads"].items():
            # atol relative to the tensor's largest gradient where that is above 1: Barlow
            # Twins' gradients reach ~50 here, and float32 summation in another order alone
            # moves them by ~1e-4.
            scale = max(1.0, float(g.abs().max()))
            torch.testing.assert_close(r["grads"][name] / scale, g / scale, rtol=1e-4,
                                       atol=1e-5, msg=name)
    encoder_grads = [g for k, g in full["grads"].items() if k.startswith("encoder.")]
    assert encoder_grads and any(g.abs().max() > 1e-4 for g in encoder_grads)


@pytest.mark.slow
def test_ddp_pretrain_writes_one_set_of_outputs_and_resumes(ddp_runs: Path) -> None:
    assert [json.loads((ddp_runs / f"codes{r}.json").read_text()) for r in range(WORLD)] \
        == [[0, 0, 0, 0]] * WORLD
    run = ddp_runs / "straight"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]  # rank 1 wrote nothing
    assert all(r["world_size"] == WORLD and np.isfinite(r["loss"]) for r in lines)
    assert {p.name for p in (run / "checkpoints").iterdir()} == {
        "last.pt", "epoch_0001.pt", "epoch_0002.pt"}
    info = json.loads((run / "run.json").read_text())
    assert (info["world_size"], info["global_batch"], info["batch_per_rank"]) == (WORLD, 4, 2)
    assert info["steps_per_epoch"] == 3  # 12 samples / global batch 4: not per rank
    assert not list(ddp_runs.rglob("*.tmp"))

    resumed = ddp_runs / "stopped"
    assert [json.loads(x)["epoch"] for x in
            (resumed / "metrics.jsonl").read_text().splitlines()] == [2]
    a = load_checkpoint(run / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["global_step"] == b["global_step"] == 6
    for k in a["model"]:  # bit for bit: the same two worker processes ran both
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0, msg=k)
    assert not any(k.startswith("module.") for k in a["model"])  # loadable without DDP


@pytest.mark.slow
@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_ddp_pretrain_runs_other_methods(ddp_runs: Path, method: str) -> None:
    run = ddp_runs / method
    [line] = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert line["world_size"] == WORLD and np.isfinite(line["loss"])
    if method == "byol":  # after_step ran on every step: the cosine schedule reached 1
        assert line["momentum"] == pytest.approx(1.0)
    else:
        assert "momentum" not in line
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["config"]["method"] == method and state["global_step"] == 3
    assert not any(k.startswith("module.") for k in state["model"])


# --------------------------------------------------------------------------- no processes


@pytest.mark.parametrize("env, needle", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h",
      "MASTER_PORT": "1"}, "need 0 <= RANK < WORLD_SIZE"),
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h",
      "MASTER_PORT": "1"}, "RANK='x' must be an integer"),
])
def test_half_set_torchrun_environment_is_a_clear_error(env: dict[str, str],
                                                        needle: str) -> None:
    with pytest.raises(ConfigError, match="torchrun") as err:
        env_ranks(env)
    assert needle in str(err.value)
    assert env_ranks({}) is None


def test_half_set_environment_stops_the_cli(tiny_breakhis: Path, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture) -> None:
    from mpcs.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    code = main(["pretrain", "--data", str(tiny_breakhis), "--out", str(tmp_path / "run"),
                 "--quiet", *[x for o in TINY_OVERRIDES for x in ("--set", o)]])
    err = capsys.readouterr().err
    assert code == 2 and "WORLD_SIZE=2 but RANK" in err
    assert not (tmp_path / "run").exists()


def test_global_batch_is_sharded_disjointly_in_rank_order() -> None:
    idx = np.random.default_rng(0).permutation(100)[:12]
    parts = [shard(idx, r, 3) for r in range(3)]
    assert np.array_equal(np.concatenate(parts), idx)
    assert per_rank_batch(12, 3) == 4
    with pytest.raises(ConfigError, match="GLOBAL batch"):
        per_rank_batch(10, 4)


def test_last_batch_is_cut_to_the_world_size() -> None:
    assert batch_bounds(12, 4, drop_last=True, world_size=2) == [(0, 4), (4, 8), (8, 12)]
    assert batch_bounds(11, 4, drop_last=False, world_size=2) == [(0, 4), (4, 8)]
    assert batch_bounds(13, 4, drop_last=False, world_size=2) == [(0, 4), (4, 8), (8, 12)]
    assert batch_bounds(9, 4, drop_last=False) == [(0, 4), (4, 8)]  # never 1 pair


def test_sync_bn_on_cpu_is_refused() -> None:
    cfg = resolve(preset="cpu-small", overrides=[*TINY_OVERRIDES, "distributed.sync_bn=true"])
    with pytest.raises(ConfigError, match="SyncBatchNorm runs on GPUs only"):
        prepare_for_ranks(build_model(cfg), cfg, DistContext(rank=0, world_size=2),
                          torch.device("cpu"))
