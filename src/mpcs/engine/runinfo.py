"""What every run writes beside its results (resolved config, seed, versions, git commit),
how it writes (atomically; a failed write is one :class:`OutputError` line), and the run
folder itself: one lock for every command that writes one (:func:`lock_folder`), and a folder
holding a run refused unless it is resumed or replaced (:func:`open_run_folder`)."""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from mpcs.config import resume_conflicts, yaml_load
from mpcs.core.errors import ConfigError, OutputError, output_error
from mpcs.core.io import atomic_write_text, check_output_folder

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no run-folder lock
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

PACKAGES = ("mpcs", "torch", "torchvision", "timm", "numpy", "scikit-learn", "pandas", "pillow")
#: The lock file of an output folder (held by the process writing it; see :func:`lock_folder`).
LOCK_FILE = ".lock"
#: Records every start writes anew: a folder holding only these holds no run yet.
START_RECORDS = ("config.yaml", "run.json")


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


def write_run_info(run_dir: str | Path, cfg: Mapping[str, Any], extra: Mapping[str, Any] = (),
                   resume: bool = False) -> None:
    """``config.yaml`` (resolved) and ``run.json`` (seed, versions, commit, command, host).

    With ``resume`` an existing ``run.json`` keeps its first start and gains an entry in its
    ``resumed`` list (time, commit, versions, command, host and ``extra`` of this start).
    """
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise output_error(f"cannot write {run_dir}: {reason}", reason) from None
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


def last_recorded(run_json: str | Path, key: str) -> Any:
    """The latest value of ``key`` in a ``run.json``: that of the last start (first start or
    resume) that recorded one; None when none did or the file cannot be read."""
    info = _read_run_json(Path(run_json))
    if info is None:
        return None
    value = info.get(key)
    for start in info.get("resumed", []):
        if isinstance(start, Mapping) and start.get(key) is not None:
            value = start[key]
    return value


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


# --------------------------------------------------------------------------- run folders


@dataclass(frozen=True)
class FolderRules:
    """How a command treats an output folder that already holds files.

    Attributes:
        resumable: the command has ``--resume`` (the refusal names it).
        replaced_until: when the previous run that ``--overwrite`` moved aside is deleted.
        records: files every start writes anew; a folder holding only these (besides the
            lock, temporary files and empty files) holds no run yet.
        caches: glob patterns of top-level files that are no part of a run and stay in
            place on ``--overwrite`` (caches keyed by their inputs, safe to reuse).
        subdirs: folders created inside the run folder.
    """

    resumable: bool
    replaced_until: str
    records: tuple[str, ...] = START_RECORDS
    caches: tuple[str, ...] = ()
    subdirs: tuple[str, ...] = ()


@dataclass
class RunFolder:
    """A run folder locked by this process (see :func:`open_run_folder`); ``replaced`` is
    where ``--overwrite`` moved the previous run, until :meth:`discard_replaced`."""

    path: Path
    lock: IO[str]
    replaced: Path | None = None

    def discard_replaced(self) -> None:
        """Delete the previous run moved aside by ``--overwrite`` (call once the new run
        can stand in for it); a failure to delete is a warning, never an error."""
        if self.replaced is None:
            return
        try:
            shutil.rmtree(self.replaced)
            log.info("deleted the previous run %s, replaced by %s", self.replaced, self.path)
        except OSError as exc:
            log.warning("could not delete the previous run %s (%s); remove it yourself",
                        self.replaced, exc.strerror or exc)
        self.replaced = None

    def close(self) -> None:
        """Release the lock."""
        self.lock.close()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _ignorable(path: Path, rel: str, rules: FolderRules) -> bool:
    """The lock, a temporary file, an empty file, a start record or a cache: no run."""
    if rel == LOCK_FILE or rel in rules.records or fnmatch.fnmatch(path.name, ".*.tmp"):
        return True
    if any(fnmatch.fnmatch(rel, pattern) for pattern in rules.caches):
        return True
    try:
        return path.is_file() and path.stat().st_size == 0
    except OSError:
        return False


def previous_run(run_dir: str | Path, rules: FolderRules) -> list[str]:
    """The files of a previous run in ``run_dir`` (relative, sorted): every file but the
    lock, temporary files, empty files, start records and caches (see :class:`FolderRules`);
    empty when the folder is new, empty, or holds only those."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for path in sorted(run_dir.rglob("*")):
        rel = path.relative_to(run_dir).as_posix()
        if not path.is_dir() and not _ignorable(path, rel, rules):
            found.append(rel)
    return found


def _holds_a_run(run_dir: Path, found: Sequence[str], rules: FolderRules) -> OutputError:
    shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
    how = "Continue it with --resume, replace" if rules.resumable else "Replace"
    return OutputError(
        f"{run_dir} already holds a run ({shown}); refusing to start over in it. {how} it with "
        f"--overwrite (the old run is moved beside it to {run_dir.absolute().name}.replaced-"
        f"<time> and deleted {rules.replaced_until}), or choose another --out")


def _one_of(resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite replaces "
                          "it: give one of them, not both")


def check_run_folder(run_dir: str | Path, rules: FolderRules, resume: bool = False,
                     overwrite: bool = False) -> None:
    """Before any work: ``run_dir`` can become a writable folder, and holds no previous
    run unless ``resume`` (continue it) or ``overwrite`` (replace it) is given."""
    _one_of(resume, overwrite)
    check_output_folder(run_dir)
    found = [] if resume or overwrite else previous_run(run_dir, rules)
    if found:
        raise _holds_a_run(Path(run_dir), found, rules)


def lock_folder(run_dir: str | Path) -> IO[str]:
    """Create ``run_dir`` and lock it for this process (``run_dir/.lock``; released when the
    returned file is closed or the process ends). :class:`OutputError` when the folder cannot
    be created or another process holds the lock."""
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = open(run_dir / LOCK_FILE, "a")  # noqa: SIM115 - held for the whole run
    except OSError as exc:
        raise output_error(f"cannot create the run folder {run_dir}: {exc.strerror or exc}; "
                           f"choose another --out", exc.strerror) from None
    if fcntl is not None:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise OutputError(f"{run_dir} is in use by another mpcs process (it holds "
                              f"{run_dir / LOCK_FILE}); wait for it to end or choose another "
                              f"--out") from None
    return lock


def remove_temporary_files(run_dir: Path, subdirs: Iterable[str] = ()) -> None:
    """Remove the temporary files of atomic writes that a killed run left behind."""
    for folder in (run_dir, *(run_dir / sub for sub in subdirs)):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            log.info("removed %s, a temporary file left by an interrupted run", tmp)


def move_aside(run_dir: Path, rules: FolderRules) -> Path:
    """Move everything in ``run_dir`` but the lock and the caches to a new folder beside it,
    ``<name>.replaced-<time>``, and return that folder. Nothing is deleted."""
    where = run_dir.absolute()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = where.with_name(f"{where.name}.replaced-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = where.with_name(f"{where.name}.replaced-{stamp}-{n}")
    try:
        aside.mkdir()
        for entry in sorted(run_dir.iterdir()):
            if entry.name != LOCK_FILE and not any(fnmatch.fnmatch(entry.name, pattern)
                                                   for pattern in rules.caches):
                os.replace(entry, aside / entry.name)
    except OSError as exc:
        raise output_error(f"--overwrite: cannot move the previous run in {run_dir} aside to "
                           f"{aside}: {exc.strerror or exc}; nothing was deleted. Move it away "
                           f"yourself or choose another --out", exc.strerror) from None
    log.warning("--overwrite: moved the previous run in %s to %s; it is deleted %s", run_dir,
                aside, rules.replaced_until)
    return aside


def open_run_folder(run_dir: str | Path, rules: FolderRules, resume: bool = False,
                    overwrite: bool = False) -> RunFolder:
    """Create and lock ``run_dir`` (see :func:`lock_folder`), remove temporary files left
    by a killed run, and, unless ``resume``, make sure it holds no previous run: refused
    (:class:`OutputError`) without ``overwrite``, moved aside (:func:`move_aside`) with it.
    Close the returned :class:`RunFolder` to unlock."""
    run_dir = Path(run_dir)
    _one_of(resume, overwrite)
    check_output_folder(run_dir)
    lock = lock_folder(run_dir)
    try:
        remove_temporary_files(run_dir, rules.subdirs)
        found = [] if resume else previous_run(run_dir, rules)
        if found and not overwrite:
            raise _holds_a_run(run_dir, found, rules)
        folder = RunFolder(run_dir, lock, move_aside(run_dir, rules) if found else None)
        _make_subdirs(run_dir, rules.subdirs)
    except BaseException:
        lock.close()
        raise
    return folder


def _make_subdirs(run_dir: Path, subdirs: Iterable[str]) -> None:
    try:
        for sub in subdirs:
            (run_dir / sub).mkdir(exist_ok=True)
    except OSError as exc:
        raise output_error(f"cannot create the run folder {run_dir}: {exc.strerror or exc}; "
                           f"choose another --out", exc.strerror) from None
