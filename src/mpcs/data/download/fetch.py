"""Downloading an archive: streamed through ``<archive>.part``, resumed with HTTP ``Range``
requests, retried with exponential back-off; and its SHA-256."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from mpcs import __version__
from mpcs.core.errors import DownloadError, output_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchSettings:
    """How :func:`fetch` behaves: ``retries`` after the first try, the first back-off wait
    in seconds (doubled after each retry), the socket timeout in seconds, the read size."""

    retries: int = 4
    backoff: float = 2.0
    timeout: float = 60.0
    chunk: int = 1 << 20


#: The default settings (4 retries, 2 s first back-off, 60 s timeout).
DEFAULT_FETCH = FetchSettings()


class _Retry(Exception):
    """A failure worth another try (network, server 5xx, a cut connection)."""


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text if isinstance(text, str) else str(text)


def _open(url: str, offset: int, timeout: float) -> http.client.HTTPResponse:
    headers = {"User-Agent": f"mpcs/{__version__} (+dataset download)"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                      timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code >= 500 or e.code in (408, 429):
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        if e.code == 416 and offset:
            raise  # handled by the caller: the partial file may already be complete
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(_reason(e)) from None


def _resume_point(resp: http.client.HTTPResponse, offset: int) -> tuple[int, int | None]:
    """``(offset to write at, total size or None)`` of a response to a (ranged) request."""
    length = resp.headers.get("Content-Length")
    if offset and resp.status == 206:
        m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
        if m is None or int(m.group(1)) != offset:
            raise _Retry(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
        return offset, None if m.group(3) == "*" else int(m.group(3))
    return 0, int(length) if length is not None else None  # a full answer: start over


def _check_space(folder: Path, needed: int | None) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise output_error(f"{folder}: not enough free space for the download ({needed / 1e9:.2f}"
                           f" GB needed, {free / 1e9:.2f} GB free)", "No space left on device")


def _copy_body(resp: http.client.HTTPResponse, part: Path, start: int, total: int | None,
               chunk: int, progress: bool) -> None:
    expected = None if total is None else total - start
    received = 0
    bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
               desc=part.name.removesuffix(".part"), disable=not progress, leave=True)
    try:
        with open(part, "ab" if start else "wb") as out:
            while True:
                try:
                    data = resp.read(chunk)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retry(f"connection lost after {start + received} bytes "
                                 f"({_reason(e)})") from None
                if not data:
                    break
                out.write(data)
                received += len(data)
                bar.update(len(data))
    finally:
        bar.close()
    if expected is not None and received < expected:
        raise _Retry(f"connection closed after {start + received} of {total} bytes")


def _fetch_once(url: str, part: Path, settings: FetchSettings, progress: bool) -> None:
    offset = part.stat().st_size if part.exists() else 0
    try:
        resp = _open(url, offset, settings.timeout)
    except urllib.error.HTTPError as e:  # 416: nothing left after `offset`
        m = _UNSATISFIED_RANGE.match(e.headers.get("Content-Range", "") if e.headers else "")
        if m is not None and int(m.group(1)) == offset:
            return  # the partial file is the whole archive
        part.unlink()
        raise _Retry("the server refused to resume; starting over") from None
    with resp:
        start, total = _resume_point(resp, offset)
        _check_space(part.parent, None if total is None else total - start)
        try:
            _copy_body(resp, part, start, total, settings.chunk, progress)
        except OSError as e:  # writing the file (network errors arrive as _Retry)
            reason = e.strerror or str(e)
            raise output_error(f"cannot write {part}: {reason}", reason) from None


def fetch(url: str, dest: str | os.PathLike[str], settings: FetchSettings = FetchSettings(),
          progress: bool = True, sleep: Callable[[float], None] = time.sleep) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial file with an
    HTTP Range request, retrying with back-off; returns ``dest``.

    Raises:
        DownloadError: unreachable after the retries (one line naming the URL, saying to
            download by hand and pass ``--from``; the partial file is kept), or a
            permanent HTTP error (4xx).
        OutputError: the download folder cannot be written or is too small.

    Example:
        >>> fetch("http://127.0.0.1:8000/a.zip", "/data/a.zip")       # doctest: +SKIP
        PosixPath('/data/a.zip')
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(settings.retries + 1):
        try:
            _fetch_once(url, part, settings, progress)
            break
        except _Retry as e:
            if attempt == settings.retries:
                size = part.stat().st_size if part.exists() else 0
                kept = (f"; the partial file {part} ({size} bytes) is kept and the next "
                        "call resumes it") if size else ""
                raise DownloadError(
                    f"cannot download {url}: {e} (after {attempt + 1} tries); download it "
                    f"by hand and pass --from ARCHIVE{kept}") from None
            wait = settings.backoff * 2 ** attempt
            log.warning("%s: %s; retrying in %.0f s (%d of %d)", url, e, wait, attempt + 1,
                        settings.retries)
            sleep(wait)
    os.replace(part, dest)
    return dest


def sha256_file(path: str | os.PathLike[str], progress: bool = False) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks.

    Example:
        >>> sha256_file("/data/BreaKHis_v1.tar.gz")                   # doctest: +SKIP
        '3f...'
    """
    path = Path(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                     unit_divisor=1024, desc="sha256", disable=not progress,
                                     leave=False) as bar:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()
