"""Magnification pair sampling: which two magnifications of a sample form a positive pair.

The paper's three strategies differ in how much a human fixes (human prior, HP) and how much
the method may choose (degrees of freedom, DoF). In all of them view 1 and view 2 have
different magnifications (the paper's guard against collapse).

==============  ========================================  ====
strategy        rule                                      DoF
==============  ========================================  ====
fixed (FP)      always (200X, 400X)                       0
ordered (OP)    first uniform; 40→100, 100→200,            1
                200→400, 400→200
random (RP)     two distinct magnifications, uniform      2
continuous      two relative magnifications (scales),     2
                log-uniform in ``scale_range``, ratio
                at least ``min_ratio``
==============  ========================================  ====

Sources without BreakHis's four magnifications (synthetic zoom of single-scale images,
whole-slide pyramids) take scales instead of indices: :meth:`PairSampler.sample_scales`
returns relative magnifications (1 = the lowest). The discrete strategies map the
magnifications to :data:`MAGNIFICATION_SCALES` (40X = 1, 100X = 2.5, 200X = 5, 400X = 10),
so FP, OP and RP are the continuous sampler restricted to those four points (and to
their rules); :func:`relative_scale` is the per-pair ratio that can be logged.

Magnifications are handled as indices into :data:`MAGNIFICATIONS`.

Example:
    >>> import numpy as np
    >>> sampler = create_pair_sampler("ordered")
    >>> first, second = sampler.sample(4, np.random.default_rng(0))
    >>> bool((first != second).all())
    True
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from mpcs.core.errors import ConfigError
from mpcs.core.vocab import CONTINUOUS, STRATEGY_ALIASES

# The ordered-pair lookup table (the authors' code repeated 200->400 in its last branch).
ORDERED_NEXT = {0: 1, 1: 2, 2: 3, 3: 2}
#: Relative magnification of each of :data:`MAGNIFICATIONS` (40X = 1).
MAGNIFICATION_SCALES = np.array([1.0, 2.5, 5.0, 10.0])


class PairSampler(ABC):
    """Draws ``n`` (first, second) magnification index pairs with ``first != second``."""

    name: str

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return two int64 arrays of shape [n] with values in 0..3."""

    def sample_scales(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Two float64 arrays [n] of relative magnifications (40X = 1, see
        :data:`MAGNIFICATION_SCALES`)."""
        first, second = self.sample(n, rng)
        return MAGNIFICATION_SCALES[first], MAGNIFICATION_SCALES[second]

    def eligible(self, present: np.ndarray) -> np.ndarray:
        """Which samples can give this strategy a pair: bool ``[n]`` from the magnifications
        each sample has, bool ``[n, 4]`` (columns in :data:`MAGNIFICATIONS` order)."""
        raise ConfigError(f"pair strategy {self.name!r} needs samples at all four "
                          f"magnifications (pairs.complete_only=true)")

    def sample_present(self, present: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
        """Pairs for samples with only some magnifications: ``present`` bool ``[n, 4]`` (every
        row :meth:`eligible`) -> two int64 arrays ``[n]`` of magnifications each row has."""
        raise ConfigError(f"pair strategy {self.name!r} needs samples at all four "
                          f"magnifications (pairs.complete_only=true)")


def _uniform_choice(allowed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column index per row of bool ``[n, k]``, uniform among the row's True entries
    (every row has one)."""
    counts = allowed.sum(axis=1)
    pick = np.floor(rng.random(len(allowed)) * counts).astype(np.int64)
    # the (pick + 1)-th True entry of each row
    return (np.cumsum(allowed, axis=1) <= pick[:, None]).sum(axis=1)


class FixedPair(PairSampler):
    name = "fixed"

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.full(n, 2, dtype=np.int64), np.full(n, 3, dtype=np.int64)

    def eligible(self, present: np.ndarray) -> np.ndarray:
        return present[:, 2] & present[:, 3]

    def sample_present(self, present: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
        return self.sample(len(present), rng)


class OrderedPair(PairSampler):
    """First magnification uniform, the second from the lookup table; a sample with only
    some magnifications draws its first uniformly among those whose successor it has."""

    name = "ordered"
    _table = np.array([ORDERED_NEXT[i] for i in range(4)], dtype=np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        first = rng.integers(0, 4, n, dtype=np.int64)
        return first, self._table[first]

    def _starts(self, present: np.ndarray) -> np.ndarray:
        return present & present[:, self._table]

    def eligible(self, present: np.ndarray) -> np.ndarray:
        return self._starts(present).any(axis=1)

    def sample_present(self, present: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
        first = _uniform_choice(self._starts(present), rng)
        return first, self._table[first]


class RandomPair(PairSampler):
    """Two distinct magnifications, uniform; for a sample with only some magnifications,
    uniform among those it has."""

    name = "random"

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        first = rng.integers(0, 4, n, dtype=np.int64)
        # Uniform over the three other magnifications: shift by 1..3 modulo 4.
        second = (first + rng.integers(1, 4, n, dtype=np.int64)) % 4
        return first, second

    def eligible(self, present: np.ndarray) -> np.ndarray:
        return present.sum(axis=1) >= 2

    def sample_present(self, present: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
        first = _uniform_choice(present, rng)
        rest = present.copy()
        rest[np.arange(len(rest)), first] = False
        return first, _uniform_choice(rest, rng)


class ContinuousPair(PairSampler):
    """Two relative magnifications drawn log-uniformly from ``scale_range``, uniform over the
    pairs whose ratio is at least ``min_ratio`` (rejection sampling), so the two views never
    share a magnification (the paper's guard against collapse).

    Example:
        >>> s1, s2 = ContinuousPair((1.0, 8.0), 1.5).sample_scales(5, np.random.default_rng(0))
        >>> bool((np.maximum(s1 / s2, s2 / s1) >= 1.5).all())
        True
    """

    name = "continuous"

    def __init__(self, scale_range: tuple[float, float] = (1.0, 10.0), min_ratio: float = 1.25
                 ) -> None:
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo < hi:
            raise ConfigError(f"pairs.scale_range must be [min, max] with 0 < min < max, got "
                              f"{list(scale_range)}")
        if not min_ratio >= 1:
            raise ConfigError(f"pairs.min_ratio must be >= 1, got {min_ratio}")
        if hi / lo <= min_ratio:
            raise ConfigError(f"pairs.scale_range {list(scale_range)} spans a ratio of "
                              f"{hi / lo:.3g}, not more than pairs.min_ratio={min_ratio}: no pair "
                              f"of distinct magnifications fits; widen the range")
        self.scale_range, self.min_ratio = (lo, hi), float(min_ratio)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise ConfigError("pairs.strategy=continuous needs a source that can read any scale "
                          "(data.source=zoom or wsi); a BreakHis folder has only the four "
                          "magnifications 40X..400X (use fixed, ordered or random)")

    def sample_scales(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.log(self.scale_range[0]), np.log(self.scale_range[1])
        gap = np.log(self.min_ratio)
        a, b = np.empty(n), np.empty(n)
        todo = np.arange(n)
        while todo.size:
            x, y = rng.uniform(lo, hi, (2, todo.size))
            ok = np.abs(x - y) >= gap
            a[todo[ok]], b[todo[ok]] = x[ok], y[ok]
            todo = todo[~ok]
        return np.exp(a), np.exp(b)


def relative_scale(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Per-pair magnification ratio ``second / first`` (> 1: view 2 is zoomed in)."""
    return np.asarray(second, dtype=np.float64) / np.asarray(first, dtype=np.float64)


#: The pair strategies by name (:data:`mpcs.core.vocab.STRATEGIES`, their short names, and
#: ``continuous``).
_BY_STRATEGY: dict[str, type[PairSampler]] = {"fixed": FixedPair, "ordered": OrderedPair,
                                              "random": RandomPair}
SAMPLERS: dict[str, type[PairSampler]] = {
    **_BY_STRATEGY, **{alias: _BY_STRATEGY[name] for alias, name in STRATEGY_ALIASES.items()},
    CONTINUOUS: ContinuousPair}


def create_pair_sampler(name: str, scale_range: tuple[float, float] = (1.0, 10.0),
                        min_ratio: float = 1.25) -> PairSampler:
    """Create a sampler by name: ``fixed|ordered|random`` (or ``fp|op|rp``) or
    ``continuous`` (which takes ``scale_range`` and ``min_ratio``)."""
    key = name.lower()
    if key == "continuous":
        return ContinuousPair(scale_range, min_ratio)
    try:
        return SAMPLERS[key]()
    except KeyError:
        raise ConfigError(
            f"unknown pair strategy {name!r}; choose one of fixed, ordered, random "
            "(or fp, op, rp), continuous") from None


class SameImagePair:
    """SimCLR's pairs on BreakHis: one magnification per sample (uniform), used for BOTH
    views, so the two views differ only by their own augmentations."""

    name = "same-image"

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        first = rng.integers(0, 4, n, dtype=np.int64)
        return first, first.copy()

    def eligible(self, present: np.ndarray) -> np.ndarray:
        return present.any(axis=1)

    def sample_present(self, present: np.ndarray, rng: np.random.Generator
                       ) -> tuple[np.ndarray, np.ndarray]:
        first = _uniform_choice(present, rng)
        return first, first.copy()


class ScaleViewSampler:
    """Pairs for sources read at any scale (zoom, whole slides): two float arrays
    ``[n, 3]`` of ``(relative magnification, u, v)``; ``(u, v)`` in [0, 1) is the common
    centre as a fraction of the range where the wider view fits, the same in both rows.

    Everything is drawn from the run's generator (checkpointed), so a resumed run draws the
    same views; the arrays slice along the pair axis like index arrays (per-rank shards).

    Args:
        base: the scale sampler (:class:`ContinuousPair` or a discrete one, which gives
            the scales of :data:`MAGNIFICATION_SCALES`).
        same_image: both views at the first view's scale (SimCLR).
    """

    def __init__(self, base: PairSampler, same_image: bool = False) -> None:
        self.base, self.same_image = base, same_image
        self.name = f"{base.name}-scales" + ("-same-image" if same_image else "")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        s1, s2 = self.base.sample_scales(n, rng)
        if self.same_image:
            s2 = s1.copy()
        uv = rng.uniform(0.0, 1.0, (n, 2))
        return np.column_stack([s1, uv]), np.column_stack([s2, uv])


def scales_of(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relative magnifications of a step's pairs, whatever the sampler: BreakHis indices are
    mapped through :data:`MAGNIFICATION_SCALES`; ``[n, 3]`` view specs give column 0."""
    def one(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 2:
            return x[:, 0].astype(np.float64)
        return MAGNIFICATION_SCALES[x.astype(np.int64)]
    return one(first), one(second)


class RowSampler:
    """What the training loop draws each epoch for a data source of ``n`` rows (samples):
    the order of the rows (:meth:`epoch_order`) and the pair of each row of a step
    (:meth:`sample_rows`). This base draws a permutation and asks ``base`` (any sampler
    with ``sample(n, rng)``) for pairs, whatever the rows; sources whose rows differ
    (samples with only some magnifications, several sources in one run) subclass it.
    """

    def __init__(self, base: PairSampler | SameImagePair | ScaleViewSampler) -> None:
        self.base = base
        self.name = base.name

    def epoch_order(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(n)

    def sample_rows(self, index: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
        return self.base.sample(len(index), rng)


class PresentMagnifications(RowSampler):
    """Pairs for samples that lack some magnifications (``pairs.complete_only=false``): each
    row draws among the magnifications it has (:meth:`PairSampler.sample_present`).

    Args:
        base: a discrete strategy (or :class:`SameImagePair`).
        present: bool ``[n, 4]``, which of :data:`MAGNIFICATIONS` each row has; every row
            must be eligible for ``base``.
    """

    def __init__(self, base: PairSampler | SameImagePair, present: np.ndarray) -> None:
        super().__init__(base)
        self.present = np.asarray(present, dtype=bool)
        if not self.base.eligible(self.present).all():
            raise ValueError(f"some rows have no {self.name} pair; keep only eligible samples")

    def sample_rows(self, index: np.ndarray, rng: np.random.Generator
                    ) -> tuple[np.ndarray, np.ndarray]:
        return self.base.sample_present(self.present[np.asarray(index)], rng)


def as_row_sampler(sampler: RowSampler | PairSampler | SameImagePair | ScaleViewSampler
                   ) -> RowSampler:
    """``sampler`` itself if it is a :class:`RowSampler`, else one that wraps it."""
    return sampler if isinstance(sampler, RowSampler) else RowSampler(sampler)
