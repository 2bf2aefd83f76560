"""``mpcs demo``, ``compare-methods``, ``experiment``, ``reproduce``, ``real-probe``,
``report``: the commands that run or report whole protocols."""

from __future__ import annotations

import argparse
from pathlib import Path

from mpcs.cli.common import fetch_settings
from mpcs.config import resolve
from mpcs.evaluation.demo import run_demo
from mpcs.evaluation.experiment import run_experiment
from mpcs.evaluation.methods_compare import compare_methods, wsi_pretrain_demo
from mpcs.evaluation.real_probe import (
    ProbeSettings,
    default_variants,
    parse_variant,
    run_real_probe,
)
from mpcs.evaluation.report import write_report
from mpcs.evaluation.reproduce import (
    estimate_gpu_hours,
    format_estimate,
    parse_tables,
    plan_stages,
    run_reproduce,
)


def cmd_demo(args: argparse.Namespace) -> int:
    run_demo(args.out, overrides=args.set or [], resume=args.resume,
             figures=not args.no_figures, progress=not args.quiet)
    return 0


def cmd_compare_methods(args: argparse.Namespace) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    compare_methods(args.out, methods, epochs=args.epochs, overrides=args.set or [],
                    progress=not args.quiet, resume=args.resume)
    if args.wsi_epochs:
        wsi_pretrain_demo(Path(args.out) / "wsi", epochs=args.wsi_epochs,
                          overrides=args.set or [], progress=not args.quiet,
                          resume=args.resume)
    return 0


def cmd_experiment(args: argparse.Namespace) -> int:
    preset = args.preset if (args.preset or args.config) else "experiment-cpu-small"
    cfg = resolve(preset=preset if not args.config else None, config_file=args.config,
                  overrides=args.set or [], kind="experiment")
    table = run_experiment(cfg, args.data, args.out, resume=args.resume,
                           progress=not args.quiet)
    failed = table[table["status"].str.startswith("failed")]
    csv_path, md_path = write_report(args.out)
    print(f"experiment: {len(table) - len(failed)} of {len(table)} cells finished; "
          f"report in {md_path}")
    return 1 if len(failed) else 0


def cmd_report(args: argparse.Namespace) -> int:
    csv_path, md_path = write_report(args.dir, figures=not args.no_figures)
    print(f"wrote {csv_path}, {md_path} and {md_path.with_suffix('.html')}")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    tables = parse_tables(args.tables)
    if args.dry_run:
        for stage in plan_stages(tables, args.scale, args.out):
            print(f"stage {stage.key}: Tables {', '.join(map(str, stage.tables))}, "
                  f"{stage.kind} {stage.preset} {' '.join(stage.overrides)}".rstrip())
        print(format_estimate(estimate_gpu_hours(plan_stages(tables, "paper", args.out)),
                              args.scale))
        return 0
    settings = fetch_settings(args)
    report, failed = run_reproduce(
        args.out, tables, data_root=args.data_root, scale=args.scale, source=args.source,
        allow_differences=args.allow_differences, figures=not args.no_figures,
        settings=settings, progress=not args.quiet)
    print(f"reproduction report: {report}"
          + (f" ({failed} failed cell(s): see the stages' failures.jsonl)" if failed else ""))
    return 1 if failed else 0


def cmd_real_probe(args: argparse.Namespace) -> int:
    settings = ProbeSettings(magnification=args.magnification, folds=args.folds,
                             repeats=args.repeats, encoder=args.encoder,
                             input_size=args.input_size, seed=args.seed)
    variants = [parse_variant(v) for v in args.variant] if args.variant else default_variants()
    run_real_probe(args.data, args.out, settings, variants,
                   keep_checkpoints=args.keep_checkpoints, progress=not args.quiet)
    print((Path(args.out) / "summary.md").read_text(), end="")
    return 0
