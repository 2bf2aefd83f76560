"""What every run writes beside its results: resolved config, seed, versions, git commit."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import yaml

PACKAGES = ("mpcs", "torch", "torchvision", "timm", "numpy", "scikit-learn", "pandas", "pillow")


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the mpcs source tree (or of the working directory), with '+dirty'."""
    for where in (Path(__file__).resolve().parent, Path.cwd()):
        try:
            sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                                 text=True, timeout=5, check=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=where, capture_output=True, text=True,
                                   timeout=5).stdout.strip()
            return sha + ("+dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            continue
    return None


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success flush, fsync and rename it over
    ``path``, so a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "w") as f:
        f.write(text)


def write_run_info(run_dir: str | Path, cfg: Mapping[str, Any], extra: Mapping[str, Any] = ()
                   ) -> None:
    """``config.yaml`` (resolved) and ``run.json`` (seed, versions, commit, command, host)."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(dict(cfg), sort_keys=False))
    info = {
        "seed": cfg.get("seed"),
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **dict(extra),
    }
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2, default=str))
