"""``mpcs download``: fetch, check, unpack and verify BreakHis, BACH and UCSB BCC.

The registry :data:`REGISTRY` holds, per data set, where the official archive lives, what
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

Unreachable or offline: one :class:`~mpcs.errors.DownloadError` line naming the URL and
telling the user to download the archive by hand and pass ``--from``; the partial file stays
for the next resume.

Example:
    >>> result = install_dataset(REGISTRY["breakhis"], "/data")       # doctest: +SKIP
    >>> result.ok, result.root
    (True, PosixPath('/data/BreaKHis_v1'))
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from mpcs import __version__
from mpcs.data.bach import BACH_CLASSES, find_photos, scan_bach
from mpcs.data.bcc import BCC_CLASSES, NAME_PATTERN, scan_bcc
from mpcs.data.breakhis import CLASSES, MAGNIFICATIONS, scan_breakhis
from mpcs.data.cache import quiet_pil_warnings
from mpcs.data.images import check_image
from mpcs.data.safe_extract import extract_archive
from mpcs.engine.runinfo import atomic_write_text, output_error
from mpcs.errors import DataError, DownloadError

__all__ = ["REGISTRY", "Census", "DatasetSource", "FetchSettings", "VerifyResult",
           "fetch", "install_dataset", "installed", "sha256_file", "verify_dataset"]

log = logging.getLogger(__name__)

Say = Callable[[str], None]


# --------------------------------------------------------------------------- census


@dataclass
class Census:
    """What the readers found in an unpacked data set: ``counts`` (name -> number) and
    ``unreadable`` files as ``(path, reason)``."""

    counts: dict[str, int]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def _checked(paths: list[str]) -> list[tuple[str, str]]:
    """``(path, reason)`` of each file whose image header cannot be read."""
    bad = []
    with quiet_pil_warnings():
        for p in paths:
            try:
                check_image(p)
            except DataError as e:
                bad.append((p, str(e).removeprefix(f"{p}: ")))
    return bad


def count_breakhis(root: Path) -> Census:
    """Images, patients (slide folders: the official archive's 82, of 81 distinct ids), and
    images per class and per class x magnification of a BreakHis tree."""
    with quiet_pil_warnings():
        frame = scan_breakhis(root, on_bad_image="skip")
    counts = {"images": len(frame),
              "patients": int(len(frame.drop_duplicates(["patient_id", "subtype"])))}
    for label in CLASSES:
        part = frame[frame["label"] == label]
        counts[label] = len(part)
        for mag in MAGNIFICATIONS:
            counts[f"{label} {mag}"] = int((part["magnification"] == mag).sum())
    return Census(counts, [(str(p), str(r)) for p, r in frame.attrs.get("skipped", [])])


def count_bach(root: Path) -> Census:
    """Microscopy photos in total and per class (``Photos/<class>/*.tif``)."""
    frame = scan_bach(find_photos(root))
    counts = {"images": len(frame)}
    counts.update({c: int((frame["label"] == c).sum()) for c in BACH_CLASSES})
    return Census(counts, _checked(frame["path"].astype(str).tolist()))


def count_bcc(root: Path) -> Census:
    """BCC images (``ytma*_<class>*_ccd.tif``) in total and per class."""
    frame = scan_bcc(root)
    counts = {"images": len(frame)}
    counts.update({c: int((frame["label"] == c).sum()) for c in BCC_CLASSES})
    return Census(counts, _checked(frame["path"].astype(str).tolist()))


# --------------------------------------------------------------------------- registry


def _holds(name: str) -> Callable[[Path], bool]:
    def check(folder: Path) -> bool:
        return (folder / name).is_dir()
    return check


def _holds_bach_photos(folder: Path) -> bool:
    photos = folder / "Photos"
    return photos.is_dir() and any((photos / c).is_dir() for c in BACH_CLASSES)


def _holds_bcc_images(folder: Path) -> bool:
    return any(NAME_PATTERN.match(p.name) for p in folder.iterdir() if p.is_file())


@dataclass(frozen=True)
class DatasetSource:
    """One downloadable data set.

    Attributes:
        name: registry key (``breakhis``, ``bach``, ``bcc``).
        title: what is printed.
        url: the official archive, or None where no direct link is known (then ``--from``
            or ``--url`` is needed).
        page: the data set's official page (terms, manual download).
        archive: the archive's file name under the download folder.
        sha256: pinned SHA-256 of the archive from an authoritative source, or None
            (recorded on first download instead).
        expected: published counts (see the ``count`` functions for the names).
        citation: what to cite.
        terms: the licence or terms of use, as the official page states them.
        target: folder name under the download folder that the readers get.
        is_root: the layout fix-up: true for the archive folder that becomes ``target``.
        count: the census of an unpacked ``target`` folder.
    """

    name: str
    title: str
    url: str | None
    page: str
    archive: str
    sha256: str | None
    expected: Mapping[str, int]
    citation: str
    terms: str
    target: str
    is_root: Callable[[Path], bool]
    count: Callable[[Path], Census]

    def notice(self) -> str:
        """Terms and citation, printed once per installation."""
        return (f"{self.title}\n  terms: {self.terms}\n  page: {self.page}\n"
                f"  please cite: {self.citation}")


def _breakhis_expected() -> dict[str, int]:
    # The UFPR page's table (https://web.inf.ufpr.br/vri/databases/breast-cancer-
    # histopathological-database-breakhis/). Its 40X benign cell reads 652, but its own
    # totals (1,995 images at 40X with 1,370 malignant; 2,480 benign in all) need 625.
    per_mag = {"benign": (625, 644, 623, 588), "malignant": (1370, 1437, 1390, 1232)}
    expected = {"images": 7909, "patients": 82, "benign": 2480, "malignant": 5429}
    for label, values in per_mag.items():
        expected.update({f"{label} {m}": v for m, v in zip(MAGNIFICATIONS, values, strict=True)})
    return expected


REGISTRY: dict[str, DatasetSource] = {
    "breakhis": DatasetSource(
        name="breakhis",
        title="BreakHis v1 (Breast Cancer Histopathological Image Classification), UFPR / "
              "P&D Laboratory, Parana, Brazil",
        url="http://www.inf.ufpr.br/vri/databases/BreaKHis_v1.tar.gz",
        page="https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-"
             "database-breakhis/",
        archive="BreaKHis_v1.tar.gz",
        sha256=None,
        expected=_breakhis_expected(),
        citation="F. A. Spanhol, L. S. Oliveira, C. Petitjean, L. Heutte. A Dataset for Breast "
                 "Cancer Histopathological Image Classification. IEEE Transactions on "
                 "Biomedical Engineering 63(7):1455-1462, 2016. doi:10.1109/TBME.2015.2496264",
        terms="made available by UFPR for research; use it under the terms on its page and "
              "cite the paper below",
        target="BreaKHis_v1",
        is_root=_holds("histology_slides"),
        count=count_breakhis,
    ),
    "bach": DatasetSource(
        name="bach",
        title="BACH: ICIAR 2018 Grand Challenge on BreAst Cancer Histology images "
              "(microscopy part), Zenodo record 3632035",
        url="https://zenodo.org/records/3632035/files/ICIAR2018_BACH_Challenge.zip",
        page="https://doi.org/10.5281/zenodo.3632035 (challenge: "
             "https://iciar2018-challenge.grand-challenge.org/Dataset/)",
        archive="ICIAR2018_BACH_Challenge.zip",
        sha256=None,
        expected={"images": 400, **dict.fromkeys(BACH_CLASSES, 100)},
        citation="G. Aresta et al. BACH: Grand Challenge on Breast Cancer Histology Images. "
                 "Medical Image Analysis 56:122-139, 2019",
        terms="the licence stated on the Zenodo record (CC BY-NC-ND 4.0: non-commercial, no "
              "derivatives); check it there before use",
        target="ICIAR2018_BACH_Challenge",
        is_root=_holds_bach_photos,
        count=count_bach,
    ),
    "bcc": DatasetSource(
        name="bcc",
        title="UCSB Bio-Segmentation Benchmark: breast cancer cell images (58 H&E TIFFs, "
              "32 benign, 26 malignant)",
        url=None,
        page="http://bioimage.ucsb.edu/research/bio-segmentation",
        archive="BreastCancerCell_dataset.zip",
        sha256=None,
        expected={"images": 58, "benign": 32, "malignant": 26},
        citation="E. Drelie Gelasca, J. Byun, B. Obara, B. S. Manjunath. Evaluation and "
                 "benchmark for biological image segmentation. IEEE ICIP 2008, pp. 1816-1819",
        terms="the UCSB Center for Bio-Image Informatics asks users to cite its ICIP 2008 "
              "paper; see its page",
        target="bcc",
        is_root=_holds_bcc_images,
        count=count_bcc,
    ),
}


# --------------------------------------------------------------------------- fetch


@dataclass(frozen=True)
class FetchSettings:
    """How :func:`fetch` behaves: ``retries`` after the first try, the first back-off wait
    in seconds (doubled after each retry), the socket timeout in seconds, the read size."""

    retries: int = 4
    backoff: float = 2.0
    timeout: float = 60.0
    chunk: int = 1 << 20


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
        >>> verify_dataset(REGISTRY["bcc"], "/data/bcc").differences   # doctest: +SKIP
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
                    settings: FetchSettings = FetchSettings(), allow_differences: bool = False,
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
