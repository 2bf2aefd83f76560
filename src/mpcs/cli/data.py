"""``mpcs inspect``, ``synth``, ``splits``, ``download``: the data commands."""

from __future__ import annotations

import argparse

import mpcs.data.synth.breakhis as synth_breakhis
import mpcs.data.synth.transfer as synth_transfer
from mpcs.cli.common import fetch_settings
from mpcs.core.errors import DataError
from mpcs.data.cache import quiet_pil_warnings, with_skip_hint
from mpcs.data.datasets import DOWNLOADS
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.datasets.breakhis_summary import format_summary, summarize
from mpcs.data.download.install import install_dataset
from mpcs.data.splits import make_splits
from mpcs.data.synth.breakhis import SynthConfig, parse_image_size, patient_specs, sample_count


def cmd_inspect(args: argparse.Namespace) -> int:
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
    if args.dataset != "breakhis":

        write = (synth_transfer.write_bach if args.dataset == "bach"
                 else synth_transfer.write_bcc)
        kw = {"image_size": parse_image_size(args.image_size)} if args.image_size else {}
        per_class = args.images_per_class or (4 if args.dataset == "bach" else 6)
        root = write(args.out, images_per_class=per_class, seed=args.seed,
                     progress=not args.quiet, **kw)
        print(f"wrote a synthetic {args.dataset} set ({per_class} images per class) to {root}")
        return 0
    cfg = SynthConfig(patients=args.patients, samples_per_patient=args.samples_per_patient,
                      sample_spread=args.sample_spread,
                      image_size=parse_image_size(args.image_size or "175x115"), seed=args.seed)
    root = synth_breakhis.write_breakhis(args.out, cfg, progress=not args.quiet)
    n = 4 * sum(sample_count(cfg, p) for p in patient_specs(cfg))
    print(f"wrote {n} images of {cfg.patients} patients to {root}")
    return 0


def cmd_splits(args: argparse.Namespace) -> int:
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


def cmd_download(args: argparse.Namespace) -> int:
    settings = fetch_settings(args)
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
