"""Real-data benchmark: does MPCS continued from ImageNet help on real BreakHis images?

Runs ``mpcs real-probe`` (:mod:`mpcs.evaluation.real_probe`) on the real BreakHis development
set ``../shared/data/breakhis-dev`` at 100X (144 images of 14 patients): 3 repeats x 5
patient-level folds, EfficientNet-Lite0 (offline ImageNet weights) at 160 px; frozen linear
probe of random init, ImageNet, and MPCS pre-trained per fold on every image of the patients
outside the fold's test part. Prints the table; its last line is the PLA difference of the
best MPCS variant and ImageNet with its paired p-value.

Run: ``.venv/bin/python bench/real_probe.py [--out DIR] [mpcs real-probe options]``
(about 25 minutes on 2 CPU cores; a second call continues where the first stopped).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from common import header, peak_rss_mb

from mpcs.cli import main

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "breakhis-dev"
DEFAULT_OUT = ROOT / "bench-out" / "real_probe"


def run(argv: list[str]) -> int:
    header("real_probe: frozen probe on real BreakHis 100X, MPCS vs ImageNet")
    if "--data" not in argv:
        if not DEFAULT_DATA.is_dir():
            print(f"real_probe: the real development set is not at {DEFAULT_DATA}; pass "
                  f"--data with a BreakHis-layout folder", file=sys.stderr)
            return 2
        argv = ["--data", str(DEFAULT_DATA), *argv]
    if "--out" not in argv:
        argv = ["--out", str(DEFAULT_OUT), *argv]
    t0 = time.perf_counter()
    code = main(["real-probe", "--quiet", *argv])
    print(f"wall {time.perf_counter() - t0:.0f} s, peak RSS {peak_rss_mb():.0f} MiB")
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
