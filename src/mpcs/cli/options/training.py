"""The arguments of ``mpcs pretrain``, ``finetune``, ``linear-eval``, ``presets``."""

from __future__ import annotations

import argparse

Subparsers = argparse._SubParsersAction


def add_pretrain(sub: Subparsers) -> None:
    s = sub.add_parser("pretrain", help="MPCS self-supervised pre-training")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, help="run folder")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--preset", help="a shipped preset (see `mpcs presets`); default cpu-small")
    g.add_argument("--config", help="a YAML file of settings")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    s.add_argument("--patients", help="restrict to these patients: id,id,... or @file")
    s.add_argument("--splits", help="a file from `mpcs splits`: pre-train on the training "
                   "patients of --fold only")
    s.add_argument("--fold", type=int, help="fold index for --splits")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    g.add_argument("--overwrite", action="store_true", help="start over in a RUN that holds "
                   "a run (refused otherwise): the old run is moved to RUN.replaced-<time> "
                   "and deleted once the new run has written its first checkpoint")
    s.add_argument("--on-bad-image", choices=("error", "skip"), default=None,
                   help="an unreadable or undecodable image: stop with an error naming it "
                   "(default: error, or data.on_bad_image of the config), or skip it, drop "
                   "its sample from the pairs and list it in RUN/skipped_images.csv")
    s.add_argument("--quiet", action="store_true")


def add_presets(sub: Subparsers) -> None:
    sub.add_parser("presets", help="list the shipped presets")


def add_downstream(sub: Subparsers) -> None:
    """``finetune`` and ``linear-eval``: the same arguments."""
    for name, what in (("finetune", "fine-tune encoder and classifier"),
                       ("linear-eval", "linear evaluation on a frozen encoder (eval mode)")):
        s = sub.add_parser(name, help=f"{what}; selects on the fold's validation part, tests "
                           "once on its test part")
        s.add_argument("--data", required=True)
        s.add_argument("--splits", required=True, help="file written by `mpcs splits`")
        s.add_argument("--fold", type=int, required=True)
        s.add_argument("--magnification", default="all",
                       choices=["40X", "100X", "200X", "400X", "all"])
        s.add_argument("--init", required=True,
                       help="pre-training checkpoint, imagenet, or none")
        s.add_argument("--label-fraction", type=float, default=1.0,
                       help="fraction of the fold's training images with labels (0, 1]")
        s.add_argument("--out", required=True, help="run folder")
        s.add_argument("--overwrite", action="store_true", help="start over in an --out "
                       "that holds a run (refused otherwise): the old run is moved to "
                       "OUT.replaced-<time> and deleted once the new run has finished")
        g = s.add_mutually_exclusive_group()
        g.add_argument("--preset", default="finetune-paper",
                       help="finetune-paper (default) or finetune-cpu-small")
        g.add_argument("--config", help="a YAML file of fine-tuning settings")
        s.add_argument("--set", action="append", metavar="KEY=VALUE")
        s.add_argument("--quiet", action="store_true")
