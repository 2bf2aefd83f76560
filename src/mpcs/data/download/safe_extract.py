"""Safe extraction of downloaded data archives (tar, tar.gz, zip).

An archive from the internet (or copied by hand) is unpacked only if every member stays in
the target folder. Refused, with one line naming the archive and the member:

* absolute names (``/etc/passwd``, ``C:\\x``) and names with a ``..`` component;
* links whose target is absolute or holds a ``..`` component (a link can then only point
  into its own folder or below, so no chain of links leaves the target); hard links likewise;
* device files and FIFOs; zip members marked as symbolic links.

Tar archives are extracted member by member with Python's ``filter="data"`` where the
interpreter has it (3.11.4+, 3.12+), on top of these checks; zip members are written by our
own code (``zipfile.extract`` would silently rewrite a bad name instead of refusing it).
Extraction goes into a fresh folder that the caller renames into place, so a refused or
interrupted archive never leaves half a data set where the readers look.

Example:
    >>> extract_archive("BreaKHis_v1.tar.gz", "/data/.staging")      # doctest: +SKIP
    PosixPath('/data/.staging')
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from mpcs.core.errors import DataError, DownloadError, output_error

__all__ = ["archive_kind", "check_member_name", "extract_archive"]

_DRIVE = re.compile(r"^[A-Za-z]:")
#: tarfile's own safety filter (Python 3.11.4+, 3.12+), or None on older interpreters.
_DATA_FILTER = getattr(tarfile, "data_filter", None)
_FILTER_ERRORS: tuple[type[Exception], ...] = tuple(
    e for e in (getattr(tarfile, "FilterError", None),) if e is not None)


def archive_kind(path: str | os.PathLike[str]) -> str:
    """``"zip"`` or ``"tar"`` (plain or compressed), from the file's content.

    Raises:
        DataError: the file is missing or is neither a zip nor a tar archive.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: archive not found")
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, tarfile.TarError, EOFError):
        pass
    raise DataError(f"{path}: not a tar, tar.gz or zip archive")


def check_member_name(name: str, archive: str | os.PathLike[str]) -> PurePosixPath:
    """The member name as a relative path, or :class:`DownloadError` if it is absolute or
    climbs out with ``..`` (backslashes count as separators, as Windows tools write them).

    Example:
        >>> check_member_name("BreaKHis_v1/a.png", "x.tar")
        PurePosixPath('BreaKHis_v1/a.png')
    """
    text = name.replace("\\", "/")
    if text.startswith("/") or _DRIVE.match(text):
        raise DownloadError(f"{archive}: refused: member {name!r} has an absolute path")
    rel = PurePosixPath(text)
    if ".." in rel.parts:
        raise DownloadError(f"{archive}: refused: member {name!r} climbs out of the target "
                            "folder ('..')")
    return rel


def _check_link_target(member: str, target: str, archive: str | os.PathLike[str]) -> None:
    text = target.replace("\\", "/")
    if text.startswith("/") or _DRIVE.match(text) or ".." in PurePosixPath(text).parts:
        raise DownloadError(f"{archive}: refused: link {member!r} points out of the target "
                            f"folder ({target!r})")


def _check_tar_member(member: tarfile.TarInfo, archive: Path) -> None:
    check_member_name(member.name, archive)
    if member.issym() or member.islnk():
        _check_link_target(member.name, member.linkname, archive)
    elif not (member.isfile() or member.isdir()):
        raise DownloadError(f"{archive}: refused: member {member.name!r} is a device file or "
                            "FIFO, not data")


def _extract_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:  # one pass: checked, then written
                _check_tar_member(member, archive)
                if _DATA_FILTER is not None:
                    tar.extract(member, dest, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tar.extract(member, dest)
    except _FILTER_ERRORS as e:
        raise DownloadError(f"{archive}: refused by tarfile's data filter: {e}") from None
    except (tarfile.TarError, EOFError, ValueError) as e:
        raise DataError(f"{archive}: damaged or unreadable archive ({e})") from None


def _is_zip_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def _extract_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            targets = []
            for info in infos:  # every name is checked before anything is written
                rel = check_member_name(info.filename, archive)
                if _is_zip_link(info):
                    raise DownloadError(f"{archive}: refused: member {info.filename!r} is a "
                                        "symbolic link (not supported in zip archives)")
                targets.append((info, dest.joinpath(*rel.parts)))
            for info, target in targets:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as e:
        raise DataError(f"{archive}: damaged or unreadable archive ({e})") from None


def extract_archive(archive: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Unpack ``archive`` (tar, tar.gz, tar.bz2, tar.xz or zip) into the NEW folder ``dest``
    after the checks of the module docstring; returns ``dest``.

    Raises:
        DownloadError: an unsafe member (named), nothing written outside ``dest``.
        DataError: a damaged archive, or ``dest`` already exists.
        OutputError: ``dest`` cannot be written (e.g. the disk is full).
    """
    archive, dest = Path(archive), Path(dest)
    kind = archive_kind(archive)
    if dest.exists():
        raise DataError(f"{dest}: already exists; extraction needs a new folder")
    try:
        dest.mkdir(parents=True)
        (_extract_zip if kind == "zip" else _extract_tar)(archive, dest)
    except OSError as e:
        reason = e.strerror or str(e)
        raise output_error(f"cannot extract {archive} into {dest}: {reason}", reason) from None
    return dest
