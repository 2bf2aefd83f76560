"""Reader for BACH (ICIAR 2018 Grand Challenge on BreAst Cancer Histology) microscopy photos.

Official layout (the training part of the challenge archive)::

    ICIAR2018_BACH_Challenge/Photos/
        Normal/n001.tif ...      Benign/b001.tif ...
        InSitu/is001.tif ...     Invasive/iv001.tif ...
        microscopy_ground_truth.csv          (optional: "b001.tif,Benign" per line)

100 RGB TIFF photos of 2048x1536 pixels per class, four classes. The label of a photo is the
folder it is in; where ``microscopy_ground_truth.csv`` is present it must agree (a photo it
lists in another class, or does not list, is an error naming the photo).

Example:
    >>> images = scan_bach("/data/ICIAR2018_BACH_Challenge")      # doctest: +SKIP
    >>> images["label"].value_counts().to_dict()                    # doctest: +SKIP
    {'Benign': 100, 'InSitu': 100, 'Invasive': 100, 'Normal': 100}
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import pandas as pd

from mpcs.core.errors import DataError
from mpcs.data.download.source import Census, DatasetSource, checked_images
from mpcs.data.images import is_stray_file
from mpcs.data.patches import image_manifest

#: The four classes, in the logit order of a BACH classifier.
BACH_CLASSES: tuple[str, ...] = ("Normal", "Benign", "InSitu", "Invasive")
GROUND_TRUTH = "microscopy_ground_truth.csv"
BACH_IMAGE_SIZE = (2048, 1536)


def find_photos(root: str | os.PathLike[str]) -> Path:
    """The ``Photos`` folder: ``root`` itself, ``root/Photos`` or
    ``root/ICIAR2018_BACH_Challenge/Photos`` (the first that holds the class folders)."""
    root = Path(root)
    for cand in (root, root / "Photos", root / "ICIAR2018_BACH_Challenge" / "Photos"):
        if cand.is_dir() and any((cand / c).is_dir() for c in BACH_CLASSES):
            return cand
    raise DataError(f"{root}: no BACH photos found (expected Photos/{{{','.join(BACH_CLASSES)}}}"
                    "/*.tif, as in ICIAR2018_BACH_Challenge)")


def read_ground_truth(path: Path) -> dict[str, str]:
    """``{file name: class}`` of ``microscopy_ground_truth.csv`` (no header line)."""
    table: dict[str, str] = {}
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2:
                raise DataError(f"{path}: line {i}: expected 'file.tif,Class', got {row!r}")
            name, label = row[0].strip(), row[1].strip()
            if label not in BACH_CLASSES:
                raise DataError(f"{path}: line {i}: unknown class {label!r} (expected one of "
                                f"{', '.join(BACH_CLASSES)})")
            table[name] = label
    return table


_PREFIXES = {"n": "Normal", "b": "Benign", "is": "InSitu", "iv": "Invasive"}
_PHOTO_NAME = re.compile(rf"^({'|'.join(_PREFIXES)})\d+\.tiff?$", re.IGNORECASE)


def bach_label(path: Path) -> str | None:
    """The class of a BACH photo named as in the archive and lying in its class folder
    (``Benign/b001.tif``); None for any other file."""
    m = _PHOTO_NAME.match(path.name)
    if m is None or _PREFIXES[m.group(1).lower()] != path.parent.name:
        return None
    return path.parent.name


def scan_bach(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Image table of a BACH ``Photos`` folder (see :func:`mpcs.data.patches.image_manifest`
    for the columns); ``image_id`` is ``<Class>/<file>``.

    Raises:
        DataError: no class folder, no photo, or a disagreement with the ground-truth CSV.
    """
    photos = find_photos(root)
    paths, labels = [], []
    for label in BACH_CLASSES:
        folder = photos / label
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix.lower() in (".tif", ".tiff") and not is_stray_file(p.name):
                paths.append(p)
                labels.append(label)
    if not paths:
        raise DataError(f"{photos}: the class folders hold no .tif photo")
    truth_file = photos / GROUND_TRUTH
    if truth_file.is_file():
        truth = read_ground_truth(truth_file)
        for p, label in zip(paths, labels, strict=True):
            if p.name not in truth:
                raise DataError(f"{p}: not listed in {truth_file}")
            if truth[p.name] != label:
                raise DataError(f"{p}: in folder {label} but {truth_file} says {truth[p.name]}")
    frame = image_manifest(paths, labels, photos)
    frame.attrs["dataset"] = "bach"
    return frame


# --------------------------------------------------------------------------- download


def count_bach(root: Path) -> Census:
    """Microscopy photos in total and per class (``Photos/<class>/*.tif``)."""
    frame = scan_bach(find_photos(root))
    counts = {"images": len(frame)}
    counts.update({c: int((frame["label"] == c).sum()) for c in BACH_CLASSES})
    return Census(counts, checked_images(frame["path"].astype(str).tolist()))


def _holds_bach_photos(folder: Path) -> bool:
    photos = folder / "Photos"
    return photos.is_dir() and any((photos / c).is_dir() for c in BACH_CLASSES)


BACH_SOURCE = DatasetSource(
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
)
