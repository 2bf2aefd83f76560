"""P2: images/s of our data path / an original-style per-sample pipeline, on ONE core.

Ours: the decoded-image cache (``mpcs.data.cache.load_images``: every image decoded once,
resized to the input size, kept as uint8 in a memory map; built once, reused every epoch),
then per batch: magnification pair sampling, indexing the cache, and the batched uniform
pair transform (``UniformPairAugment``) of both views.

Original style (the authors' pipeline): per sample, decode both 700x460 PNGs with PIL, apply
torchvision v2 transforms (ColorJitter, flips, 90-degree rotation, rotation + translation)
to each view separately (independent draws), resize to the input size, convert to a
normalised tensor.

Both run with ``torch.set_num_threads(1)`` and no worker processes; an image is one view.
The one-off cache build (decoding every PNG once, here with one decode thread) is reported
separately: it is amortised over all epochs and runs.

Run: ``.venv/bin/python bench/p2_data_pipeline.py``
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from common import header, median, peak_rss_mb, time_calls_cpu, verdict
from PIL import Image
from torchvision.transforms import v2

from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.cache import load_images
from mpcs.data.pairs.breakhis import pair_samples
from mpcs.data.pairs.samplers import create_pair_sampler
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
from mpcs.data.transforms import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, UniformPairAugment

TARGET = 10.0


def original_transform(size: int) -> v2.Compose:
    return v2.Compose([
        v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1),
        v2.RandomHorizontalFlip(),
        v2.RandomVerticalFlip(),
        v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
        v2.RandomAffine(degrees=15, translate=(0.05, 0.05)),
        v2.Resize((size, size), antialias=True),
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="network input size")
    ap.add_argument("--patients", type=int, default=2)
    ap.add_argument("--samples-per-patient", type=int, default=8,
                    help="each sample has 4 PNGs of 700x460 (one per magnification)")
    ap.add_argument("--batch", type=int, default=32, help="pairs per batch (ours)")
    ap.add_argument("--iters", type=int, default=5, help="timed batches (ours)")
    ap.add_argument("--orig-pairs", type=int, default=16, help="timed pairs (original)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    header("P2 data pipeline on one core")

    with tempfile.TemporaryDirectory(prefix="mpcs-bench-p2-") as tmp:
        t0 = time.perf_counter()
        root = write_breakhis(tmp, SynthConfig(patients=args.patients,
                                               samples_per_patient=args.samples_per_patient,
                                               image_size=(700, 460)), progress=False)
        samples = pair_samples(root)
        paths = [row[f"path_{m}"] for _, row in samples.iterrows() for m in MAGNIFICATIONS]
        n_samples = len(samples)
        print(f"synthetic set: {len(paths)} PNGs of 700x460 ({n_samples} samples), written in "
              f"{time.perf_counter() - t0:.1f} s (not part of any timing)")
        cache_dir = Path(tmp) / "cache"

        # ---- ours: one-off cache build, then a cache hit (memory map), then batches
        rss_before = peak_rss_mb()
        t0 = time.perf_counter()
        load_images(paths, args.size, cache_dir=cache_dir, progress=False, workers=1)
        build_s = time.perf_counter() - t0
        rss_build = peak_rss_mb()
        t0 = time.perf_counter()
        cached = load_images(paths, args.size, cache_dir=cache_dir, progress=False, workers=1)
        hit_s = time.perf_counter() - t0
        pixels = np.asarray(cached).reshape(n_samples, 4, 3, args.size, args.size)
        print(f"cache build (one-off, 1 decode thread): {build_s:.2f} s = "
              f"{len(paths) / build_s:.1f} img/s; cache hit (open memmap): {hit_s * 1e3:.1f} ms; "
              f"peak RSS {rss_before:.0f} MiB before the build, {rss_build:.0f} MiB after")

        rng = np.random.default_rng(0)
        gen = torch.Generator().manual_seed(0)
        sampler = create_pair_sampler("ordered")
        aug = UniformPairAugment(AugmentConfig(), args.size)
        batch = min(args.batch, n_samples)

        def ours() -> None:
            idx = rng.choice(n_samples, batch, replace=False)
            m1, m2 = sampler.sample(batch, rng)
            aug(torch.from_numpy(pixels[idx, m1]), torch.from_numpy(pixels[idx, m2]), gen)

        ours_wall, ours_cpu = time_calls_cpu(ours, args.iters, warmup=1)
        ours_s = median(ours_wall)
        ours_rate = 2 * batch / ours_s
        ours_cpu_rate = 2 * batch / median(ours_cpu)
        print(f"ours: {batch} pairs ({2 * batch} views) per batch, median {ours_s:.3f} s "
              f"= {ours_rate:.1f} img/s  peak RSS {peak_rss_mb():.0f} MiB")

        # ---- original style: decode + per-view torchvision transforms, sample by sample
        tf = original_transform(args.size)
        torch.manual_seed(0)

        def view(path: str) -> torch.Tensor:
            with Image.open(path) as img:
                return tf(img.convert("RGB"))

        def original_pair() -> None:
            i = int(rng.integers(n_samples))
            m1, m2 = sampler.sample(1, rng)
            row = samples.iloc[i]
            view(row[f"path_{MAGNIFICATIONS[m1[0]]}"])
            view(row[f"path_{MAGNIFICATIONS[m2[0]]}"])

        orig_times, orig_cpu = time_calls_cpu(original_pair, args.orig_pairs, warmup=1)
        orig_rate = 2 * len(orig_times) / sum(orig_times)
        orig_cpu_rate = 2 * len(orig_cpu) / sum(orig_cpu)
        print(f"original style: {len(orig_times)} pairs ({2 * len(orig_times)} views), "
              f"{sum(orig_times):.2f} s = {orig_rate:.1f} img/s  "
              f"peak RSS {peak_rss_mb():.0f} MiB")

    print(f"peak RSS {peak_rss_mb():.0f} MiB")
    print(f"per CPU-second of this process (steadier when other work shares the cores): "
          f"ours {ours_cpu_rate:.1f} img/s, original style {orig_cpu_rate:.1f} img/s, "
          f"ratio {ours_cpu_rate / orig_cpu_rate:.2f}")
    print(verdict("P2 ratio (ours / original, img/s)", ours_rate / orig_rate, TARGET, True))


if __name__ == "__main__":
    main()
