"""The arguments of ``mpcs demo``, ``compare-methods``, ``experiment``, ``reproduce``,
``real-probe``, ``report``."""

from __future__ import annotations

import argparse

Subparsers = argparse._SubParsersAction


def add_demo(sub: Subparsers) -> None:
    s = sub.add_parser("demo", help="the protocol reduced to a few CPU minutes on synthetic "
                       "data: 5 patient-level folds, MPCS-FP/OP/RP vs random init, report")
    s.add_argument("--out", default="mpcs-demo", help="output folder (default: mpcs-demo)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a value of the `demo` experiment preset, e.g. folds=3 or "
                   "'pretrain_overrides=[train.epochs=20]'")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted demo in --out (finished cells are kept)")
    s.add_argument("--no-figures", action="store_true",
                   help="tables only: no curves, t-SNE or Grad-CAM pictures in the report")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def add_compare_methods(sub: Subparsers) -> None:
    s = sub.add_parser("compare-methods", help="pre-train MPCS, SimCLR, BYOL, SimSiam, Barlow "
                       "Twins and VICReg on the synthetic demo data; linear evaluation table")
    s.add_argument("--out", default="mpcs-methods", help="output folder")
    s.add_argument("--methods", default="mpcs,simclr,byol,simsiam,barlow_twins,vicreg",
                   help="comma-separated methods (default: all)")
    s.add_argument("--epochs", type=int, default=None, help="pre-training epochs per method "
                   "(default: the presets' 45)")
    s.add_argument("--wsi-epochs", type=int, default=0, help="also pre-train on a generated "
                   "whole slide for this many epochs (needs the wsi extra)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a value of every method's preset, e.g. train.threads=1")
    s.add_argument("--resume", action="store_true", help="continue a comparison in --out "
                   "(finished methods are kept, the others continue from their checkpoint)")
    s.add_argument("--quiet", action="store_true")


def add_experiment(sub: Subparsers) -> None:
    s = sub.add_parser("experiment", help="the paper's grid: per fold pre-train MPCS-FP/OP/RP, "
                       "fine-tune them and the baseline per magnification and label fraction")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    g = s.add_mutually_exclusive_group()
    g.add_argument("--preset", help="breakhis-{limited,full}-{resnet50,effnetb2}, "
                   "bach-resnet50, bach-imagenet-resnet50, bcc-resnet50, bach-cpu-small, "
                   "bcc-cpu-small or experiment-cpu-small (default)")
    g.add_argument("--config")
    s.add_argument("--set", action="append", metavar="KEY=VALUE")
    s.add_argument("--resume", action="store_true", help="skip finished cells")
    s.add_argument("--quiet", action="store_true")


def add_reproduce(sub: Subparsers) -> None:
    s = sub.add_parser("reproduce", help="the paper's Tables 5-9 from nothing: data download "
                       "and check, every experiment with the paper presets, one report beside "
                       "the paper's numbers (a second call continues)")
    s.add_argument("--out", required=True, help="reproduction folder")
    s.add_argument("--tables", default="5,6,7,8,9", help="comma-separated tables of the paper "
                   "(default 5,6,7,8,9)")
    s.add_argument("--data-root", help="folder of the data sets: downloaded there unless found "
                   "verified there (default OUT/data)")
    s.add_argument("--scale", choices=("paper", "cpu-tiny"), default="paper",
                   help="paper: the paper presets (GPU; prints the estimated GPU time first); "
                   "cpu-tiny: the same chain at tiny settings on the CPU, in minutes")
    s.add_argument("--source", choices=("official", "synthetic"), default=None,
                   help="the data: the official archives (default at paper scale) or synthetic "
                   "stand-ins packed like them (default at cpu-tiny)")
    s.add_argument("--allow-differences", action="store_true", help="use data whose counts "
                   "differ from the published numbers (listed) instead of stopping")
    s.add_argument("--no-figures", action="store_true", help="no pictures in the stages' "
                   "reports (tables only)")
    s.add_argument("--retries", type=int, default=4, help="download retries (default 4)")
    s.add_argument("--timeout", type=float, default=60.0, help="network timeout, s")
    s.add_argument("--dry-run", action="store_true", help="print the stages and the GPU-time "
                   "estimate; run nothing")
    s.add_argument("--quiet", action="store_true", help="no progress bars")


def add_real_probe(sub: Subparsers) -> None:
    s = sub.add_parser("real-probe", help="does pre-training help on your images? Frozen "
                       "linear-probe ILA/PLA of random init, ImageNet and MPCS (pre-trained "
                       "per fold without the fold's test patients) over repeated "
                       "patient-level folds of a BreakHis-layout folder")
    s.add_argument("--data", required=True, help="a BreakHis-layout folder")
    s.add_argument("--out", required=True, help="output folder (a second call continues)")
    s.add_argument("--magnification", default="100X", choices=["40X", "100X", "200X", "400X"],
                   help="the labelled images the probe is trained and tested on")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--repeats", type=int, default=3, help="reshuffled fold sets")
    s.add_argument("--encoder", default="tf_efficientnet_lite0")
    s.add_argument("--input-size", type=int, default=160)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--variant", action="append", metavar="NAME=SPEC",
                   help="NAME=none, NAME=imagenet or NAME=PRESET[,key=value,...] (an MPCS "
                   "pre-training preset and overrides); repeat. Default: random init, "
                   "imagenet, and MPCS with the preset real-zoom-lite0")
    s.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each fold's pre-training checkpoints (default: features only)")
    s.add_argument("--quiet", action="store_true")


def add_report(sub: Subparsers) -> None:
    s = sub.add_parser("report", help="results.csv, report.md and a self-contained "
                       "report.html (tables, curves, t-SNE, Grad-CAM) of an experiment folder")
    s.add_argument("dir")
    s.add_argument("--no-figures", action="store_true",
                   help="tables only: no pictures (curves, t-SNE, Grad-CAM)")
