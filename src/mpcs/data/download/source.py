"""What a downloadable data set is (:class:`DatasetSource`: where its archive lives, its
published counts, citation and terms, its layout fix-up) and what the readers find in an
unpacked copy (:class:`Census`). Each data set declares its own in :mod:`mpcs.data.datasets`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mpcs.core.errors import DataError
from mpcs.data.cache import quiet_pil_warnings
from mpcs.data.images import check_image


@dataclass
class Census:
    """What the readers found in an unpacked data set: ``counts`` (name -> number) and
    ``unreadable`` files as ``(path, reason)``."""

    counts: dict[str, int]
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def checked_images(paths: list[str]) -> list[tuple[str, str]]:
    """``(path, reason)`` of each file whose image header cannot be read."""
    bad = []
    with quiet_pil_warnings():
        for p in paths:
            try:
                check_image(p)
            except DataError as e:
                bad.append((p, str(e).removeprefix(f"{p}: ")))
    return bad


def holds(name: str) -> Callable[[Path], bool]:
    def check(folder: Path) -> bool:
        return (folder / name).is_dir()
    return check


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
