"""The ``mpcs`` command line (also ``python -m mpcs``)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mpcs import __version__
from mpcs.errors import ConfigError, MpcsError

log = logging.getLogger("mpcs")


def _patients_arg(text: str | None) -> list[str] | None:
    """``a,b,c`` or ``@file`` (one id per line) -> list of patient ids."""
    if text is None:
        return None
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise ConfigError(f"--patients: file not found: {path}")
        ids = [line.strip() for line in path.read_text().splitlines()]
    else:
        ids = [p.strip() for p in text.split(",")]
    ids = [i for i in ids if i and not i.startswith("#")]
    if not ids:
        raise ConfigError(f"--patients {text!r} names no patient")
    return ids


def cmd_inspect(args: argparse.Namespace) -> int:
    from mpcs.data.breakhis import format_summary, scan_breakhis, summarize

    print(format_summary(summarize(scan_breakhis(args.data))))
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from mpcs.data.synth import SynthConfig, parse_image_size, write_breakhis

    cfg = SynthConfig(patients=args.patients, samples_per_patient=args.samples_per_patient,
                      image_size=parse_image_size(args.image_size), seed=args.seed)
    root = write_breakhis(args.out, cfg, progress=not args.quiet)
    n = cfg.patients * cfg.samples_per_patient * 4
    print(f"wrote {n} images of {cfg.patients} patients to {root}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from mpcs.config import resolve
    from mpcs.engine.pretrain import pretrain

    overrides = list(args.set or [])
    patients = _patients_arg(args.patients)
    if patients is not None:
        overrides.append(f"data.patients={patients}")
    preset = args.preset if (args.preset or args.config) else "cpu-small"
    cfg = resolve(preset=preset if not args.config else None, config_file=args.config,
                  overrides=overrides)
    summary = pretrain(cfg, args.data, args.out, resume=args.resume, progress=not args.quiet)
    print(f"pre-training finished: {summary['epochs']} epochs, {summary['global_step']} steps, "
          f"final loss {summary['final_loss']:.4f}; checkpoint {summary['checkpoint']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from mpcs.demo import run_demo

    run_demo(args.out, overrides=args.set or [], progress=not args.quiet)
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from mpcs.config import load_preset, preset_names

    for name in preset_names():
        print(f"{name:22s} {load_preset(name).get('description', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpcs", description="Magnification Prior Contrastive Similarity (WACV 2023): "
        "self-supervised pre-training for histopathology.")
    p.add_argument("--version", action="version", version=f"mpcs {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="synthetic data -> MPCS-OP pre-training -> linear "
                       "evaluation against random init (CPU, a few minutes)")
    s.add_argument("--out", default="mpcs-demo", help="output folder (default: mpcs-demo)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a cpu-small preset value, e.g. train.epochs=5")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("inspect", help="summarise a BreakHis-layout data set")
    s.add_argument("--data", required=True, help="BreaKHis_v1 folder or any folder inside it "
                   "down to 'breast'")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("synth", help="write a synthetic data set in the official BreakHis layout")
    s.add_argument("--out", required=True)
    s.add_argument("--patients", type=int, default=40)
    s.add_argument("--samples-per-patient", type=int, default=8)
    s.add_argument("--image-size", default="175x115", help="WIDTHxHEIGHT (default 175x115)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("pretrain", help="MPCS self-supervised pre-training")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, help="run folder")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--preset", help="a shipped preset (see `mpcs presets`); default cpu-small")
    g.add_argument("--config", help="a YAML file of settings")
    s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a setting")
    s.add_argument("--patients", help="restrict to these patients: id,id,... or @file")
    s.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.pt")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("presets", help="list the shipped presets")
    s.set_defaults(func=cmd_presets)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except MpcsError as e:
        print(f"mpcs {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"mpcs {args.command}: interrupted", file=sys.stderr)
        return 130
