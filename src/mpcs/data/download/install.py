"""``mpcs download``: fetch, check, unpack and verify BreakHis, BACH and UCSB BCC.

Each data set's :class:`~mpcs.data.download.source.DatasetSource` (registered in
:data:`mpcs.data.datasets.DOWNLOADS`) holds where the official archive lives, what
kind of archive it is, its SHA-256 where an authoritative source publishes one (none of the
three does today, so each is ``None``), the published counts the unpacked data are checked
against, the citation and terms to print, and the layout fix-up (which folder of the archive
the readers get, under which name).

:func:`install_dataset` runs the whole path for one data set into a folder ``DIR``:

1. print the terms and citation (once per installation);
2. download ``DIR/<archive>`` through ``DIR/<archive>.part`` (streamed, tqdm progress bar
   with bytes, rate and ETA; an interrupted download is resumed with an HTTP ``Range``
   request; retries with exponential back-off; a socket timeout), or take the archive the
   user copied by hand (``--from``);
3. SHA-256 of the archive: compared with the pinned value where there is one, else with the
   value recorded in ``DIR/<name>.sha256`` by the first download (``sha256sum`` format),
   else recorded there and printed. A downloaded archive that disagrees is moved aside to
   ``DIR/<archive>.sha256-mismatch`` and refused;
4. safe extraction (:mod:`mpcs.data.safe_extract`) into a staging folder, then the layout
   fix-up moves the data-set folder to ``DIR/<target>`` (``BreaKHis_v1``,
   ``ICIAR2018_BACH_Challenge``, ``bcc``);
5. verification with the project's readers: image counts per class and magnification
   against the published numbers, unreadable files named; the result goes to
   ``DIR/<name>.verified.json``.

Unreachable or offline: one :class:`~mpcs.core.errors.DownloadError` line naming the URL and
telling the user to download the archive by hand and pass ``--from``; the partial file stays
for the next resume.

Example:
    >>> result = install_dataset(DOWNLOADS["breakhis"], "/data")       # doctest: +SKIP
    >>> result.ok, result.root
    (True, PosixPath('/data/BreaKHis_v1'))
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mpcs import __version__
from mpcs.core.errors import DataError, DownloadError, output_error
from mpcs.core.io import atomic_write_text
from mpcs.data.download.fetch import DEFAULT_FETCH, FetchSettings, fetch, sha256_file
from mpcs.data.download.safe_extract import extract_archive
from mpcs.data.download.source import DatasetSource

__all__ = ["VerifyResult", "check_sha256", "install_dataset", "installed", "place", "unpack",
           "verify_dataset"]

log = logging.getLogger(__name__)

Say = Callable[[str], None]


# --------------------------------------------------------------------------- checksum


def sha256_record(source: DatasetSource, folder: Path) -> Path:
    return folder / f"{source.name}.sha256"


def _recorded_sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    fields = path.read_text().split()
    return fields[0].lower() if fields else None


def _refuse_checksum(archive: Path, digest: str, wanted: str, where: str,
                     downloaded: bool) -> DownloadError:
    if downloaded:
        aside = archive.with_name(archive.name + ".sha256-mismatch")
        os.replace(archive, aside)
        kept = f"; the file was moved aside to {aside}"
    else:
        kept = "; the file was left where it is"
    return DownloadError(f"{archive}: SHA-256 {digest} differs from {where} {wanted}: refused "
                         f"(a damaged or different archive){kept}")


def check_sha256(source: DatasetSource, folder: Path, archive: Path, downloaded: bool,
                 progress: bool, say: Say) -> str:
    """The archive's SHA-256, checked against the pinned or the recorded value (or recorded
    now, and printed); a mismatch is refused (see :func:`_refuse_checksum`)."""
    digest = sha256_file(archive, progress)
    record = sha256_record(source, folder)
    if source.sha256:
        if digest != source.sha256.lower():
            raise _refuse_checksum(archive, digest, source.sha256.lower(), "the pinned value",
                                   downloaded)
        say(f"SHA-256 {digest}: matches the pinned value")
        return digest
    recorded = _recorded_sha256(record)
    if recorded is not None:
        if digest != recorded:
            raise _refuse_checksum(archive, digest, recorded, f"the value recorded in {record}",
                                   downloaded)
        say(f"SHA-256 {digest}: matches the value recorded in {record}")
        return digest
    atomic_write_text(record, f"{digest}  {source.archive}\n")
    say(f"SHA-256 {digest} (no published checksum to check against: recorded in {record}; "
        "later downloads into this folder are checked against it)")
    return digest


# --------------------------------------------------------------------------- layout


def _walk_dirs(root: Path, depth: int) -> Iterator[Path]:
    """``root`` and its folders down to ``depth`` levels, shallowest first (no __MACOSX)."""
    level = [root]
    for _ in range(depth + 1):
        nxt = []
        for folder in level:
            yield folder
            nxt += sorted(p for p in folder.iterdir()
                          if p.is_dir() and p.name != "__MACOSX" and not p.is_symlink())
        level = nxt


def place(source: DatasetSource, staging: Path, folder: Path, archive: Path) -> Path:
    """The layout fix-up: move the archive folder that ``source.is_root`` recognises to
    ``folder/source.target`` and remove the rest of ``staging``; returns the new folder."""
    root = next((d for d in _walk_dirs(staging, 3) if source.is_root(d)), None)
    if root is None:
        raise DataError(f"{archive}: no {source.name} data found in the archive (expected the "
                        f"layout that unpacks to {source.target})")
    final = folder / source.target
    os.replace(root, final)
    shutil.rmtree(staging, ignore_errors=True)
    return final


def unpack(source: DatasetSource, archive: Path, folder: Path, say: Say) -> Path:
    """Safe extraction into ``folder/.<name>.extracting`` then :func:`place`."""
    staging = folder / f".{source.name}.extracting"
    shutil.rmtree(staging, ignore_errors=True)  # a crashed earlier extraction
    say(f"extracting {archive} -> {folder / source.target}")
    try:
        extract_archive(archive, staging)
        return place(source, staging, folder, archive)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- verify


@dataclass
class VerifyResult:
    """Verification of an unpacked data set against its expected counts."""

    name: str
    root: Path
    counts: dict[str, int]
    expected: dict[str, int]
    unreadable: list[tuple[str, str]]
    sha256: str | None = None
    source: str | None = None
    accepted: bool = False  # differences accepted by the user (--allow-differences)

    @property
    def differences(self) -> list[tuple[str, int, int]]:
        """``(what, expected, found)`` of every count that differs."""
        return [(k, v, self.counts.get(k, 0)) for k, v in self.expected.items()
                if self.counts.get(k, 0) != v]

    @property
    def ok(self) -> bool:
        return not self.differences and not self.unreadable

    @property
    def usable(self) -> bool:
        return self.ok or self.accepted

    def report(self) -> str:
        """Counts beside the expected ones, then the differences and unreadable files."""
        width = max([len(k) for k in self.expected] + [8])
        lines = [f"{self.name} in {self.root}:",
                 f"  {'':{width}}  {'expected':>8}  {'found':>8}"]
        for key, want in self.expected.items():
            got = self.counts.get(key, 0)
            mark = "" if got == want else f"  DIFFERS by {got - want:+d}"
            lines.append(f"  {key:{width}}  {want:>8}  {got:>8}{mark}")
        for path, reason in self.unreadable:
            lines.append(f"  unreadable: {path}: {reason}")
        n, m = len(self.differences), len(self.unreadable)
        lines.append(f"  all {len(self.expected)} counts as expected, every image readable"
                     if self.ok else
                     f"  {n} count(s) differ, {m} unreadable file(s)")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"dataset": self.name, "root": str(self.root), "ok": self.ok,
                "accepted": self.accepted, "counts": self.counts, "expected": self.expected,
                "differences": [list(d) for d in self.differences],
                "unreadable": [list(u) for u in self.unreadable], "sha256": self.sha256,
                "source": self.source, "mpcs": __version__,
                "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def verify_dataset(source: DatasetSource, root: str | os.PathLike[str]) -> VerifyResult:
    """Census of ``root`` with the project's readers, against ``source.expected``.

    Example:
        >>> verify_dataset(DOWNLOADS["bcc"], "/data/bcc").differences   # doctest: +SKIP
        []
    """
    root = Path(root)
    census = source.count(root)
    return VerifyResult(source.name, root, census.counts, dict(source.expected),
                        census.unreadable)


def verified_record(source: DatasetSource, folder: str | os.PathLike[str]) -> Path:
    return Path(folder) / f"{source.name}.verified.json"


def installed(source: DatasetSource, folder: str | os.PathLike[str]) -> VerifyResult | None:
    """The recorded verification of ``folder`` when its data are in place and usable (as
    published, or accepted with ``--allow-differences``) for the same expectations."""
    record = verified_record(source, folder)
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    root = Path(folder) / source.target
    if not root.is_dir() or data.get("expected") != dict(source.expected):
        return None
    result = VerifyResult(source.name, root, data["counts"], data["expected"],
                          [tuple(u) for u in data["unreadable"]], data.get("sha256"),
                          data.get("source"), bool(data.get("accepted")))
    return result if result.usable else None


# --------------------------------------------------------------------------- install


def _no_link(source: DatasetSource) -> DownloadError:
    return DownloadError(f"{source.name}: no direct download link is known (get the archive "
                         f"from {source.page} by hand and pass --from ARCHIVE, or give a "
                         "mirror with --url)")


def _archive_path(source: DatasetSource, folder: Path, url: str, settings: FetchSettings,
                  progress: bool, say: Say) -> Path:
    """The downloaded archive (fetched now unless a finished download is already there)."""
    dest = folder / source.archive
    if dest.is_file():
        say(f"using the archive downloaded before: {dest}")
        return dest
    say(f"downloading {url} -> {dest}")
    return fetch(url, dest, settings, progress)


def install_dataset(source: DatasetSource, folder: str | os.PathLike[str],
                    archive: str | os.PathLike[str] | None = None, url: str | None = None,
                    settings: FetchSettings = DEFAULT_FETCH, allow_differences: bool = False,
                    remove_archive: bool = False, progress: bool = True,
                    say: Say = print) -> VerifyResult:
    """Download (or take ``archive``), check, unpack and verify ``source`` into ``folder``
    (steps in the module docstring). An installation recorded as usable is reused as it is.

    Returns the verification; ``result.usable`` is False when counts differ or files are
    unreadable and ``allow_differences`` is off (the data are kept either way).

    Raises:
        DownloadError: unreachable, HTTP error, checksum mismatch or unsafe archive.
        DataError: a damaged archive, an unexpected layout, or data the readers refuse.
        OutputError: ``folder`` cannot be written.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise output_error(f"cannot make {folder}: {e.strerror or e}", e.strerror) from None
    done = installed(source, folder)
    if done is not None and archive is None:
        say(f"{source.name}: already installed and verified in {done.root}")
        return done
    downloaded = archive is None
    if downloaded and not (url or source.url):
        raise _no_link(source)
    say(source.notice())
    path = (_archive_path(source, folder, url or source.url or "", settings, progress, say)
            if downloaded else Path(archive))
    if not downloaded and not path.is_file():
        raise DataError(f"{path}: archive not found (--from)")
    digest = check_sha256(source, folder, path, downloaded, progress, say)
    root = folder / source.target
    if root.is_dir():
        say(f"using the data already unpacked in {root} (delete it to unpack again)")
    else:
        root = unpack(source, path, folder, say)
    result = verify_dataset(source, root)
    result = replace(result, sha256=digest, source=str(path if not downloaded else
                                                         (url or source.url)),
                     accepted=allow_differences and not result.ok)
    atomic_write_text(verified_record(source, folder), json.dumps(result.to_json(), indent=1))
    if remove_archive and downloaded:
        path.unlink(missing_ok=True)
    return result
