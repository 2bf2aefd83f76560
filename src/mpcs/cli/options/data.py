"""The arguments of ``mpcs inspect``, ``synth``, ``download``, ``splits``."""

from __future__ import annotations

import argparse

Subparsers = argparse._SubParsersAction


def add_inspect(sub: Subparsers) -> None:
    s = sub.add_parser("inspect", help="summarise a BreakHis-layout data set")
    s.add_argument("--data", required=True, help="BreaKHis_v1 folder or any folder inside it "
                   "down to 'breast'")
    s.add_argument("--on-bad-image", choices=("error", "skip"), default="error",
                   help="an unreadable image (header check; pixels are not decoded): stop "
                   "with an error naming it (default), or skip it and list it")


def add_synth(sub: Subparsers) -> None:
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


def add_download(sub: Subparsers) -> None:
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


def add_splits(sub: Subparsers) -> None:
    s = sub.add_parser("splits", help="patient-level stratified cross-validation splits")
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True, help="splits JSON file to write")
    s.add_argument("--folds", type=int, default=5)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label-fractions", default="0.2,0.4,0.6,0.8,1.0",
                   help="comma-separated fractions of each fold's training images")
