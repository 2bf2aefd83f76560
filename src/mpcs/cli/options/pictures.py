"""The arguments of ``mpcs plot-metrics``, ``tsne``, ``gradcam``, ``curves``."""

from __future__ import annotations

import argparse

Subparsers = argparse._SubParsersAction


def add_plot_metrics(sub: Subparsers) -> None:
    s = sub.add_parser("plot-metrics", help="plot a pre-training run's loss and kNN accuracy")
    s.add_argument("run", help="run folder or its metrics.jsonl")
    s.add_argument("--out", help="PNG to write (default: RUN/metrics.png)")


def add_tsne(sub: Subparsers) -> None:
    s = sub.add_parser("tsne", help="t-SNE pictures of features, per magnification and all")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True, help="a BreakHis-layout folder or image folder")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--features", choices=["backbone", "projection"], default="backbone")
    s.add_argument("--perplexity", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--skip-bad", action="store_true")
    s.add_argument("--quiet", action="store_true")


def add_gradcam(sub: Subparsers) -> None:
    s = sub.add_parser("gradcam", help="Grad-CAM overlays of fine-tuned checkpoints, one PNG "
                       "per image, and a grid comparing two or more checkpoints (paper Fig. 5)")
    s.add_argument("--checkpoint", required=True, action="append",
                   help="a fine-tuned or linear-eval best.pt; repeat to compare checkpoints")
    s.add_argument("--label", action="append",
                   help="name of each --checkpoint in the titles, in order (default: the "
                   "experiment method, else the initialisation)")
    s.add_argument("--images", required=True, nargs="+", help="image files or folders")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--class", dest="class_", default="predicted", metavar="predicted|true|NAME",
                   help="the class whose map the grid shows: each model's predicted class "
                   "(default), the true class from the BreakHis name, or a class name such "
                   "as malignant; per-image PNGs always show predicted and true")
    s.add_argument("--max-images", type=int, help="only the first N images")
    s.add_argument("--grid-images", type=int, default=8, help="rows of the grid (default 8)")
    s.add_argument("--layer", default="auto", metavar="auto|last|NAME",
                   help="the explained feature map: the deepest stage at least 4x4 cells at "
                   "the model's input size (auto, default; the last stage at 224 px), the map "
                   "the encoder pools (last; 1x1, i.e. flat, for a ResNet at 32 px), or a "
                   "module name such as layer3; titles name a non-last layer, whose map is "
                   "less class-specific")
    s.add_argument("--skip-bad", action="store_true",
                   help="leave unreadable images out with a warning instead of stopping")


def add_curves(sub: Subparsers) -> None:
    s = sub.add_parser("curves", help="training-curve PNGs (loss, lr, val metrics per epoch) "
                       "of a run folder or of every run of an experiment")
    s.add_argument("dir", help="a pre-training / fine-tuning run folder or an experiment folder")
    s.add_argument("--out", required=True, help="output folder")
