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
==============  ========================================  ====

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

from mpcs.errors import ConfigError

MAGNIFICATIONS = ("40X", "100X", "200X", "400X")
# The ordered-pair lookup table (the authors' code repeated 200->400 in its last branch).
ORDERED_NEXT = {0: 1, 1: 2, 2: 3, 3: 2}


class PairSampler(ABC):
    """Draws ``n`` (first, second) magnification index pairs with ``first != second``."""

    name: str

    @abstractmethod
    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return two int64 arrays of shape [n] with values in 0..3."""


class FixedPair(PairSampler):
    name = "fixed"

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return np.full(n, 2, dtype=np.int64), np.full(n, 3, dtype=np.int64)


class OrderedPair(PairSampler):
    name = "ordered"
    _table = np.array([ORDERED_NEXT[i] for i in range(4)], dtype=np.int64)

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        first = rng.integers(0, 4, n, dtype=np.int64)
        return first, self._table[first]


class RandomPair(PairSampler):
    name = "random"

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        first = rng.integers(0, 4, n, dtype=np.int64)
        # Uniform over the three other magnifications: shift by 1..3 modulo 4.
        second = (first + rng.integers(1, 4, n, dtype=np.int64)) % 4
        return first, second


_SAMPLERS: dict[str, type[PairSampler]] = {
    "fixed": FixedPair, "fp": FixedPair,
    "ordered": OrderedPair, "op": OrderedPair,
    "random": RandomPair, "rp": RandomPair,
}


def create_pair_sampler(name: str) -> PairSampler:
    """Create a sampler by name: ``fixed|ordered|random`` (or ``fp|op|rp``)."""
    try:
        return _SAMPLERS[name.lower()]()
    except KeyError:
        raise ConfigError(
            f"unknown pair strategy {name!r}; choose one of fixed, ordered, random "
            "(or fp, op, rp)") from None
