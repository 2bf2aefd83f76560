"""Patient-level, subtype-stratified cross-validation splits and nested label fractions.

The protocol (method notes, "The protocol"): 5-fold cross-validation at PATIENT level, so no
patient's images are on two sides of a fold; each fold tests on 20% of the patients and
splits the other 80% into train (60% of all) and validation (20% of all), stratified by
tumour subtype. Where the subtypes are too small to stratify (fewer patients than folds),
the benign/malignant label is used instead and a note says so.

Limited-label fine-tuning uses *label fractions* of a fold's training images: for each
stratum (subtype or label, times magnification) one seeded priority order of its images is
drawn once, and the fraction ``f`` takes the first ``ceil(f * n_stratum)`` images of every
stratum. The 5% set is therefore inside the 10% set, and so on, by construction.

The package: :mod:`~mpcs.data.splits.manifest` (relative paths, fingerprint),
:mod:`~mpcs.data.splits.model` (the :class:`Splits` data, its checks and its file) and
:mod:`~mpcs.data.splits.make` (:func:`make_splits`).

A :class:`Splits` object is saved as human-readable JSON and checked on load against the
data set's fingerprint (relative image paths, patient ids and labels; not file contents).

Example:
    >>> from mpcs.data.breakhis import scan_breakhis
    >>> manifest = scan_breakhis("/data/BreaKHis_v1")             # doctest: +SKIP
    >>> splits = make_splits(manifest, folds=5, seed=0)             # doctest: +SKIP
    >>> splits.fold(0).test[:2]                                     # doctest: +SKIP
    ['14-10147', '14-13200']
    >>> len(splits.labelled_images(0, 0.2))                         # doctest: +SKIP
    958
    >>> splits.save("runs/splits.json")                             # doctest: +SKIP
    >>> Splits.load("runs/splits.json", manifest) == splits         # doctest: +SKIP
    True
"""

from mpcs.data.splits.make import STRATIFY_CHOICES, make_splits
from mpcs.data.splits.manifest import dataset_fingerprint, relative_paths
from mpcs.data.splits.model import (
    DEFAULT_LABEL_FRACTIONS,
    PARTS,
    SPLITS_FORMAT,
    SPLITS_VERSION,
    Fold,
    FoldSplit,
    Splits,
    check_splits,
)

__all__ = [
    "DEFAULT_LABEL_FRACTIONS",
    "PARTS",
    "SPLITS_FORMAT",
    "SPLITS_VERSION",
    "STRATIFY_CHOICES",
    "Fold",
    "FoldSplit",
    "Splits",
    "check_splits",
    "dataset_fingerprint",
    "make_splits",
    "relative_paths",
]
