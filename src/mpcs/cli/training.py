"""``mpcs pretrain``, ``finetune``, ``linear-eval``, ``presets``: the training commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from mpcs.config import load_preset, preset_names, resolve
from mpcs.core.errors import ConfigError
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.splits import Splits
from mpcs.engine.finetune import finetune, linear_eval
from mpcs.engine.pretrain import pretrain


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


def _fold_training_patients(data: str, splits_file: str, fold: int | None) -> list[str]:
    """The training patients of one fold of a splits file (checked against the data)."""
    if fold is None:
        raise ConfigError("--splits needs --fold K (the fold whose training patients to use)")
    splits = Splits.load(splits_file, scan_breakhis(data))
    if not 0 <= fold < splits.folds:
        raise ConfigError(f"--fold must be in 0..{splits.folds - 1}, got {fold}")
    return sorted(splits.fold(fold).train)


def _fold_part(data: str, splits_file: str, fold: int | None, part: str) -> list[str]:
    """The patients of one part (train/val/test) of a fold of a splits file."""
    splits = Splits.load(splits_file, scan_breakhis(data))
    return sorted(splits.fold(int(fold or 0)).part(part))


def cmd_pretrain(args: argparse.Namespace) -> int:
    overrides = list(args.set or [])
    patients = _patients_arg(args.patients)
    if args.splits is not None:
        if patients is not None:
            raise ConfigError("give either --patients or --splits/--fold, not both")
        patients = _fold_training_patients(args.data, args.splits, args.fold)
        if not any(o.startswith("monitor.val_patients=") for o in overrides):
            # the kNN monitor (monitor.knn_every > 0) scores the fold's validation patients
            overrides.append(f"monitor.val_patients="
                             f"{_fold_part(args.data, args.splits, args.fold, 'val')}")
    if patients is not None:
        overrides.append(f"data.patients={patients}")
    if args.on_bad_image is not None:
        overrides.append(f"data.on_bad_image={args.on_bad_image}")
    preset = args.preset if (args.preset or args.config) else "cpu-small"
    cfg = resolve(preset=preset if not args.config else None, config_file=args.config,
                  overrides=overrides, kind="pretrain")
    summary = pretrain(cfg, args.data, args.out, resume=args.resume, progress=not args.quiet,
                       overwrite=args.overwrite)
    if summary.get("rank", 0) != 0:  # torchrun: rank 0 speaks for the run
        return 0
    print(f"pre-training finished: {summary['epochs']} epochs, {summary['global_step']} steps, "
          f"final loss {summary['final_loss']:.4f}; checkpoint {summary['checkpoint']}")
    return 0


def _downstream(args: argparse.Namespace, mode: str) -> int:
    cfg = resolve(preset=args.preset if not args.config else None, config_file=args.config,
                  overrides=args.set or [], kind="finetune")
    manifest = scan_breakhis(args.data)
    splits = Splits.load(args.splits, manifest)
    if not 0 <= args.fold < splits.folds:
        raise ConfigError(f"--fold must be in 0..{splits.folds - 1}, got {args.fold}")

    def part(name: str, fraction: float | None = None):
        rows = splits.frame(manifest, args.fold, name, fraction=fraction)
        if args.magnification != "all":
            rows = rows[rows["magnification"] == args.magnification]
        return rows

    run = linear_eval if mode == "linear" else finetune
    summary = run(cfg, part("train", args.label_fraction), part("val"), part("test"),
                  args.out, init=args.init, progress=not args.quiet, overwrite=args.overwrite)
    print(f"{mode}: selected epoch {summary['selected_epoch']} on validation "
          f"(ILA {100 * summary['val_ila']:.2f}%); test ILA {100 * summary['test_ila']:.2f}%, "
          f"PLA {100 * summary['test_pla']:.2f}% on {summary['n_test_images']} images of "
          f"{summary['n_test_patients']} patients; predictions in {summary['predictions']}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    return _downstream(args, "finetune")


def cmd_linear_eval(args: argparse.Namespace) -> int:
    return _downstream(args, "linear")


def cmd_presets(args: argparse.Namespace) -> int:
    for name in preset_names():
        print(f"{name:22s} {load_preset(name).get('description', '')}")
    return 0
