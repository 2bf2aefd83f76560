"""Data sets made ready for a run that needs several (``mpcs reproduce``): each one installed
(downloaded, checked, unpacked) or found already verified, from the official sources or as
a synthetic stand-in packed like the official archive.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mpcs.core.errors import DataError, DownloadError
from mpcs.core.io import atomic_write_text
from mpcs.data.datasets import DOWNLOADS
from mpcs.data.download.fetch import DEFAULT_FETCH, FetchSettings
from mpcs.data.download.install import install_dataset, installed
from mpcs.data.download.source import DatasetSource
from mpcs.data.synth.archive import SynthSizes, synthetic_archive

Say = Callable[[str], None]


@dataclass(frozen=True)
class DataOptions:
    """Where and how the data are found: ``root`` (``DATA``), ``source`` (official or
    synthetic), ``allow_differences`` (counts that differ from the expected ones),
    ``settings`` (network), ``sizes`` (synthetic sets)."""

    root: Path
    source: str
    allow_differences: bool = False
    settings: FetchSettings = DEFAULT_FETCH
    sizes: SynthSizes = SynthSizes()


def _synthetic_source(name: str, opts: DataOptions, say: Say
                      ) -> tuple[DatasetSource, Path, Path]:
    """The registry entry of a synthetic stand-in and its archive (made once)."""
    folder = opts.root / "synthetic"
    meta = folder / f"{name}.expected.json"
    archive = folder / DOWNLOADS[name].archive
    if not (meta.is_file() and archive.is_file()):
        say(f"writing a synthetic {name} set packed as {archive.name}")
        archive, expected = synthetic_archive(name, folder, opts.sizes)
        atomic_write_text(meta, json.dumps(expected, indent=1))
    expected = json.loads(meta.read_text())
    title = f"{DOWNLOADS[name].title} -- SYNTHETIC stand-in made by mpcs"
    return replace(DOWNLOADS[name], url=None, expected=expected, title=title), archive, folder


def prepare_data(names: Sequence[str], opts: DataOptions, progress: bool, say: Say
                 ) -> dict[str, Path]:
    """``{name: the folder its reader gets}``: each data set installed (downloaded, checked,
    unpacked) or found verified under ``opts.root`` (synthetic ones under ``root/synthetic``,
    so that their recorded checksums never meet the official archives)."""
    roots = {}
    for name in names:
        if opts.source == "synthetic":
            source, archive, folder = _synthetic_source(name, opts, say)
        else:
            source, archive, folder = DOWNLOADS[name], None, opts.root
        done = installed(source, folder)
        try:
            result = done or install_dataset(source, folder, archive=archive,
                                             settings=opts.settings,
                                             allow_differences=opts.allow_differences,
                                             progress=progress, say=say)
        except DownloadError as e:
            if "--from ARCHIVE" not in str(e):
                raise
            raise DownloadError(f"{e} (here: `mpcs download {name} --to {folder} --from "
                                "ARCHIVE`, then this command again)") from None
        say(result.report() if done is None else
            f"{name}: verified before, in {result.root}")
        if not result.usable:
            raise DataError(f"{name}: the data in {result.root} differ from the expected "
                            f"numbers ({len(result.differences)} count(s), "
                            f"{len(result.unreadable)} unreadable file(s); listed above); add "
                            "--allow-differences to use them as they are")
        roots[name] = result.root
    return roots
