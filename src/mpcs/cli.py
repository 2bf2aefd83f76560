"""The ``mpcs`` command line (also ``python -m mpcs``)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mpcs import __version__
from mpcs.core.errors import ConfigError, DataError, MpcsError

if TYPE_CHECKING:
    from mpcs.data.download.fetch import FetchSettings

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


def _fold_training_patients(data: str, splits_file: str, fold: int | None) -> list[str]:
    """The training patients of one fold of a splits file (checked against the data)."""
    from mpcs.data.datasets.breakhis import scan_breakhis
    from mpcs.data.splits import Splits

    if fold is None:
        raise ConfigError("--splits needs --fold K (the fold whose training patients to use)")
    splits = Splits.load(splits_file, scan_breakhis(data))
    if not 0 <= fold < splits.folds:
        raise ConfigError(f"--fold must be in 0..{splits.folds - 1}, got {fold}")
    return sorted(splits.fold(fold).train)


def _fold_part(data: str, splits_file: str, fold: int | None, part: str) -> list[str]:
    """The patients of one part (train/val/test) of a fold of a splits file."""
    from mpcs.data.datasets.breakhis import scan_breakhis
    from mpcs.data.splits import Splits

    splits = Splits.load(splits_file, scan_breakhis(data))
    return sorted(splits.fold(int(fold or 0)).part(part))


def cmd_inspect(args: argparse.Namespace) -> int:
    from mpcs.data.cache import quiet_pil_warnings, with_skip_hint
    from mpcs.data.datasets.breakhis import scan_breakhis
    from mpcs.data.datasets.breakhis_summary import format_summary, summarize

    try:
        with quiet_pil_warnings():
            manifest = scan_breakhis(args.data, on_bad_image=args.on_bad_image)
    except DataError as err:
        raise with_skip_hint(err) from None
    print(format_summary(summarize(manifest)))
    skipped = manifest.attrs.get("skipped", [])
    if skipped:
        print("")
        print(f"Skipped files ({len(skipped)}):")
        for path, reason in skipped:
            print(f"  {path}: {reason}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from mpcs.data.synth.breakhis import (
        SynthConfig,
        parse_image_size,
        patient_specs,
        sample_count,
        write_breakhis,
    )

    if args.dataset != "breakhis":
        from mpcs.data.synth.transfer import write_bach, write_bcc

        write = write_bach if args.dataset == "bach" else write_bcc
        kw = {"image_size": parse_image_size(args.image_size)} if args.image_size else {}
        per_class = args.images_per_class or (4 if args.dataset == "bach" else 6)
        root = write(args.out, images_per_class=per_class, seed=args.seed,
                     progress=not args.quiet, **kw)
        print(f"wrote a synthetic {args.dataset} set ({per_class} images per class) to {root}")
        return 0
    cfg = SynthConfig(patients=args.patients, samples_per_patient=args.samples_per_patient,
                      sample_spread=args.sample_spread,
                      image_size=parse_image_size(args.image_size or "175x115"), seed=args.seed)
    root = write_breakhis(args.out, cfg, progress=not args.quiet)
    n = 4 * sum(sample_count(cfg, p) for p in patient_specs(cfg))
    print(f"wrote {n} images of {cfg.patients} patients to {root}")
    return 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    from mpcs.config import resolve
    from mpcs.engine.pretrain import pretrain

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


def cmd_demo(args: argparse.Namespace) -> int:
    from mpcs.demo import run_demo

    run_demo(args.out, overrides=args.set or [], resume=args.resume,
             figures=not args.no_figures, progress=not args.quiet)
    return 0


def cmd_compare_methods(args: argparse.Namespace) -> int:
    from mpcs.evaluation.methods_compare import compare_methods, wsi_pretrain_demo

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    compare_methods(args.out, methods, epochs=args.epochs, overrides=args.set or [],
                    progress=not args.quiet)
    if args.wsi_epochs:
        wsi_pretrain_demo(Path(args.out) / "wsi", epochs=args.wsi_epochs,
                          overrides=args.set or [], progress=not args.quiet)
    return 0


def cmd_plot_metrics(args: argparse.Namespace) -> int:
    from mpcs.engine.knn_monitor import plot_metrics

    run = Path(args.run)
    metrics = run / "metrics.jsonl" if run.is_dir() else run
    out = plot_metrics(metrics, args.out or metrics.with_name("metrics.png"))
    print(f"wrote {out}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from mpcs.config import load_preset, preset_names

    for name in preset_names():
        print(f"{name:22s} {load_preset(name).get('description', '')}")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
    from mpcs.data.datasets.breakhis import scan_breakhis
    from mpcs.data.splits import make_splits

    fractions = [float(f) for f in args.label_fractions.split(",")]
    splits = make_splits(scan_breakhis(args.data), folds=args.folds, seed=args.seed,
                         label_fractions=fractions)
    path = splits.save(args.out)
    print(f"wrote {path}: {splits.folds} patient-level folds, stratified by "
          f"{splits.stratify_by}, seed {splits.seed}")
    for note in splits.notes:
        print(f"note: {note}")
    for k in range(splits.folds):
        fold = splits.fold(k)
        print(f"  fold {k}: train {len(fold.train)}, val {len(fold.val)}, "
              f"test {len(fold.test)} patients")
    return 0


def _downstream(args: argparse.Namespace, mode: str) -> int:
    from mpcs.config import resolve
    from mpcs.data.datasets.breakhis import scan_breakhis
    from mpcs.data.splits import Splits
    from mpcs.engine.finetune import finetune, linear_eval

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


def cmd_experiment(args: argparse.Namespace) -> int:
    from mpcs.config import resolve
    from mpcs.evaluation.experiment import run_experiment
    from mpcs.evaluation.report import write_report

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
    from mpcs.evaluation.report import write_report

    csv_path, md_path = write_report(args.dir, figures=not args.no_figures)
    print(f"wrote {csv_path}, {md_path} and {md_path.with_suffix('.html')}")
    return 0


def cmd_gradcam(args: argparse.Namespace) -> int:
    from mpcs.viz.gradcam import gradcam_images

    paths = gradcam_images(args.checkpoint, args.images, args.out, class_mode=args.class_,
                           labels=args.label, max_images=args.max_images,
                           grid_images=args.grid_images, skip_bad=args.skip_bad,
                           layer=args.layer)
    grid = [p for p in paths if p.name == "gradcam_grid.png"]
    print(f"wrote {len(paths) - len(grid)} Grad-CAM picture(s) to {args.out}"
          + (f" and the comparison grid {grid[0]}" if grid else ""))
    return 0


def cmd_curves(args: argparse.Namespace) -> int:
    from mpcs.viz.curves import plot_curves

    paths = plot_curves(args.dir, args.out)
    print(f"wrote {len(paths)} curve picture(s) to {args.out}")
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    from mpcs.inference import embed

    df = embed(args.checkpoint, args.images, args.out, batch_size=args.batch_size,
               skip_bad=args.skip_bad, progress=not args.quiet)
    skipped = df.attrs.get("skipped", [])
    print(f"wrote {len(df)} feature rows to {args.out}"
          + (f"; skipped {len(skipped)} unreadable image(s)" if skipped else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from mpcs.inference import predict

    df = predict(args.checkpoint, args.images, args.out, batch_size=args.batch_size,
                 skip_bad=args.skip_bad, progress=not args.quiet)
    patients = df.attrs.get("patients")
    print(f"wrote {len(df)} predictions to {args.out}"
          + (f" and {len(patients)} patient-level rows beside it"
             if patients is not None and len(patients) else ""))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mpcs.inference import export_encoder

    path = export_encoder(args.checkpoint, args.out, report=args.report)
    print(f"wrote {path}: model.safetensors, config.json (timm's save_for_hf layout) and "
          f"README.md (model card); load it with timm.create_model(\"local-dir:{path}\", "
          "pretrained=True, num_classes=0)")
    return 0


def _fetch_settings(args: argparse.Namespace) -> FetchSettings:
    """``--retries`` and ``--timeout`` as :class:`mpcs.data.download.FetchSettings`."""
    from mpcs.data.download.fetch import FetchSettings

    if args.retries < 0 or not 0 < args.timeout < float("inf"):
        raise ConfigError(f"--retries must be >= 0 and --timeout a number of seconds > 0, got "
                          f"{args.retries} and {args.timeout}")
    return FetchSettings(retries=args.retries, timeout=args.timeout)


def cmd_download(args: argparse.Namespace) -> int:
    from mpcs.data.datasets import DOWNLOADS
    from mpcs.data.download.install import install_dataset

    settings = _fetch_settings(args)
    source = DOWNLOADS[args.dataset]
    result = install_dataset(source, args.to, archive=args.from_, url=args.url,
                             settings=settings,
                             allow_differences=args.allow_differences,
                             remove_archive=args.remove_archive, progress=not args.quiet)
    print(result.report())
    if not result.usable:
        raise DataError(f"{args.dataset}: the data in {result.root} differ from the published "
                        f"numbers ({len(result.differences)} count(s), {len(result.unreadable)} "
                        "unreadable file(s); listed above). They are kept: check the archive, "
                        "or add --allow-differences to use them as they are")
    if not result.ok:
        print(f"warning: {args.dataset}: differences accepted (--allow-differences)")
    print(f"{args.dataset} ready: {result.root} (give this folder to --data)")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from mpcs.evaluation.reproduce import (
        estimate_gpu_hours,
        format_estimate,
        parse_tables,
        plan_stages,
        run_reproduce,
    )

    tables = parse_tables(args.tables)
    if args.dry_run:
        for stage in plan_stages(tables, args.scale, args.out):
            print(f"stage {stage.key}: Tables {', '.join(map(str, stage.tables))}, "
                  f"{stage.kind} {stage.preset} {' '.join(stage.overrides)}".rstrip())
        print(format_estimate(estimate_gpu_hours(plan_stages(tables, "paper", args.out)),
                              args.scale))
        return 0
    settings = _fetch_settings(args)
    report, failed = run_reproduce(
        args.out, tables, data_root=args.data_root, scale=args.scale, source=args.source,
        allow_differences=args.allow_differences, figures=not args.no_figures,
        settings=settings, progress=not args.quiet)
    print(f"reproduction report: {report}"
          + (f" ({failed} failed cell(s): see the stages' failures.jsonl)" if failed else ""))
    return 1 if failed else 0


def cmd_tsne(args: argparse.Namespace) -> int:
    from mpcs.viz.tsne import tsne_plot

    paths = tsne_plot(args.checkpoint, args.data, args.out, features=args.features,
                      perplexity=args.perplexity, seed=args.seed, skip_bad=args.skip_bad,
                      progress=not args.quiet)
    print(f"wrote {len(paths)} picture(s) to {args.out}")
    return 0


def cmd_real_probe(args: argparse.Namespace) -> int:
    from mpcs.evaluation.real_probe import (
        ProbeSettings,
        default_variants,
        parse_variant,
        run_real_probe,
    )

    settings = ProbeSettings(magnification=args.magnification, folds=args.folds,
                             repeats=args.repeats, encoder=args.encoder,
                             input_size=args.input_size, seed=args.seed)
    variants = [parse_variant(v) for v in args.variant] if args.variant else default_variants()
    run_real_probe(args.data, args.out, settings, variants,
                   keep_checkpoints=args.keep_checkpoints, progress=not args.quiet)
    print((Path(args.out) / "summary.md").read_text(), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mpcs", description="Magnification Prior Contrastive Similarity (WACV 2023): "
        "self-supervised pre-training for histopathology.")
    p.add_argument("--version", action="version", version=f"mpcs {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

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
    s.set_defaults(func=cmd_demo)

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
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_compare_methods)

    s = sub.add_parser("plot-metrics", help="plot a pre-training run's loss and kNN accuracy")
    s.add_argument("run", help="run folder or its metrics.jsonl")
    s.add_argument("--out", help="PNG to write (default: RUN/metrics.png)")
    s.set_defaults(func=cmd_plot_metrics)

    s = sub.add_parser("inspect", help="summarise a BreakHis-layout data set")
    s.add_argument("--data", required=True, help="BreaKHis_v1 folder or any folder inside it "
                   "down to 'breast'")
    s.add_argument("--on-bad-image", choices=("error", "skip"), default="error",
                   help="an unreadable image (header check; pixels are not decoded): stop "
                   "with an error naming it (default), or skip it and list it")
    s.set_defaults(func=cmd_inspect)

    s = sub.add_parser("synth", help="write a synthetic data set in the official layout of "
                       "BreakHis, BACH or UCSB BCC")
    s.add_argument("--out", required=True)
    s.add_argument("--dataset", choices=("breakhis", "bach", "bcc"), default="breakhis")
    s.add_argument("--images-per-class", type=int, default=None,
                   help="bach / bcc: images per class (default 4 / 6)")
    s.add_argument("--patients", type=int, default=40)
    s.add_argument("--samples-per-patient", type=int, default=8,
                   help="samples (4 images each) per patient; the mean with --sample-spread")
    s.add_argument("--sample-spread", type=float, default=0.0,
                   help="vary samples per patient by up to this fraction (0 = all equal)")
    s.add_argument("--image-size", default=None, help="WIDTHxHEIGHT (default: breakhis "
                   "175x115, bach 2048x1536, bcc 896x768)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_synth)

    s = sub.add_parser("download", help="download, check and unpack BreakHis, BACH or UCSB "
                       "BCC from the official source, verified against the published counts")
    s.add_argument("dataset", choices=("breakhis", "bach", "bcc"))
    s.add_argument("--to", required=True, help="folder for the archive and the unpacked data")
    s.add_argument("--from", dest="from_", metavar="ARCHIVE", help="an archive copied by hand "
                   "(no network): checked, unpacked and verified like a download")
    s.add_argument("--url", help="download from this URL (a mirror) instead of the official one")
    s.add_argument("--allow-differences", action="store_true", help="accept data whose counts "
                   "differ from the published numbers (listed) instead of stopping")
    s.add_argument("--retries", type=int, default=4, help="retries after a failed try, with "
                   "back-off 2, 4, 8, ... s (default 4)")
    s.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds "
                   "(default 60)")
    s.add_argument("--remove-archive", action="store_true",
                   help="delete the downloaded archive once unpacked and verified")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=cmd_download)

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
    s.set_defaults(func=cmd_pretrain)

    s = sub.add_parser("splits", help="patient-level stratified cross-validation splits")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, help="splits JSON file to write")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label-fractions", default="0.2,0.4,0.6,0.8,1.0",
                   help="comma-separated fractions of each fold's training images")
    s.set_defaults(func=cmd_splits)

    for name, func, what in (("finetune", cmd_finetune, "fine-tune encoder and classifier"),
                             ("linear-eval", cmd_linear_eval,
                              "linear evaluation on a frozen encoder (eval mode)")):
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
        s.set_defaults(func=func)

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
    s.set_defaults(func=cmd_experiment)

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
    s.set_defaults(func=cmd_reproduce)

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
    s.set_defaults(func=cmd_real_probe)

    s = sub.add_parser("report", help="results.csv, report.md and a self-contained "
                       "report.html (tables, curves, t-SNE, Grad-CAM) of an experiment folder")
    s.add_argument("dir")
    s.add_argument("--no-figures", action="store_true",
                   help="tables only: no pictures (curves, t-SNE, Grad-CAM)")
    s.set_defaults(func=cmd_report)

    for name, func, what, default_out in (
            ("embed", cmd_embed, "features of images (one row per image)", "features.csv"),
            ("predict", cmd_predict, "class probabilities from a fine-tuned checkpoint",
             "predictions.csv")):
        s = sub.add_parser(name, help=what)
        s.add_argument("--checkpoint", required=True)
        s.add_argument("--images", required=True, nargs="+", help="image files or folders")
        s.add_argument("--out", default=default_out,
                       help=f"output file (default {default_out}; .parquet needs pyarrow)")
        s.add_argument("--batch-size", type=int, default=64)
        s.add_argument("--skip-bad", action="store_true",
                       help="leave unreadable images out with a warning instead of stopping")
        s.add_argument("--quiet", action="store_true")
        s.set_defaults(func=func)

    s = sub.add_parser("export", help="the encoder in timm's hub layout (model.safetensors, "
                       "config.json, README.md model card): timm.create_model(\"local-dir:OUT\", "
                       "pretrained=True) loads it offline, hf-hub: after an upload")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--report", help="a report.md (or the experiment / reproduction folder "
                   "holding it) whose tables go into the model card")
    s.set_defaults(func=cmd_export)

    s = sub.add_parser("tsne", help="t-SNE pictures of features, per magnification and all")
    s.add_argument("--checkpoint", required=True)
    s.add_argument("--data", required=True, help="a BreakHis-layout folder or image folder")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--features", choices=["backbone", "projection"], default="backbone")
    s.add_argument("--perplexity", type=float, default=30.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--skip-bad", action="store_true")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=cmd_tsne)

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
    s.set_defaults(func=cmd_gradcam)

    s = sub.add_parser("curves", help="training-curve PNGs (loss, lr, val metrics per epoch) "
                       "of a run folder or of every run of an experiment")
    s.add_argument("dir", help="a pre-training / fine-tuning run folder or an experiment folder")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=cmd_curves)

    s = sub.add_parser("presets", help="list the shipped presets")
    s.set_defaults(func=cmd_presets)
    return p


def _stdout_to_devnull() -> None:
    """Point stdout's file descriptor at devnull (Python's recipe for a reader that went
    away), so the flush at interpreter exit raises no second BrokenPipeError."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a file descriptor: nothing is flushed to it at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader gone early (`| head`) shows here, not at interpreter exit
        return code
    except BrokenPipeError as e:
        log.debug("stdout was closed by its reader (%s); the rest of the output is dropped", e)
        _stdout_to_devnull()
        return 1
    except MpcsError as e:
        print(f"mpcs {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:  # a RunInterrupted says where the run stands
        where = f"; {e}" if str(e) else ""
        print(f"mpcs {args.command}: interrupted{where}", file=sys.stderr)
        return 130
