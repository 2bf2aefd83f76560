"""THE atomic writer: every file mpcs writes goes through :func:`atomic_path` (or
:func:`atomic_file` / :func:`atomic_write_text` built on it), so a crash, a full disk or
Ctrl-C leaves either the old file or the new one, never half of one; and the checks of
output paths made before any work starts.

A failed write (read-only folder, disk full) raises :class:`~mpcs.core.errors.OutputError`
naming the file (also an :class:`OSError`, whose ``strerror`` is the system's reason); the
temporary file is removed and the target left as it was.

Example:
    >>> atomic_write_text(tmp / "a.txt", "hello")                       # doctest: +SKIP
    >>> with atomic_path(tmp / "x.npy", suffix=".tmp.npy") as part:      # doctest: +SKIP
    ...     np.save(part, array)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mpcs.core.errors import MpcsError, OutputError, output_error

__all__ = ["append_line", "atomic_file", "atomic_path", "atomic_write_text",
           "check_output_file", "check_output_folder"]


def _cannot_write(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return output_error(f"cannot write {path}: {reason}", reason)


def _temporary(path: Path, suffix: str) -> tuple[int, Path]:
    """An open temporary file ``.<name>.<random><suffix>`` beside ``path``."""
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    return fd, Path(name)


@contextmanager
def _replacing(path: Path, tmp: Path) -> Iterator[None]:
    """Rename ``tmp`` over ``path`` when the body succeeds; remove it when it fails (an
    :class:`OSError` becomes an :class:`OutputError` naming ``path``)."""
    try:
        yield
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):  # never hide the failure behind a cleanup error
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, MpcsError):
            raise _cannot_write(path, exc) from None
        raise


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp", fsync: bool = False,
                tmp_name: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that takes a file name (``np.save``,
    ``savefig``, ``Image.save``, safetensors, parquet); on success (optionally fsync'd) it
    is renamed over ``path``.

    The temporary file is ``.<name>.<random><suffix>`` (pick a ``suffix`` whose extension
    the writer expects: ``np.save`` appends ``.npy`` to any other name, ``savefig`` takes
    the format from it), or ``tmp_name`` in the same folder where its name must carry
    information (the image cache names the writing process). On failure it is removed;
    an :class:`OSError` becomes an :class:`OutputError` naming ``path``.
    """
    path = Path(path)
    if tmp_name is not None:
        tmp = path.with_name(tmp_name)
    else:
        fd, tmp = _temporary(path, suffix)
        os.close(fd)
    with _replacing(path, tmp):
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())


@contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` (as :func:`atomic_path`); on success flush,
    fsync and rename it over ``path``."""
    path = Path(path)
    fd, tmp = _temporary(path, ".tmp")
    with _replacing(path, tmp), os.fdopen(fd, mode) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_file`)."""
    with atomic_file(path, "w") as f:
        f.write(text)


def append_line(path: str | Path, text: str) -> None:
    """Append one line to ``path`` and fsync it (a record such as ``metrics.jsonl`` that
    grows by a line per epoch; a crash cuts at most the last line short)."""
    with open(path, "a") as f:
        f.write(text + "\n")
        f.flush()
        os.fsync(f.fileno())


# --------------------------------------------------------------------------- output paths


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_folder(run_dir: str | Path) -> None:
    """Refuse, before any work, an output path that cannot become a writable folder."""
    run_dir = Path(run_dir)
    where = run_dir.absolute()
    existing = _existing_ancestor(where)
    if not existing.is_dir():
        what = "it is a file" if existing == where else f"{existing} is a file"
        raise OutputError(f"cannot use {run_dir} as the run folder: {what}, not a folder; "
                          f"choose another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write the run folder {run_dir}: {existing} is not writable "
                          f"(permission denied or read-only); choose another --out")


def check_output_file(path: str | Path) -> None:
    """Refuse, before any work, an output file whose folder cannot be created or written."""
    path = Path(path)
    existing = _existing_ancestor(path.absolute().parent)
    if not existing.is_dir():
        raise OutputError(f"cannot write {path}: {existing} is a file, not a folder; choose "
                          f"another --out")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: {existing} is not writable (permission "
                          f"denied or read-only); choose another --out")
