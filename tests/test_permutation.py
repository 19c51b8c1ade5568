"""Statistical tests of fit's epoch shuffle (funnet/train/permutation.py).

fit keeps its own hash-sort permutation because it is several times faster on CPU than
``jax.random.permutation`` (measured side by side by ``python -m benchmarks.run --only
training``); so it must be shown to be a good shuffle. Chi-square bounds: a statistic with
``df`` degrees of freedom has mean ``df`` and standard deviation ``√(2 df)``; the bound
``df + 6 √(2 df)`` is exceeded by chance with probability below 1e-5 for the ``df`` used
here (Wilson–Hilferty's normal approximation: 2.5e-6 at df = 49, 4e-7 at df = 119), so
a failure means a biased shuffle, not bad luck. The keys are fixed: the tests are deterministic.
"""

from __future__ import annotations

import itertools
import math

import jax
import numpy as np
import pytest

from funnet.train import shuffle


def _bound(df: int) -> float:
    return df + 6 * math.sqrt(2 * df)


def _chi2(counts: np.ndarray, expected: float) -> float:
    return float(np.sum((counts - expected) ** 2 / expected))


def _many(n: int, k: int, seed: int = 0) -> np.ndarray:
    keys = jax.random.split(jax.random.key(seed), k)
    return np.asarray(jax.jit(jax.vmap(lambda key: shuffle(key, n)))(keys))


@pytest.mark.parametrize("n", [1, 2, 7, 256, 257, 70_000])  # 70 000: two sorting rounds
def test_a_permutation_of_int32_rows(n):
    p = np.asarray(jax.jit(shuffle, static_argnums=1)(jax.random.key(n), n))
    assert p.dtype == np.int32 and np.array_equal(np.sort(p), np.arange(n))


def test_every_permutation_of_five_rows_is_equally_likely():
    perms = _many(5, 12_000)
    index = {p: i for i, p in enumerate(itertools.permutations(range(5)))}
    counts = np.bincount([index[tuple(p)] for p in perms], minlength=120)
    assert counts.min() > 0  # every one of the 120 orders occurs
    assert _chi2(counts, 12_000 / 120) < _bound(119)


def test_each_row_lands_in_each_position_equally_often():
    n, k = 50, 4000
    perms = _many(n, k, seed=1)
    counts = np.zeros((n, n))
    np.add.at(counts, (perms, np.arange(n)), 1)  # counts[row, position]
    worst = max(_chi2(counts[row], k / n) for row in range(n))
    # the maximum of 50 statistics: allow for the Bonferroni factor 50 (bound at 1e-5·50)
    assert worst < _bound(n - 1) + 3 * math.sqrt(2 * (n - 1))


def test_neighbours_are_separated_even_with_several_rounds():
    # rows whose top hash bits tie keep their order within a round; with enough rounds the
    # number of originally adjacent rows left adjacent and in order matches a random
    # permutation's (expected (n - 1)/n ≈ 1; Poisson: P(≥ 12) < 1e-8)
    for n in (1000, 70_000):
        p = np.asarray(shuffle(jax.random.key(3), n))
        pos = np.empty(n, np.int64)
        pos[p] = np.arange(n)
        kept = int(np.sum(pos[1:] - pos[:-1] == 1))
        assert kept < 12, (n, kept)
        band = 6 * math.sqrt(0.25 / (n - 1))
        in_order = np.mean(pos[1:] > pos[:-1])  # about half of the neighbour pairs
        assert abs(in_order - 0.5) < band, (n, in_order)
        # rows tied within a round come out in index order: with too few rounds the
        # output's neighbours would rise far more often than half the time (0.8 at
        # 70 000 rows with one round of 15 random bits)
        rising = np.mean(p[1:] > p[:-1])
        assert abs(rising - 0.5) < band, (n, rising)


def test_the_key_decides_and_every_key_implementation_works():
    a = np.asarray(shuffle(jax.random.key(7), 100))
    assert np.array_equal(a, np.asarray(shuffle(jax.random.key(7), 100)))
    assert not np.array_equal(a, np.asarray(shuffle(jax.random.key(8), 100)))
    assert np.array_equal(a, np.asarray(shuffle(jax.random.PRNGKey(7), 100)))  # raw keys
    for impl in ("rbg", "unsafe_rbg"):
        p = np.asarray(shuffle(jax.random.key(7, impl=impl), 100))
        assert np.array_equal(np.sort(p), np.arange(100))
    perms = _many(50, 400, seed=2)
    assert len({p.tobytes() for p in perms}) == 400
