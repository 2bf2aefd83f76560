"""GPU: pre-training images/s of ResNet-50@224 with AMP, on one GPU and with DDP.

The step timed is the engine's (``mpcs.engine.pretrain``): the views of each rank's shard
gathered from a uint8 pixel array in host memory (pinned, by a background thread two
batches ahead, as ``mpcs.data.loader`` does), copied to the GPU, the batched
uniform augmentation on the GPU (the method's ``make_views``), channels_last + autocast forward
of the 2N views, NT-Xent over the views of all ranks, backward (DDP all-reduce), optimiser and
scheduler steps. Images = views (2 per pair); the rate is summed over the ranks. The bare
model step (forward + backward + optimiser on a ready batch, trivial loss) is timed on
rank 0 for reference.

One GPU:       ``python bench/gpu_throughput.py``            (target >= 2,500 img/s, H100)
DDP scaling:   ``python bench/gpu_throughput.py --scaling``  (runs 1, 2, 4, ... GPUs with
               torchrun and prints the rate and efficiency of each)
Smoke test on a CPU (numbers meaningless):
               ``python bench/gpu_throughput.py --device cpu --encoder resnet18 --size 32
               --batch 4 --steps 2 --warmup 1``

The card's name is printed with the results; record it beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch
from common import header, peak_rss_mb

TARGET_ONE_H100 = 2500.0


def measure(args: argparse.Namespace) -> dict:
    from mpcs.config import resolve
    from mpcs.data.loader import Prefetcher, pin
    from mpcs.data.pairs.samplers import create_pair_sampler
    from mpcs.data.transforms import AugmentConfig, UniformPairAugment
    from mpcs.engine.distributed import distributed_context
    from mpcs.engine.optim import build_optimizer, build_scheduler
    from mpcs.engine.pair_data import StepPlan
    from mpcs.engine.pretrain import build_model, optim_settings
    from mpcs.engine.trainer import prepare_for_ranks, train_step

    overrides = [f"model.encoder={args.encoder}", "model.weights=none",
                 f"data.input_size={args.size}", f"train.batch_size={args.batch}",
                 f"train.amp='{args.amp}'", f"train.device={args.device}",
                 "optim.name=lars", "optim.lr=0.3", "optim.scale_lr_with_batch=true"]
    with distributed_context(args.device) as (ctx, device):
        world = ctx.world_size
        cfg = resolve(preset="mpcs-op-resnet50", overrides=[
            *overrides, f"train.batch_size={args.batch * world}"])
        torch.backends.cudnn.benchmark = True
        rng = np.random.default_rng(ctx.rank)
        samples = max(args.batch * 2, 64)
        pixels = rng.integers(0, 256, (samples, 4, 3, args.size, args.size), dtype=np.uint8)
        model = build_model(cfg).to(device).to(memory_format=torch.channels_last)
        enc = model.encoder
        aug = UniformPairAugment(AugmentConfig(**cfg["augment"]), args.size,
                                 mean=tuple(enc.mean), std=tuple(enc.std))
        sampler = create_pair_sampler("ordered")
        optimizer = build_optimizer(model, optim_settings(cfg))
        scheduler = build_scheduler(optimizer, total_steps=10_000, warmup_steps=10,
                                    schedule="cosine", final_lr_fraction=0.0)
        trained = prepare_for_ranks(model, cfg, ctx, device)
        params = [p for p in model.parameters() if p.requires_grad]
        gen = torch.Generator().manual_seed(0)
        pinned = device.type == "cuda"

        def plans(count: int) -> list[StepPlan]:
            out = []
            for _ in range(count):
                idx = rng.choice(samples, args.batch, replace=False)
                out.append(StepPlan(idx, *sampler.sample(args.batch, rng)))
            return out

        def gather(plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor]:
            # as the engine's rank_views, in its background thread (Prefetcher below)
            return (pin(torch.from_numpy(pixels[plan.index, plan.mag1]), pinned),
                    pin(torch.from_numpy(pixels[plan.index, plan.mag2]), pinned))

        def step(v1: torch.Tensor, v2: torch.Tensor) -> None:
            x1, x2 = model.make_views(aug, v1.to(device, non_blocking=True),
                                      v2.to(device, non_blocking=True), gen,
                                      global_pairs=args.batch * world,
                                      first=ctx.rank * args.batch)
            result = train_step(trained, x1, x2, optimizer, params, device,
                                cfg["train"]["amp"], ctx)
            if result.problem:
                raise RuntimeError(result.problem)
            optimizer.step()
            scheduler.step()

        def sync() -> None:
            if device.type == "cuda":
                torch.cuda.synchronize(device)

        with Prefetcher(gather, plans(args.warmup), 1, 2) as batches:
            for v1, v2 in batches:
                step(v1, v2)
        sync()
        t0 = time.perf_counter()
        with Prefetcher(gather, plans(args.steps), 1, 2) as batches:
            for v1, v2 in batches:
                step(v1, v2)
        sync()
        seconds = time.perf_counter() - t0
        full = 2 * args.batch * args.steps * world / seconds

        bare = None
        if ctx.is_main and not ctx.enabled:
            from mpcs.core.runtime import autocast_for

            x = torch.randn(2 * args.batch, 3, args.size, args.size, device=device
                            ).contiguous(memory_format=torch.channels_last)

            def bare_step() -> None:
                optimizer.zero_grad(set_to_none=True)
                with autocast_for(device, cfg["train"]["amp"]):
                    z = model.head(model.encoder(x))
                z.float().square().mean().backward()
                optimizer.step()

            for _ in range(args.warmup):
                bare_step()
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                bare_step()
            sync()
            bare = 2 * args.batch * args.steps / (time.perf_counter() - t0)
        card = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        mem = (torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda"
               else float("nan"))
        return {"world_size": world, "card": card, "images_per_s": full,
                "bare_images_per_s": bare, "batch_per_gpu": args.batch,
                "gpu_mem_gib": mem, "peak_rss_mib": peak_rss_mb(), "rank": ctx.rank}


def scaling(args: argparse.Namespace) -> None:
    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"--scaling needs several GPUs; this machine has {gpus}")
    sizes = [n for n in (1, 2, 4, 8, 16) if n <= max(gpus, 1)]
    base = None
    for n in sizes:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={n}", __file__, "--json",
               *[a for a in sys.argv[1:] if a != "--scaling"]]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        res = json.loads(out.strip().splitlines()[-1])
        base = base or res["images_per_s"]
        eff = res["images_per_s"] / (n * base)
        print(f"{n} GPU(s) ({res['card']}): {res['images_per_s']:.0f} img/s, scaling "
              f"efficiency {eff:.2f} (rate / ({n} x the 1-GPU rate))", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoder", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256, help="pairs per GPU per step")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--amp", default="bf16", choices=["bf16", "fp16", "off"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--scaling", action="store_true", help="1, 2, 4, ... GPUs via torchrun")
    ap.add_argument("--json", action="store_true", help="print one JSON line (rank 0)")
    args = ap.parse_args()
    if args.scaling:
        header("GPU DDP scaling")
        scaling(args)
        return
    res = measure(args)
    if res["rank"] != 0:
        return
    if args.json:
        print(json.dumps(res))
        return
    header("GPU pre-training throughput")
    print(f"{args.encoder}@{args.size}, {args.batch} pairs ({2 * args.batch} views) per GPU, "
          f"AMP {args.amp}, channels_last, {res['world_size']} process(es) on {res['card']}: "
          f"{res['images_per_s']:.0f} img/s (bare model step "
          f"{res['bare_images_per_s'] or float('nan'):.0f} img/s); GPU memory "
          f"{res['gpu_mem_gib']:.1f} GiB; peak RSS {res['peak_rss_mib']:.0f} MiB")
    print(f"target (one H100, ResNet-50@224): >= {TARGET_ONE_H100:.0f} img/s; ratio "
          f"{res['images_per_s'] / TARGET_ONE_H100:.2f}")


if __name__ == "__main__":
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    main()
