"""The names of the domain, in one place.

Names with a registry of their own are listed where they are registered, and only there:
pre-training methods in :mod:`mpcs.methods` (``list_methods()``), pair samplers in
:mod:`mpcs.data.pairs.samplers`, data sets in :mod:`mpcs.data.datasets`, encoders in
:mod:`mpcs.models.encoders`, metrics in :mod:`mpcs.metrics`. This module holds the fixed
vocabulary every layer shares.

**Metric names.** ``ila`` / ``pla`` are the paper's BreakHis metrics, image- and
patient-level accuracy (a patient weighs the same whatever its image count). BACH and UCSB
BCC have no patient ids, so their reports say ``accuracy``, image-wise (majority vote over an
image's patches) or patch-wise; it is the same computation as ``ila`` on other rows. The
metric functions and the full list of names are in :mod:`mpcs.metrics`.

Example:
    >>> MAGNIFICATIONS
    ('40X', '100X', '200X', '400X')
    >>> strategy_label("op")
    'MPCS-OP'
"""

from __future__ import annotations

#: BreakHis' four magnifications, lowest first (also the order of every table).
MAGNIFICATIONS: tuple[str, ...] = ("40X", "100X", "200X", "400X")
#: A choice of magnification that also takes every image.
ALL = "all"
#: The binary BreakHis classes, in logit order (malignant = class 1, the positive class).
CLASSES: tuple[str, ...] = ("benign", "malignant")
POSITIVE_CLASS = "malignant"

#: The paper's three pair strategies (the pre-trained variants of every grid) ...
STRATEGIES: tuple[str, ...] = ("fixed", "ordered", "random")
#: ... their short names ...
STRATEGY_ALIASES: dict[str, str] = {"fp": "fixed", "op": "ordered", "rp": "random"}
#: ... and the sampler of zoom and whole-slide sources (any relative scale, not a BreakHis
#: magnification).
CONTINUOUS = "continuous"
#: The paper's names of the pre-trained variants, as tables and pictures show them.
STRATEGY_LABELS: dict[str, str] = {"fixed": "MPCS-FP", "ordered": "MPCS-OP",
                                   "random": "MPCS-RP"}
#: What each strategy pairs (model cards).
STRATEGY_DESCRIPTIONS: dict[str, str] = {
    "fixed": "Fixed Pair (FP): (200X, 400X)",
    "ordered": "Ordered Pair (OP): first uniform, second 40->100->200->400->200",
    "random": "Random Pair (RP): two distinct magnifications, uniform",
    "continuous": "continuous scales (zoom or whole-slide source)"}

#: Initialisations of the baseline every grid compares against, and their table names.
BASELINE_LABELS: dict[str, str] = {"imagenet": "ImageNet", "none": "Random init"}


def canonical_strategy(name: str) -> str:
    """``fp|op|rp`` -> ``fixed|ordered|random``; other names unchanged."""
    return STRATEGY_ALIASES.get(name.lower(), name.lower())


def strategy_label(name: str) -> str:
    """``MPCS-FP``/``-OP``/``-RP`` for a strategy or its short name; other names unchanged."""
    return STRATEGY_LABELS.get(canonical_strategy(name), name)
