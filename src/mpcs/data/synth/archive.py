"""Synthetic stand-ins packed as the official archives: ``BreaKHis_v1.tar.gz`` (BreakHis),
``ICIAR2018_BACH_Challenge.zip`` (BACH) and ``BreastCancerCell_dataset.zip`` (UCSB BCC).

The images come from the project's writers (:func:`mpcs.data.synth.write_breakhis`,
:func:`mpcs.data.synth_transfer.write_bach`, :func:`~mpcs.data.synth_transfer.write_bcc`),
so ``mpcs reproduce --scale cpu-tiny`` and the tests can run the whole download path
(archive -> checksum -> safe extraction -> layout fix-up -> verification) without the real
data. Archives are byte-for-byte deterministic (fixed member times and order, no gzip time
stamp), so the same settings give the same SHA-256.

Example:
    >>> path, expected = synthetic_archive("bcc", "/tmp/arch", SynthSizes())  # doctest: +SKIP
    >>> expected["images"]
    8
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mpcs.data.datasets import DOWNLOADS
from mpcs.data.synth.breakhis import SynthConfig, write_breakhis
from mpcs.data.synth.transfer import write_bach, write_bcc

__all__ = ["SynthSizes", "pack_tar_gz", "pack_zip", "synthetic_archive"]

#: Files of the writers that are not part of the official layouts.
_SKIP = ("mpcs-synth.json",)
#: The folder the BCC images sit in inside the archive.
BCC_FOLDER = "BreastCancerCell_dataset"


@dataclass(frozen=True)
class SynthSizes:
    """Sizes of the synthetic sets (small enough for a CPU test)."""

    breakhis_patients: int = 8
    breakhis_samples: int = 2
    breakhis_image: tuple[int, int] = (64, 42)
    bach_per_class: int = 4
    bach_image: tuple[int, int] = (128, 96)
    bcc_per_class: int = 4
    bcc_image: tuple[int, int] = (128, 96)
    seed: int = 0


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _SKIP)


def pack_tar_gz(folder: str | os.PathLike[str], arcname: str,
                out: str | os.PathLike[str]) -> Path:
    """``folder`` as a gzip tar whose members sit under ``arcname/`` (deterministic)."""
    folder, out = Path(folder), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
        files = _files(folder)
        dirs = sorted({d for p in files for d in p.relative_to(folder).parents}, key=str)
        dirs = [folder / d for d in dirs]
        for path in dirs + files:
            rel = path.relative_to(folder).as_posix()
            info = tar.gettarinfo(path, arcname=arcname if rel == "." else f"{arcname}/{rel}")
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if info.isfile():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return out


def pack_zip(folder: str | os.PathLike[str], arcname: str,
             out: str | os.PathLike[str]) -> Path:
    """``folder`` as a zip whose members sit under ``arcname/`` (deterministic)."""
    folder, out = Path(folder), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in _files(folder):
            info = zipfile.ZipInfo(f"{arcname}/{path.relative_to(folder).as_posix()}",
                                   date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    return out


def _write(name: str, tmp: Path, sizes: SynthSizes) -> tuple[Path, str]:
    """Write the synthetic set into ``tmp``: ``(its folder, the folder name in the archive)``."""
    if name == "breakhis":
        cfg = SynthConfig(patients=sizes.breakhis_patients,
                          samples_per_patient=sizes.breakhis_samples,
                          image_size=sizes.breakhis_image, seed=sizes.seed)
        return write_breakhis(tmp, cfg, progress=False, workers=1), "BreaKHis_v1"
    if name == "bach":
        root = write_bach(tmp, sizes.bach_per_class, sizes.bach_image, sizes.seed, False)
        return root, "ICIAR2018_BACH_Challenge"
    if name == "bcc":
        return write_bcc(tmp, sizes.bcc_per_class, sizes.bcc_image, sizes.seed, False), \
            BCC_FOLDER
    raise ValueError(f"unknown data set {name!r} (breakhis, bach or bcc)")


def synthetic_archive(name: str, out_dir: str | os.PathLike[str], sizes: SynthSizes
                      ) -> tuple[Path, dict[str, int]]:
    """Write the synthetic ``name`` set and pack it as the official archive in ``out_dir``.

    Returns the archive and the counts the registry's census finds in the set (the
    expectations a verification of this archive must meet).
    """
    source = DOWNLOADS[name]
    out = Path(out_dir) / source.archive
    with tempfile.TemporaryDirectory(prefix=f"mpcs-synth-{name}-") as tmp:
        root, arcname = _write(name, Path(tmp), sizes)
        expected = dict(source.count(root).counts)
        packed = Path(tmp) / out.name
        (pack_tar_gz if out.name.endswith(".tar.gz") else pack_zip)(root, arcname, packed)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(packed, out)
    return out, expected
