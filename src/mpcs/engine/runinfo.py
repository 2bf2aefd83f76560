"""What every run writes beside its results: resolved config, seed, versions, git commit."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import yaml

from mpcs.config import resume_conflicts, yaml_load
from mpcs.errors import ConfigError

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


def write_run_info(run_dir: str | Path, cfg: Mapping[str, Any], extra: Mapping[str, Any] = (),
                   resume: bool = False) -> None:
    """``config.yaml`` (resolved) and ``run.json`` (seed, versions, commit, command, host).

    With ``resume`` an existing ``run.json`` keeps its first start and gains an entry in its
    ``resumed`` list (time, commit, versions, command, host and ``extra`` of this start).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(dict(cfg), sort_keys=False))
    start = {
        "versions": package_versions(),
        "git_commit": git_commit(),
        "command": sys.argv,
        "host": platform.node(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **dict(extra),
    }
    info = {"seed": cfg.get("seed"), **start}
    previous = _read_run_json(run_dir / "run.json") if resume else None
    if previous is not None:
        info = {**previous, "resumed": [*previous.get("resumed", []), start]}
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2, default=str))


def _read_run_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # none yet, or cut short: this start's record replaces it
    return data if isinstance(data, dict) else None


def check_resumable(saved_config: str | Path, cfg: Mapping[str, Any],
                    defaults: Mapping[str, Any], may_differ: Iterable[str]) -> None:
    """Refuse to continue a run with settings other than those it saved in ``saved_config``
    (a run folder's ``config.yaml``).

    Finished parts of a run would otherwise be mixed with parts made under other settings.
    Keys in ``may_differ`` (see :func:`mpcs.config.resume_conflicts`) may change. A missing
    file (a run that wrote nothing yet) has nothing to compare and passes.
    """
    path = Path(saved_config)
    try:
        saved = yaml_load(path.read_text())
    except FileNotFoundError:
        return
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the saved configuration of the run to resume "
                          f"({exc}); resume needs it to check the settings") from None
    if not isinstance(saved, Mapping):
        raise ConfigError(f"{path}: the saved configuration of the run to resume is not a "
                          f"mapping of settings (it holds {type(saved).__name__}); resume "
                          f"needs it to check the settings. Start a new run in another folder.")
    conflicts = resume_conflicts(saved, cfg, defaults, may_differ)
    if conflicts:
        raise ConfigError(
            f"{path}: the run was started with other settings; refusing to resume, since its "
            f"finished parts would be mixed with parts made under the new ones. Differing "
            f"keys (saved != now):\n  " + "\n  ".join(conflicts)
            + "\nResume with the saved settings, or start a new run in another folder.")
