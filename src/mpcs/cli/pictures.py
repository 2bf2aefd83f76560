"""``mpcs tsne``, ``gradcam``, ``curves``, ``plot-metrics``: the picture commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from mpcs.viz.curves import plot_curves, plot_metrics
from mpcs.viz.gradcam import gradcam_images
from mpcs.viz.tsne import tsne_plot


def cmd_tsne(args: argparse.Namespace) -> int:
    paths = tsne_plot(args.checkpoint, args.data, args.out, features=args.features,
                      perplexity=args.perplexity, seed=args.seed, skip_bad=args.skip_bad,
                      progress=not args.quiet)
    print(f"wrote {len(paths)} picture(s) to {args.out}")
    return 0


def cmd_gradcam(args: argparse.Namespace) -> int:
    paths = gradcam_images(args.checkpoint, args.images, args.out, class_mode=args.class_,
                           labels=args.label, max_images=args.max_images,
                           grid_images=args.grid_images, skip_bad=args.skip_bad,
                           layer=args.layer)
    grid = [p for p in paths if p.name == "gradcam_grid.png"]
    print(f"wrote {len(paths) - len(grid)} Grad-CAM picture(s) to {args.out}"
          + (f" and the comparison grid {grid[0]}" if grid else ""))
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    paths = plot_curves(args.dir, args.out)
    print(f"wrote {len(paths)} curve picture(s) to {args.out}")
    return 0


def cmd_plot_metrics(args: argparse.Namespace) -> int:
    run = Path(args.run)
    metrics = run / "metrics.jsonl" if run.is_dir() else run
    out = plot_metrics(metrics, args.out or metrics.with_name("metrics.png"))
    print(f"wrote {out}")
    return 0
