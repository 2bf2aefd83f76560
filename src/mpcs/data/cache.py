"""Decoded-image cache: each image decoded once, resized, stored as uint8 in a memory map.

Decoding a 700x460 PNG costs far more than a training step's augmentation of the decoded
pixels, so pre-training and feature extraction read pixels from a ``[N, 3, S, S]`` uint8
array instead of the files. The array lives in ``<cache_dir>/<key>.npy`` where ``key`` is a
hash of the image paths, their sizes and modification times, and ``S``; it is reused across
runs and folds, rebuilt when any file changes, and safe to delete at any time.

Size rule: every image, whatever its size or aspect ratio, is resized to exactly ``S x S``
(``S`` = ``data.input_size``) with Pillow's antialiased bilinear filter: no crop, no
padding, the aspect ratio is not kept. BreakHis' 700x460 (or 700x456) becomes square, as in
the authors' pipeline, which resized to the square network input; an image smaller than
``S`` (a 20x12 thumbnail) is upsampled to ``S x S`` the same way. Every mode is first
converted to 8-bit RGB by :func:`mpcs.data.images.load_rgb` (grayscale, RGBA, palette,
16-bit, ...).

Bad images (``on_bad_image``): with ``"error"`` (the default) the first image that fails to
decode, in the order of ``paths``, raises :class:`~mpcs.core.errors.DataError` naming the file and
the problem, also when a worker thread decoded it; the decodes still queued are cancelled and
no cache entry is written. With ``"skip"`` a bad image's pixels are left as zeros and it is
reported as ``(path, reason)``; the caller must leave it out (pre-training drops the whole
sample). A cache entry built with ``"skip"`` records its bad images in ``<key>.json``, so a
later call on the same files reports the same list (``"skip"``) or raises the same error
(``"error"``) without decoding again.

Integrity: ``<key>.json`` holds the BLAKE2b checksum of the ``.npy`` file. The first time a
process uses a cache file (per path, inode, size and modification time) the file is hashed
and compared; a file whose bytes changed (a bad disk, a stray write) is rebuilt with a
warning, never used, and one without a checksum (written before mpcs recorded them) is
rebuilt once, with an info line.

Disk space: before the array is written, the free space of the cache folder is checked
against its size (plus :data:`FREE_SPACE_RESERVE`), and the file's blocks are reserved with
``posix_fallocate`` where the file system supports it, so a full disk stops the command with
one :class:`~mpcs.core.errors.DataError` line (and no temporary file left), never with a SIGBUS
from a memory-mapped write.

Example:
    >>> pixels = load_images(["a.png", "b.png"], size=64, cache_dir=None)  # doctest: +SKIP
    >>> pixels.shape
    (2, 3, 64, 64)
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from mpcs.core.errors import DataError
from mpcs.core.io import atomic_path
from mpcs.data.images import is_image_file, load_rgb

log = logging.getLogger(__name__)
CACHE_VERSION = 1
ON_BAD_IMAGE = ("error", "skip")
#: A temporary cache file of a process that no longer exists is removed once it is this old.
STALE_TMP_SECONDS = 3600.0
#: Bytes left free on the cache's disk beyond the array itself (other files need room too).
FREE_SPACE_RESERVE = 64 * 2**20
_HASH_CHUNK = 16 * 2**20
#: Cache files verified by this process: (path, inode, size, mtime_ns).
_VERIFIED: set[tuple[str, int, int, int]] = set()

BadImages = list[tuple[str, str]]


@contextmanager
def quiet_pil_warnings() -> Iterator[None]:
    """Silence Pillow's ``UserWarning``s (e.g. "Corrupt EXIF data") while reading images.

    A damaged file either still decodes or fails with a :class:`DataError` that names it;
    Pillow's own warning would only add a second, less clear message on stderr. Enter it in
    the main thread around the whole threaded section (``warnings`` filters are global).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL(\.|$)")
        yield


def with_skip_hint(err: DataError) -> DataError:
    """An error about one image file, plus how to go on without it (other errors as is)."""
    head = str(err).split(": ", 1)[0]
    if not is_image_file(head):
        return err
    return DataError(f"{err}. To leave unusable images out instead, use --on-bad-image skip "
                     f"(config data.on_bad_image=skip)")


def decode_resized(path: str | Path, size: int) -> np.ndarray:
    """One image as uint8 [3, size, size] RGB (errors name the file: see ``load_rgb``)."""
    img = load_rgb(path).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _decode_one(path: str | Path, size: int) -> np.ndarray:
    """``decode_resized`` whose every failure is a :class:`DataError` naming the file."""
    try:
        return decode_resized(path, size)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - anything else a decoder throws, named
        raise DataError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


def _reason(exc: DataError, path: str | Path) -> str:
    """The problem part of a ``"<path>: <problem>"`` message."""
    return str(exc).removeprefix(f"{path}: ")


def cache_key(paths: Sequence[str | Path], size: int, missing_ok: bool = False) -> str:
    """Hash of ``size`` and every path with its size and modification time.

    A file that cannot be stat'ed raises :class:`DataError`, unless ``missing_ok`` (skip
    mode), where it enters the hash as missing and fails later, at decode time.
    Paths are hashed as their file-system bytes (``os.fsencode``), so names that are not
    valid UTF-8 work too (and valid ones give the same key as before).
    """
    h = hashlib.sha1(f"v{CACHE_VERSION}|{size}".encode())
    for p in paths:
        name = b"|" + os.fsencode(os.path.abspath(p))
        try:
            st = os.stat(p)
        except OSError as exc:
            if not missing_ok:
                raise DataError(f"{p}: cannot read file ({exc.strerror or exc})") from None
            h.update(name + b"|missing")
            continue
        h.update(name + f"|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _decode_all(paths: Sequence[str | Path], size: int, out: np.ndarray,
                progress: bool, workers: int, on_bad_image: str) -> BadImages:
    """Decode ``paths`` into ``out`` with a thread pool; returns the skipped bad images.

    In error mode the first failure (in path order) is raised in the calling thread and the
    decodes not yet started are cancelled.
    """
    bad: BadImages = []
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mpcs-decode")
    try:
        with quiet_pil_warnings():
            futures: list[Future[np.ndarray] | None] = [
                pool.submit(_decode_one, p, size) for p in paths]
            for i in tqdm(range(len(paths)), desc=f"decode@{size}", unit="img",
                          disable=not progress, leave=False):
                future = futures[i]
                futures[i] = None  # let finished pixels go as soon as they are copied
                try:
                    out[i] = future.result()  # type: ignore[union-attr]
                except DataError as exc:
                    if on_bad_image == "error":
                        raise
                    out[i] = 0
                    bad.append((str(paths[i]), _reason(exc, paths[i])))
                    log.warning("skipping %s: %s", paths[i], bad[-1][1])
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return bad


def file_digest(path: Path) -> str:
    """BLAKE2b (hex) of the file's bytes, read in chunks."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _identity(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns


def _verified(final: Path, info: dict) -> bool:
    """Whether ``final`` has the checksum ``info`` records (hashed once per process)."""
    ident = _identity(final)
    if ident in _VERIFIED:
        return True
    expected = info.get("blake2b")
    if not isinstance(expected, str):
        log.info("%s: decoded-image cache file without a checksum (written by an older "
                 "mpcs); rebuilding it", final)
        return False
    if file_digest(final) != expected:
        log.warning("%s: decoded-image cache file is damaged (its checksum does not match "
                    "the one recorded in %s); rebuilding it", final, final.with_suffix(".json"))
        return False
    _VERIFIED.add(ident)
    return True


def _read_entry(final: Path, meta: Path, shape: tuple[int, ...]
                ) -> tuple[np.ndarray, BadImages] | None:
    """A complete, verified cache entry (pixels, recorded bad images), or None to rebuild."""
    if not (final.exists() and meta.exists()):
        return None
    try:
        info = json.loads(meta.read_text())
        arr = np.load(final, mmap_mode="r")
        if arr.shape != shape or not isinstance(info, dict) or not _verified(final, info):
            return None
    except (OSError, ValueError):
        return None
    return arr, [(str(p), str(r)) for p, r in info.get("bad", [])]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists, owned by someone else
    return True


def _remove_stale_tmp(folder: Path) -> None:
    """Remove ``<key>.<pid>.tmp.npy`` files left by killed processes (dead pid, old file)."""
    now = time.time()
    for tmp in folder.glob("*.tmp.npy"):
        parts = tmp.name.split(".")
        if len(parts) != 4 or not parts[1].isdigit() or _pid_alive(int(parts[1])):
            continue
        try:
            if now - tmp.stat().st_mtime > STALE_TMP_SECONDS:
                tmp.unlink()
                log.info("removed a stale temporary cache file %s", tmp)
        except OSError:
            pass


def _write_json(path: Path, data: object) -> None:
    with atomic_path(path, tmp_name=f"{path.name}.{os.getpid()}.tmp") as tmp:
        tmp.write_text(json.dumps(data))


def _check_free_space(folder: Path, nbytes: int) -> None:
    """Refuse to start a cache file that the disk has no room for (see module docstring)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # no answer from this file system: fallocate (or the write) will tell
    need = nbytes + FREE_SPACE_RESERVE
    if free < need:
        raise DataError(
            f"{folder}: not enough free space for the decoded-image cache (needs "
            f"{need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free); free space there, set "
            f"data.cache_dir (or $MPCS_CACHE) to another folder, or set data.use_cache=false")


def _reserve(path: Path) -> None:
    """Allocate the blocks of ``path`` now, so that a full disk is an ``OSError`` here and
    not a SIGBUS on a memory-mapped write (file systems without fallocate: skipped)."""
    if not hasattr(os, "posix_fallocate"):
        return
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS):
                return
            raise


def _cache_write_error(folder: Path, exc: OSError) -> DataError:
    return DataError(
        f"{folder}: cannot write the decoded-image cache ({exc.strerror or exc}); free space "
        f"there, set data.cache_dir (or $MPCS_CACHE) to a writable folder, or set "
        f"data.use_cache=false")


def load_images_with_report(paths: Sequence[str | Path], size: int,
                            cache_dir: str | Path | None = None, progress: bool = True,
                            workers: int | None = None, on_bad_image: str = "error"
                            ) -> tuple[np.ndarray, BadImages]:
    """Decoded, resized pixels of ``paths`` as uint8 ``[N, 3, size, size]``, and the bad
    images skipped as ``(path, reason)`` pairs (always empty with ``on_bad_image="error"``).

    With ``cache_dir`` (a folder) the array is memory-mapped from, or first written to, that
    folder; with ``None`` it is decoded into memory and not kept. See the module docstring
    for the size rule and ``on_bad_image``.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise ValueError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    workers = workers or min(4, os.cpu_count() or 1)
    shape = (len(paths), 3, size, size)
    if cache_dir is None:
        out = np.empty(shape, dtype=np.uint8)
        return out, _decode_all(paths, size, out, progress, workers, on_bad_image)
    folder = Path(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _cache_write_error(folder, exc) from None
    key = cache_key(paths, size, missing_ok=on_bad_image == "skip")
    final, meta = folder / f"{key}.npy", folder / f"{key}.json"
    entry = _read_entry(final, meta, shape)
    if entry is not None:
        arr, bad = entry
        if bad and on_bad_image == "error":
            path, reason = bad[0]
            raise DataError(f"{path}: {reason}")
        for path, reason in bad:
            log.warning("skipping %s: %s (recorded in the image cache)", path, reason)
        return arr, bad
    _remove_stale_tmp(folder)
    _check_free_space(folder, int(np.prod(shape)))
    try:
        with atomic_path(final, tmp_name=f"{key}.{os.getpid()}.tmp.npy") as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            _reserve(tmp)
            bad = _decode_all(paths, size, out, progress, workers, on_bad_image)
            out.flush()
            del out
            digest = file_digest(tmp)
            # The .json first: an .npy without its .json is never used (it is rebuilt).
            _write_json(meta, {"size": size, "count": len(paths),
                               "first": str(paths[0]) if paths else None, "bad": bad,
                               "blake2b": digest})
        _VERIFIED.add(_identity(final))
    except OSError as exc:
        raise _cache_write_error(folder, exc) from None
    log.info("cached %d images at %dx%d in %s", len(paths), size, size, final)
    return np.load(final, mmap_mode="r"), bad


def load_images(paths: Sequence[str | Path], size: int, cache_dir: str | Path | None = None,
                progress: bool = True, workers: int | None = None) -> np.ndarray:
    """Decoded, resized pixels of ``paths`` as uint8 ``[N, 3, size, size]``.

    With ``cache_dir`` (a folder) the array is memory-mapped from, or first written to, that
    folder; with ``None`` it is decoded into memory and not kept. Any bad image raises
    :class:`DataError` naming it (see :func:`load_images_with_report` to skip them instead).
    """
    return load_images_with_report(paths, size, cache_dir, progress, workers)[0]
