"""Reader for the UCSB Bio-Segmentation Benchmark breast cancer cell images (BCC).

58 H&E TIFF images of 896x768 pixels (32 benign, 26 malignant), named
``ytma<N>_<date>_<benign|malignant><K>_ccd.tif`` (for example
``ytma10_010704_benign1_ccd.tif``); the label is in the name. Every such file under the
given folder (searched recursively) is used; other files are ignored.

Example:
    >>> images = scan_bcc("/data/bcc")                               # doctest: +SKIP
    >>> images["label"].value_counts().to_dict()                     # doctest: +SKIP
    {'benign': 32, 'malignant': 26}
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pandas as pd

from mpcs.core.errors import DataError
from mpcs.data.download.source import Census, DatasetSource, checked_images
from mpcs.data.images import is_stray_file
from mpcs.data.patches import image_manifest

log = logging.getLogger(__name__)

#: Classes in logit order; malignant is the positive class of precision and recall.
BCC_CLASSES: tuple[str, ...] = ("benign", "malignant")
BCC_IMAGE_SIZE = (896, 768)
NAME_PATTERN = re.compile(r"^ytma\d+_[^_]+_(benign|malignant)\d*_ccd\.tiff?$", re.IGNORECASE)


def parse_bcc_name(name: str) -> str:
    """The label of a BCC file name.

    Example:
        >>> parse_bcc_name("ytma12_010804_malignant3_ccd.tif")
        'malignant'
    """
    m = NAME_PATTERN.match(name)
    if m is None:
        raise ValueError(f"{name!r} is not a BCC image name (ytma*_<benign|malignant>*_ccd.tif)")
    return m.group(1).lower()


def bcc_label(path: Path) -> str | None:
    """The label of a file with a BCC name, None for any other name."""
    try:
        return parse_bcc_name(path.name)
    except ValueError:
        return None


def scan_bcc(root: str | os.PathLike[str]) -> pd.DataFrame:
    """Image table of a BCC folder (columns of :func:`mpcs.data.patches.image_manifest`).

    Raises:
        DataError: the folder is missing or holds no ``ytma*_ccd.tif`` image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    paths, labels, other = [], [], 0
    for p in sorted(root.rglob("*")):
        if not p.is_file() or is_stray_file(p.name):
            continue
        try:
            labels.append(parse_bcc_name(p.name))
            paths.append(p)
        except ValueError:
            other += p.suffix.lower() in (".tif", ".tiff")
    if not paths:
        raise DataError(f"{root}: no BCC image (ytma*_<benign|malignant>*_ccd.tif) found")
    if other:
        log.info("bcc: ignored %d .tif file(s) whose names do not follow the BCC pattern", other)
    frame = image_manifest(paths, labels, root)
    frame.attrs["dataset"] = "bcc"
    return frame


# --------------------------------------------------------------------------- download


def count_bcc(root: Path) -> Census:
    """BCC images (``ytma*_<class>*_ccd.tif``) in total and per class."""
    frame = scan_bcc(root)
    counts = {"images": len(frame)}
    counts.update({c: int((frame["label"] == c).sum()) for c in BCC_CLASSES})
    return Census(counts, checked_images(frame["path"].astype(str).tolist()))


def _holds_bcc_images(folder: Path) -> bool:
    return any(NAME_PATTERN.match(p.name) for p in folder.iterdir() if p.is_file())


BCC_SOURCE = DatasetSource(
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
)
