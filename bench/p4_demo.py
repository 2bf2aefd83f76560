"""P4: wall time of ``mpcs demo`` in a fresh output folder, on the machine's CPU cores.

Runs ``python -m mpcs demo --out <new temporary folder> --quiet`` as a child process (a
fresh folder: the synthetic data, the decoded-image cache and the pre-training all start
from nothing) and reports its wall time and the child's peak RSS (``ru_maxrss`` of the
children: data generation, cache build, pre-training and the linear probes all run in that
one process). The ratio printed last is target / measured (>= 1 means within the target).

Run it alone (it measures the whole machine):
``.venv/bin/python bench/p4_demo.py`` (full demo, about 5 minutes on 2 cores), or
``.venv/bin/python bench/p4_demo.py --set folds=2 --set "pretrain_overrides=[train.epochs=1]"``
to check the script quickly
(the ratio is then meaningless).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import header, verdict

TARGET_S = 300.0


def child_peak_rss_mb() -> float:
    """Peak RSS of the largest finished child process, in MiB."""
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed to `mpcs demo --set` (for a quick check of this script)")
    ap.add_argument("--keep", type=Path, default=None,
                    help="write the demo into this (new) folder and keep it")
    args = ap.parse_args()
    header("P4 mpcs demo wall time")
    print(f"cpus available to this process: {len(os.sched_getaffinity(0))}"
          if hasattr(os, "sched_getaffinity") else "")
    with tempfile.TemporaryDirectory(prefix="mpcs-bench-p4-") as tmp:
        out = args.keep or Path(tmp) / "demo"
        if out.exists():
            raise SystemExit(f"{out} exists; P4 needs a fresh output folder")
        env = {**os.environ, "MPCS_CACHE": str(Path(tmp) / "cache")}
        cmd = [sys.executable, "-m", "mpcs", "demo", "--out", str(out), "--quiet",
               *[x for s in args.set for x in ("--set", s)]]
        print("running:", " ".join(cmd), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        tail = [line for line in proc.stdout.splitlines() if line.startswith("[demo]")]
        print("\n".join(tail))
        if proc.returncode:
            print(proc.stderr[-3000:])
            raise SystemExit(f"mpcs demo failed with exit code {proc.returncode}")
    print(f"mpcs demo: wall time {wall:.1f} s; peak RSS of the demo process "
          f"{child_peak_rss_mb():.0f} MiB" + (f"  (overrides: {args.set}: not the real P4)"
                                              if args.set else ""))
    print(verdict("P4 ratio (target 300 s / measured wall time)", TARGET_S / wall, 1.0, True))


if __name__ == "__main__":
    main()
