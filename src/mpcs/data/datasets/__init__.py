"""The labelled data sets: one registry, one manifest schema.

Every data set's reader gives a *manifest*, one row per image, with the columns

=================  ========================================================================
``path``           the image file
``patient_id``     what a split keeps together: the patient (BreakHis), or the image itself
                   where a data set has no patient ids (BACH, UCSB BCC: ``split_by="image"``)
``label``          the class (one of the data set's ``classes``)
``subtype``        the stratum of a split: the tumour type (BreakHis), else the label
``magnification``  ``40X`` ... ``400X`` (BreakHis), else ``-``
=================  ========================================================================

and, for image-level data sets, ``image_id`` (the path relative to the data set's root, which
the patch tables and the majority vote group by; see :func:`mpcs.data.patches.image_manifest`).

Adding a data set: one file here with its reader (and, if it can be downloaded, its
:class:`~mpcs.data.download.source.DatasetSource`), and one line in :data:`DATASETS`.

Example:
    >>> sorted(DATASETS)
    ['bach', 'bcc', 'breakhis']
    >>> DATASETS["bcc"].positive
    'malignant'
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from mpcs.core.vocab import CLASSES, POSITIVE_CLASS
from mpcs.data.datasets.bach import BACH_CLASSES, BACH_SOURCE, bach_label, scan_bach
from mpcs.data.datasets.bcc import BCC_CLASSES, BCC_SOURCE, bcc_label, scan_bcc
from mpcs.data.datasets.breakhis import scan_breakhis
from mpcs.data.datasets.breakhis_names import breakhis_fields
from mpcs.data.datasets.breakhis_summary import BREAKHIS_SOURCE
from mpcs.data.download.source import DatasetSource

__all__ = ["DATASETS", "DOWNLOADS", "Dataset", "label_from_name", "patch_datasets"]


@dataclass(frozen=True)
class Dataset:
    """One labelled data set.

    Attributes:
        name: registry key (``--dataset``, ``dataset:`` of an experiment, ``mpcs download``).
        scan: reads the data set's folder into a manifest (module docstring).
        classes: the classes, in the logit order of a classifier.
        positive: the class binary precision and recall score; None: macro averages.
        split_by: ``patient`` (whole-image folds, the BreakHis grid) or ``image`` (no patient
            ids: large images cut into patches, the transfer grid).
        download: where ``mpcs download`` fetches it, or None.
        label_of: the class of one image file from its name (or folder), None when the
            name is not one of this data set's; what ``embed`` and ``predict`` write as
            ``label`` for files outside a scanned folder.
    """

    name: str
    scan: Callable[[str | Path], pd.DataFrame]
    classes: tuple[str, ...]
    positive: str | None
    split_by: str
    download: DatasetSource | None = None
    label_of: Callable[[Path], str | None] | None = None


#: The registered data sets.
DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("breakhis", scan_breakhis, CLASSES, POSITIVE_CLASS, "patient", BREAKHIS_SOURCE,
            lambda path: breakhis_fields(path)["label"]),
    Dataset("bach", scan_bach, BACH_CLASSES, None, "image", BACH_SOURCE, bach_label),
    Dataset("bcc", scan_bcc, BCC_CLASSES, POSITIVE_CLASS, "image", BCC_SOURCE, bcc_label),
)}

#: What ``mpcs download`` (and ``mpcs reproduce``) can fetch, by data set name.
DOWNLOADS: dict[str, DatasetSource] = {name: d.download for name, d in DATASETS.items()
                                       if d.download is not None}


def label_from_name(path: str | Path) -> str | None:
    """The class of an image file by the naming of the first registered data set that
    knows its name (BreakHis file names, UCSB BCC ``ytma*_<class>*_ccd.tif``, a BACH photo
    in its class folder); None otherwise.

    Example:
        >>> label_from_name("bcc/ytma12_010804_malignant3_ccd.tif")
        'malignant'
        >>> label_from_name("Photos/InSitu/is012.tif"), label_from_name("x/a.png")
        ('InSitu', None)
    """
    for d in DATASETS.values():
        label = d.label_of(Path(path)) if d.label_of is not None else None
        if label is not None:
            return label
    return None


def patch_datasets() -> dict[str, Dataset]:
    """The data sets of the patch-based transfer grid (``split_by="image"``)."""
    return {name: d for name, d in DATASETS.items() if d.split_by == "image"}
