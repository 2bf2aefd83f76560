"""P1: rate of the full MPCS pre-training step / rate of a bare model step on ready tensors.

The full step is the body of the loop in ``mpcs.engine.trainer`` (pair sampling from a
decoded uint8 array [S, 4, 3, H, W], uniform batched augmentation of both views,
channels_last forward of the 2N views, NT-Xent, finite checks, backward, optimiser step,
scheduler step, ``loss.item()``). The bare step is forward + backward + optimiser step of the
same model (same channels_last layout, same optimiser) on a ready normalised float batch of
the same shape, with a trivial loss. The ratio says how much of the model's speed the data
path, augmentation and loss leave: 1.0 means they cost nothing.

Run: ``.venv/bin/python bench/p1_step_rate.py [--skip-resnet50]``
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from common import header, median, peak_rss_mb, time_calls, verdict

from mpcs.config import resolve
from mpcs.data.pairs.samplers import create_pair_sampler
from mpcs.data.transforms import AugmentConfig, UniformPairAugment
from mpcs.engine.optim import build_optimizer, build_scheduler
from mpcs.engine.pretrain import build_model
from mpcs.engine.pretrain import optim_settings as _optim_cfg
from mpcs.engine.trainer import all_finite as _finite
from mpcs.losses import NTXentLoss

TARGET = 0.90


def run_config(encoder: str, size: int, batch: int, iters: int, warmup: int,
               samples: int, paper_augment: bool) -> tuple[float, float]:
    """(full step img/s, bare step img/s) for one configuration; images = 2N views."""
    overrides = [f"model.encoder={encoder}", f"data.input_size={size}",
                 f"train.batch_size={batch}"]
    cfg = resolve(preset="cpu-small", overrides=overrides)
    aug_cfg = AugmentConfig() if paper_augment else AugmentConfig(**cfg["augment"])
    torch.manual_seed(0)
    np_rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    # Synthetic decoded-pixel cache, as PairData holds it: uint8 [S, 4, 3, H, W].
    pixels = np_rng.integers(0, 256, (samples, 4, 3, size, size), dtype=np.uint8)

    model = build_model(cfg).to(memory_format=torch.channels_last)
    model.train()
    opt = build_optimizer(model, _optim_cfg(cfg))
    sched = build_scheduler(opt, total_steps=10_000, warmup_steps=10, schedule="cosine",
                            final_lr_fraction=0.1)
    enc = model.encoder
    aug = UniformPairAugment(aug_cfg, size, mean=tuple(enc.mean), std=tuple(enc.std))
    sampler = create_pair_sampler(cfg["pairs"]["strategy"])
    loss_fn = NTXentLoss(temperature=cfg["loss"]["temperature"])
    params = [p for p in model.parameters() if p.requires_grad]
    x_ready = torch.randn(2 * batch, 3, size, size).contiguous(memory_format=torch.channels_last)

    def full_step() -> None:
        idx = np_rng.choice(samples, batch, replace=False)
        m1, m2 = sampler.sample(batch, np_rng)
        v1 = torch.from_numpy(pixels[idx, m1])
        v2 = torch.from_numpy(pixels[idx, m2])
        x1, x2 = aug(v1, v2, gen)
        x = torch.cat([x1, x2]).contiguous(memory_format=torch.channels_last)
        z = model.head(model.encoder(x))
        loss = loss_fn(z[:batch].float(), z[batch:].float())
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            raise RuntimeError("non-finite loss")
        loss.backward()
        if not _finite([p.grad for p in params]):
            raise RuntimeError("non-finite gradients")
        opt.step()
        sched.step()
        loss.item()

    def aug_only() -> None:
        idx = np_rng.choice(samples, batch, replace=False)
        m1, m2 = sampler.sample(batch, np_rng)
        aug(torch.from_numpy(pixels[idx, m1]), torch.from_numpy(pixels[idx, m2]), gen)

    def bare_step() -> None:  # same model and optimiser, ready input, trivial loss
        z = model.head(model.encoder(x_ready))
        loss = z.float().square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    # Full and bare steps alternate, so that load from other processes and the CPU's clock
    # changes hit both alike; the first ``warmup`` pairs of steps are not timed.
    full: list[float] = []
    bare: list[float] = []
    for i in range(warmup + iters):
        f = time_calls(full_step, 1, 0)
        b = time_calls(bare_step, 1, 0)
        if i >= warmup:
            full += f
            bare += b
    aug_s = median(time_calls(aug_only, max(2, iters // 2), 1))
    n_img = 2 * batch
    full_rate, bare_rate = n_img / median(full), n_img / median(bare)
    print(f"{encoder}@{size} batch {batch} ({n_img} views/step), {iters} timed steps after "
          f"{warmup} warm-up: full {median(full):.3f} s/step = {full_rate:.1f} img/s, "
          f"bare {median(bare):.3f} s/step = {bare_rate:.1f} img/s, "
          f"ratio {full_rate / bare_rate:.3f}; sampling+augmentation alone {aug_s:.3f} s/step "
          f"({aug_s / median(bare):.1%} of a bare step)  peak RSS {peak_rss_mb():.0f} MiB")
    return full_rate, bare_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters18", type=int, default=4, help="timed steps, ResNet-18@112")
    ap.add_argument("--warmup18", type=int, default=1)
    ap.add_argument("--batch18", type=int, default=64)
    ap.add_argument("--iters50", type=int, default=2, help="timed steps, ResNet-50@224")
    ap.add_argument("--warmup50", type=int, default=1)
    ap.add_argument("--batch50", type=int, default=16)
    ap.add_argument("--samples", type=int, default=256,
                    help="samples in the synthetic uint8 cache (x4 magnifications)")
    ap.add_argument("--skip-resnet50", action="store_true")
    ap.add_argument("--cpu-small-augment", action="store_true",
                    help="use the cpu-small preset's augmentation (no colour jitter) instead "
                         "of the paper's full uniform transformation")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    header("P1 pre-training step rate")
    what = ("cpu-small preset (no colour jitter)" if args.cpu_small_augment else
            "paper (colour jitter incl. hue, flips, rot90, rotation+translation)")
    print(f"augmentation: {what}")
    ratios = []
    f, b = run_config("resnet18", 112, args.batch18, args.iters18, args.warmup18,
                      args.samples, not args.cpu_small_augment)
    ratios.append(f / b)
    if not args.skip_resnet50:
        f, b = run_config("resnet50", 224, args.batch50, args.iters50, args.warmup50,
                          min(args.samples, 64), not args.cpu_small_augment)
        ratios.append(f / b)
    print(f"peak RSS {peak_rss_mb():.0f} MiB")
    print(verdict("P1 ratio (pipeline / bare, worst config)", min(ratios), TARGET, True))


if __name__ == "__main__":
    main()
