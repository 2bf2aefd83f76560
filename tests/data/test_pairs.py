"""Tests for mpcs.data.pairs: the fixed / ordered / random magnification pair strategies."""

from __future__ import annotations

import numpy as np
import pytest

from mpcs.core.errors import ConfigError
from mpcs.core.vocab import MAGNIFICATIONS
from mpcs.data.pairs.samplers import (
    ORDERED_NEXT,
    FixedPair,
    OrderedPair,
    RandomPair,
    create_pair_sampler,
)

N = 40_000
ALL_NAMES = ("fixed", "fp", "ordered", "op", "random", "rp", "Fixed", "OP", "Random")
# Chi-square critical values at p = 0.001 (a correct sampler fails 1 run in 1000; the seeds
# are fixed, so the outcome is deterministic anyway).
CHI2_CRIT_001 = {3: 16.266, 11: 31.264}


def draw(name: str, n: int = N, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    return create_pair_sampler(name).sample(n, np.random.default_rng(seed))


def chi_square_uniform(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_magnification_order_matches_the_paper() -> None:
    assert MAGNIFICATIONS == ("40X", "100X", "200X", "400X")


@pytest.mark.parametrize(
    ("name", "cls"),
    [("fixed", FixedPair), ("fp", FixedPair), ("FP", FixedPair),
     ("ordered", OrderedPair), ("op", OrderedPair), ("Ordered", OrderedPair),
     ("random", RandomPair), ("rp", RandomPair), ("RANDOM", RandomPair)],
)
def test_names_and_aliases_create_the_right_sampler(name: str, cls: type) -> None:
    assert type(create_pair_sampler(name)) is cls


@pytest.mark.parametrize("name", ALL_NAMES)
def test_views_always_differ_and_are_valid_indices(name: str) -> None:
    first, second = draw(name)
    for arr in (first, second):
        assert arr.shape == (N,)
        assert arr.dtype == np.int64
        assert arr.min() >= 0 and arr.max() <= 3
    assert (first != second).all()


@pytest.mark.parametrize("n", [0, 1, 7])
@pytest.mark.parametrize("name", ["fixed", "ordered", "random"])
def test_small_and_empty_batches(name: str, n: int) -> None:
    first, second = draw(name, n)
    assert first.shape == second.shape == (n,)
    assert (first != second).all()


@pytest.mark.parametrize("name", ["fixed", "fp"])
def test_fixed_is_always_200x_400x(name: str) -> None:
    first, second = draw(name)
    assert (first == 2).all() and (second == 3).all()
    assert MAGNIFICATIONS[2] == "200X" and MAGNIFICATIONS[3] == "400X"


@pytest.mark.parametrize("name", ["fixed", "fp"])
def test_fixed_does_not_depend_on_the_seed(name: str) -> None:
    a = create_pair_sampler(name).sample(100, np.random.default_rng(1))
    b = create_pair_sampler(name).sample(100, np.random.default_rng(2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["ordered", "op"])
def test_ordered_first_is_uniform(name: str) -> None:
    first, _ = draw(name, seed=11)
    counts = np.bincount(first, minlength=4)
    assert counts.sum() == N
    # Tolerance bound: each share within 0.015 of 1/4 (sd of a share is ~0.0022 here).
    assert np.abs(counts / N - 0.25).max() < 0.015
    assert chi_square_uniform(counts) < CHI2_CRIT_001[3]


def test_ordered_first_is_uniform_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    first, _ = draw("ordered", seed=12)
    result = stats.chisquare(np.bincount(first, minlength=4))
    assert result.pvalue > 0.001


@pytest.mark.parametrize("name", ["ordered", "op"])
def test_ordered_second_follows_the_paper_table(name: str) -> None:
    first, second = draw(name, seed=3)
    table = {"40X": "100X", "100X": "200X", "200X": "400X", "400X": "200X"}
    expected = np.array([MAGNIFICATIONS.index(table[m]) for m in MAGNIFICATIONS])
    assert np.array_equal(second, expected[first])
    # Every row of the table is exercised, and the result is exactly a function of first.
    pairs = set(zip(first.tolist(), second.tolist(), strict=True))
    assert pairs == {(0, 1), (1, 2), (2, 3), (3, 2)}
    assert ORDERED_NEXT == {0: 1, 1: 2, 2: 3, 3: 2}


def test_ordered_last_row_is_400_to_200_not_the_authors_repeat() -> None:
    # Authors' defect 6: the last branch repeated 200->400; 400X must pair with 200X.
    first, second = draw("ordered", seed=4)
    assert (second[first == 3] == 2).all()
    assert (first == 3).any()


@pytest.mark.parametrize("name", ["random", "rp"])
def test_random_all_twelve_ordered_pairs_are_uniform(name: str) -> None:
    first, second = draw(name, seed=21)
    codes = first * 4 + second
    counts = np.bincount(codes, minlength=16).reshape(4, 4)
    assert np.diag(counts).sum() == 0
    off = counts[~np.eye(4, dtype=bool)]
    assert off.size == 12 and (off > 0).all()
    assert np.abs(off / N - 1 / 12).max() < 0.01  # sd of one share ~0.0014
    assert chi_square_uniform(off) < CHI2_CRIT_001[11]
    # Both marginals are uniform too (RP has 2 degrees of freedom).
    for arr in (first, second):
        assert np.abs(np.bincount(arr, minlength=4) / N - 0.25).max() < 0.015


def test_random_pairs_uniform_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    first, second = draw("random", seed=22)
    counts = np.bincount(first * 4 + second, minlength=16).reshape(4, 4)
    off = counts[~np.eye(4, dtype=bool)]
    assert stats.chisquare(off).pvalue > 0.001


def test_random_second_is_independent_of_first() -> None:
    # Given the first view, the second is uniform over the three other magnifications.
    first, second = draw("random", seed=23)
    for f in range(4):
        sec = second[first == f]
        shares = np.bincount(sec, minlength=4) / sec.size
        assert shares[f] == 0
        others = np.delete(shares, f)
        assert np.abs(others - 1 / 3).max() < 0.025


@pytest.mark.parametrize("name", ALL_NAMES)
def test_same_seed_same_draws(name: str) -> None:
    a1, a2 = draw(name, 5000, seed=7)
    b1, b2 = draw(name, 5000, seed=7)
    assert np.array_equal(a1, b1) and np.array_equal(a2, b2)


@pytest.mark.parametrize("name", ["ordered", "random"])
def test_different_seed_different_draws(name: str) -> None:
    a1, a2 = draw(name, 5000, seed=7)
    b1, b2 = draw(name, 5000, seed=8)
    assert not (np.array_equal(a1, b1) and np.array_equal(a2, b2))


@pytest.mark.parametrize("name", ["ordered", "random"])
def test_successive_batches_continue_the_stream(name: str) -> None:
    sampler = create_pair_sampler(name)
    rng = np.random.default_rng(9)
    b1 = sampler.sample(64, rng)
    b2 = sampler.sample(64, rng)
    assert not (np.array_equal(b1[0], b2[0]) and np.array_equal(b1[1], b2[1]))


@pytest.mark.parametrize("name", ["", "fixed_pair", "order", "rand", "FPX", "uniform"])
def test_unknown_name_raises_config_error_listing_choices(name: str) -> None:
    with pytest.raises(ConfigError) as info:
        create_pair_sampler(name)
    message = str(info.value)
    assert repr(name) in message
    for choice in ("fixed", "ordered", "random", "fp", "op", "rp"):
        assert choice in message
