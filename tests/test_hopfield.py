"""funnet.hopfield: Hebbian storage, asynchronous updates, energy, recall (docs/math.md §9.5).

Witnesses are written here in NumPy (float64): the Hebbian sum over patterns as a loop of
outer products, the asynchronous rule replayed unit by unit, the energy ``−½ sᵀ W s``.
Statistical claims use fixed seeds; each bound is justified next to it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funnet
from funnet import hopfield as hop

N = 100  # the size of the statistical tests (one compile per batch shape)


def random_patterns(rng, p: int, n: int) -> np.ndarray:
    return rng.choice(np.array([-1.0, 1.0]), size=(p, n))


def flip(rng, patterns: np.ndarray, fraction: float) -> np.ndarray:
    """Each row with exactly ``fraction · n`` of its bits flipped (chosen at random)."""
    rows, n = patterns.shape
    cues = patterns.copy()
    idx = np.argsort(rng.random((rows, n)), axis=1)[:, : round(fraction * n)]
    np.put_along_axis(cues, idx, -np.take_along_axis(cues, idx, 1), 1)
    return cues


def random_coupling(rng, n: int) -> np.ndarray:
    """A random symmetric matrix with zero diagonal (not Hebbian)."""
    a = rng.standard_normal((n, n))
    w = (a + a.T) / 2
    np.fill_diagonal(w, 0.0)
    return w


def numpy_energy(w: np.ndarray, s: np.ndarray) -> float:
    return -0.5 * float(s @ w @ s)


def numpy_replay(w: np.ndarray, s: np.ndarray, units: np.ndarray):
    """The asynchronous rule, unit by unit: s_i ← sign(h_i), sign(0) keeps s_i."""
    s = s.astype(np.float64).copy()
    energies = [numpy_energy(w, s)]
    for i in units:
        h = float(w[i] @ s)
        if h != 0.0:
            s[i] = np.sign(h)
        energies.append(numpy_energy(w, s))
    return s, np.array(energies)


def sylvester(n: int) -> np.ndarray:
    """A Hadamard matrix (rows ±1, mutually orthogonal), n a power of 2."""
    h = np.ones((1, 1))
    while h.shape[0] < n:
        h = np.block([[h, h], [h, -h]])
    return h


# -- storage and energy -----------------------------------------------------------------------


def test_hebbian_equals_the_sum_of_outer_products():
    rng = np.random.default_rng(0)
    for p, n in ((1, 5), (3, 7), (6, 100)):
        xi = random_patterns(rng, p, n).astype(np.int32)
        expected = sum(np.outer(x, x) for x in xi.astype(np.float64)) / n - (p / n) * np.eye(n)
        w = np.asarray(hop.hebbian(xi))
        assert w.dtype == np.float64  # integer patterns: the default float (x64 in the tests)
        # entries k/N, rounded once by the library and at most twice in the loop above
        np.testing.assert_allclose(w, expected, rtol=0, atol=4 * np.finfo(float).eps)
        assert np.all(np.diagonal(w) == 0.0)  # exactly, not to rounding
        assert np.array_equal(w, w.T)
    w32 = hop.hebbian(jnp.asarray(random_patterns(rng, 2, 4), jnp.float32))
    assert w32.dtype == jnp.float32


def test_energy_equals_the_formula():
    rng = np.random.default_rng(1)
    w = random_coupling(rng, 9)
    s = random_patterns(rng, 4, 9)
    e = np.asarray(hop.energy(w, s))
    assert e.shape == (4,)
    for row, value in zip(s, e):
        assert value == pytest.approx(numpy_energy(w, row), rel=1e-13)
    assert float(hop.energy(w, s[0].astype(np.int8))) == pytest.approx(e[0], rel=1e-13)
    # energy takes any square matrix (the formula needs no symmetry)
    a = rng.standard_normal((9, 9))
    assert float(hop.energy(a, s[0])) == pytest.approx(numpy_energy(a, s[0]), rel=1e-13)


def test_orthogonal_patterns_are_fixed_points():
    # Hadamard rows: W ξ^ν = (1/N) Σ_μ ξ^μ (ξ^μ·ξ^ν) − (P/N) ξ^ν = (1 − P/N) ξ^ν, so
    # s_i h_i = 1 − P/N > 0 for every unit: exactly fixed, for any P < N
    xi = sylvester(64)[1:9]
    w = hop.hebbian(xi)
    np.testing.assert_allclose(np.asarray(w) @ xi.T, (1 - 8 / 64) * xi.T, atol=1e-14)
    assert bool(jnp.all(hop.is_fixed_point(w, xi)))
    out = hop.recall(w, xi, jax.random.key(1))  # a whole sweep changes nothing
    assert np.array_equal(np.asarray(out.states), xi)
    assert np.all(np.asarray(out.sweeps) == 1) and bool(jnp.all(out.converged))


def test_few_random_patterns_are_fixed_points():
    # P = 3, N = 100 (P/N = 0.03 ≪ 0.138): the crosstalk on a bit is (1/N) Σ_{μ≠ν} of
    # ~N(P−1) ±1 terms, std ≈ sqrt((P−1)/N) = 0.14 against a signal 1 − P/N = 0.97; a bit is
    # unstable with probability ≈ Φ(−6.9) ≈ 3e-12: all 300 bits hold
    rng = np.random.default_rng(2)
    xi = random_patterns(rng, 3, N)
    w = np.asarray(hop.hebbian(xi))
    assert bool(jnp.all(hop.is_fixed_point(w, xi)))
    assert np.all(xi * (xi @ w) > 0)  # the same, in NumPy: every s_i h_i > 0


# -- the asynchronous dynamics ----------------------------------------------------------------


@pytest.mark.parametrize("order", ["sequential", "random"])
def test_update_equals_a_numpy_replay_and_energy_never_increases(order):
    # random symmetric zero-diagonal couplings (not Hebbian) and Hebbian ones, from random
    # states: the library's states and energies equal the rule replayed in NumPy, and every
    # trajectory's energy is non-increasing step by step
    rng = np.random.default_rng(3)
    n, rows, steps = 30, 6, 5 * 30
    couplings = [random_coupling(rng, n), np.asarray(hop.hebbian(random_patterns(rng, 5, n)))]
    key = jax.random.key(4)
    for w in couplings:
        s0 = random_patterns(rng, rows, n)
        end, energies = hop.update(w, s0, key, steps=steps, order=order, energies=True)
        end, energies = np.asarray(end), np.asarray(energies)
        assert end.shape == (rows, n) and energies.shape == (rows, steps + 1)
        keys = jax.random.split(key, rows)
        for b in range(rows):
            units = np.asarray(hop._units(keys[b], n, steps, order))
            if order == "sequential":
                assert np.array_equal(units, np.arange(steps) % n)
            else:  # each sweep a permutation of the units
                assert all(sorted(units[k:k + n]) == list(range(n)) for k in range(0, steps, n))
            s_ref, e_ref = numpy_replay(w, s0[b], units)
            assert np.array_equal(end[b], s_ref)
            np.testing.assert_allclose(energies[b], e_ref, rtol=1e-12, atol=1e-12)
            # the theorem: ΔE = −Δs_i h_i ≤ 0 at every step (no change: exactly equal)
            assert np.all(np.diff(energies[b]) <= 0), np.diff(energies[b]).max()
        assert np.all(energies[:, -1] < energies[:, 0])  # and they did move


def test_random_order_draws_a_fresh_permutation_every_sweep():
    """``order="random"``: each sweep of N steps is a random permutation of its own, not one
    order repeated sweep after sweep (the replay above takes the schedule from ``_units``
    itself, so it cannot see that). Witness: the sweeps of one schedule compared directly."""
    n, sweeps = 12, 4
    blocks = np.asarray(hop._units(jax.random.key(5), n, sweeps * n, "random")).reshape(sweeps, n)
    assert all(sorted(b) == list(range(n)) for b in blocks)
    # 12! ≈ 4.8e8 orders: two equal ones among 4 independent draws, probability < 1.3e-8
    assert len({tuple(b) for b in blocks}) == sweeps


def test_hebbian_trajectories_from_noisy_cues_descend():
    rng = np.random.default_rng(5)
    xi = random_patterns(rng, 20, N)  # above capacity too: descent holds regardless
    w = hop.hebbian(xi)
    _, energies = hop.update(w, flip(rng, xi[:8], 0.2), jax.random.key(6), steps=4 * N,
                             energies=True)
    assert np.all(np.diff(np.asarray(energies), axis=1) <= 0)


def test_sign_zero_keeps_the_state():
    # W = 0: every field is 0, nothing ever changes, whatever the state
    s = np.array([[1, -1, 1, -1], [-1, -1, 1, 1]])
    out, energies = hop.update(np.zeros((4, 4)), s, jax.random.key(0), steps=8, energies=True)
    assert np.array_equal(np.asarray(out), s) and np.all(np.asarray(energies) == 0)
    # unit 2 is coupled to nothing (its field is 0): it keeps +1 and it keeps −1, while
    # unit 0 aligns with unit 1 (h_0 = s_1 = 1)
    w = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    start = np.array([[-1, 1, 1], [-1, 1, -1]])
    out = np.asarray(hop.update(w, start, steps=3, order="sequential"))
    assert out.tolist() == [[1, 1, 1], [1, 1, -1]]
    assert np.asarray(hop.is_fixed_point(w, out)).tolist() == [True, True]
    # a field that is 0 only up to rounding: 0.1 + 0.2 − 0.3 = 5.6e-17 in float64, whose sign
    # is an accident of the summation order; it counts as 0, so unit 0 keeps −1 and +1
    w = np.zeros((4, 4))
    w[0, 1:] = w[1:, 0] = [0.1, 0.2, -0.3]
    assert 0.1 + 0.2 - 0.3 != 0.0
    for first in (-1, 1):
        start = np.array([first, 1, 1, 1])
        out = np.asarray(hop.update(w, start, steps=1, order="sequential"))
        assert out.tolist() == start.tolist()  # one step: unit 0, whose field is "0"


def test_a_batch_equals_its_rows_run_alone():
    # Hebbian weights with N = 100, P = 20 (even): many fields are exactly 0 in exact
    # arithmetic and tiny after rounding; the rounding margin makes the result independent
    # of how the batch sums them
    rng = np.random.default_rng(7)
    xi = random_patterns(rng, 20, N)
    w = hop.hebbian(xi)
    cues = flip(rng, xi[:6], 0.2)
    key = jax.random.key(8)
    batch = hop.recall(w, cues, key, max_sweeps=30)
    for b, k in enumerate(jax.random.split(key, len(cues))):
        alone = hop.recall(w, cues[b], k, max_sweeps=30)
        assert np.array_equal(np.asarray(alone.states), np.asarray(batch.states)[b])
        assert int(alone.sweeps) == int(batch.sweeps[b])


def test_update_works_under_jit_and_keeps_the_dtype():
    rng = np.random.default_rng(9)
    w = jnp.asarray(hop.hebbian(random_patterns(rng, 2, 16)))
    s = jnp.asarray(random_patterns(rng, 3, 16), jnp.int32)
    eager = hop.update(w, s, jax.random.key(1), steps=20)
    jitted = jax.jit(lambda w, s, k: hop.update(w, s, k, steps=20))(w, s, jax.random.key(1))
    assert eager.dtype == jnp.int32 and jitted.dtype == jnp.int32
    assert np.array_equal(np.asarray(eager), np.asarray(jitted))
    assert hop.update(w, s, jax.random.key(1), steps=0).tolist() == s.tolist()


# -- recall ----------------------------------------------------------------------------------


def recall_rates(p: int, *, trials: int, seed: int) -> dict:
    """Recall from 20 % flipped bits with P random patterns of N = 100 bits."""
    rng = np.random.default_rng(seed)
    xi = random_patterns(rng, p, N)
    w = hop.hebbian(xi)
    target = xi[rng.integers(0, p, trials)]
    out = hop.recall(w, flip(rng, target, 0.2), jax.random.key(seed), max_sweeps=50)
    states = np.asarray(out.states)
    # every converged state is a fixed point, checked in NumPy: s_i h_i ≥ 0 up to rounding
    conv = np.asarray(out.converged)
    h = states @ np.asarray(w)
    assert np.all(states[conv] * h[conv] >= -1e-12)
    assert np.all(conv[np.asarray(out.sweeps) < 50])  # it stopped because nothing changed
    overlap = np.mean(states * target, axis=1)
    return {"exact": float(np.mean(np.all(states == target, axis=1))),
            "overlap": float(np.mean(overlap)),
            "stored_fixed": float(np.mean(np.asarray(hop.is_fixed_point(w, xi))))}


def test_recall_succeeds_well_below_capacity():
    # P/N = 0.05: the first step's field on a bit is ≈ m₀ ± sqrt(P/N) with overlap
    # m₀ = 0.6 (20 % flipped), an error probability ≈ Φ(−0.6/0.22) ≈ 0.3 % per bit, and the
    # errors shrink from there; we measured 200 of 200 exact recalls. A bound of 95 %
    # leaves room for other seeds: 10 failures of 200 would be > 5 σ off a 0.5 % failure rate
    r = recall_rates(5, trials=200, seed=10)
    assert r["exact"] >= 0.95 and r["overlap"] >= 0.98
    assert r["stored_fixed"] == 1.0


def test_recall_fails_above_capacity():
    # P/N = 0.3, more than twice the capacity 0.138: there are no retrieval states; a stored
    # pattern is itself stable with probability ≈ (1 − Φ(−1/sqrt(0.3)))^N ≈ 3 %, and the
    # runs end in spurious states (measured: 0 of 200 exact, mean overlap ≈ 0.4)
    r = recall_rates(30, trials=200, seed=11)
    assert r["exact"] <= 0.05
    assert r["overlap"] <= 0.7
    assert r["stored_fixed"] <= 0.2


def test_recall_stops_at_max_sweeps():
    rng = np.random.default_rng(12)
    xi = random_patterns(rng, 2, 16)
    cue = flip(rng, xi[:1], 0.25)[0]
    w = hop.hebbian(xi)
    out = hop.recall(w, cue, max_sweeps=1, order="sequential")
    one_sweep = hop.update(w, cue, steps=16, order="sequential")
    assert np.array_equal(np.asarray(out.states), np.asarray(one_sweep))
    assert int(out.sweeps) == 1
    assert bool(out.converged) == bool(hop.is_fixed_point(w, one_sweep))
    full = hop.recall(w, cue, max_sweeps=10, order="sequential")
    assert bool(full.converged) and int(full.sweeps) >= 2
    assert isinstance(full, hop.Recall)


# -- errors -----------------------------------------------------------------------------------


def test_errors_name_the_function_the_argument_and_the_shapes():
    w = np.asarray(hop.hebbian(np.array([[1, -1, 1, -1]])))
    s = np.array([1, -1, 1, -1])
    key = jax.random.key(0)
    cases = [
        (lambda: hop.hebbian(np.array([[1, 0, 1]])), ValueError,
         r"hebbian: patterns must hold only -1 and 1.*index \(0, 1\)"),
        (lambda: hop.hebbian(np.array([1, -1])), ValueError,
         r"hebbian: patterns must have shape \[P, N\], got shape \(2,\)"),
        (lambda: hop.hebbian(np.ones((0, 3))), ValueError, r"must not be empty"),
        (lambda: hop.energy(w, np.array([1, -1, 0.5, 1])), ValueError,
         r"energy: s must hold only -1 and 1.*0\.5 at index \(2,\)"),
        (lambda: hop.energy(w, np.array([1, -1, np.nan, 1])), ValueError, r"only -1 and 1"),
        (lambda: hop.energy(w, np.array([True, False, True, False])), TypeError, r"dtype bool"),
        (lambda: hop.energy(w, np.ones((2, 2, 4))), ValueError,
         r"energy: s must have shape \[N\] or \[B, N\], got shape \(2, 2, 4\)"),
        (lambda: hop.energy(np.ones((4, 3)), s), ValueError,
         r"energy: W must be a square matrix \[N, N\], got shape \(4, 3\)"),
        (lambda: hop.update(w, np.ones(5), key, steps=1), ValueError,
         r"update: W of shape \(4, 4\) is for 4 units but s of shape \(5,\) has 5"),
        (lambda: hop.update(w + np.triu(np.ones((4, 4)), 1), s, key, steps=1), ValueError,
         r"update: W of shape \(4, 4\) must be symmetric: W\[0, 1\]"),
        (lambda: hop.update(w + np.eye(4), s, key, steps=1), ValueError,
         r"update: W must have a zero diagonal .*W\[0, 0\] = 1\.0.*4 of 4"),
        (lambda: hop.recall(np.full((4, 4), np.nan), s, key), ValueError,
         r"recall: W of shape \(4, 4\) holds NaN or inf"),
        (lambda: hop.is_fixed_point(w.T + np.tril(np.ones((4, 4)), -1), s), ValueError,
         r"is_fixed_point: W of shape \(4, 4\) must be symmetric"),
        (lambda: hop.update(w, s, key, steps=-1), ValueError, r"update: steps must be an int"),
        (lambda: hop.update(w, s, key, steps=2.0), ValueError, r"update: steps must be an int"),
        (lambda: hop.update(w, s, key, steps=1, order="parallel"), ValueError,
         r"update: order must be 'random' or 'sequential', got 'parallel'"),
        (lambda: hop.update(w, s, steps=1), TypeError, r"update: order='random' needs a PRNG"),
        (lambda: hop.update(w, s, key, steps=1, energies=1), TypeError, r"energies must be"),
        (lambda: hop.recall(w, s, key, max_sweeps=0), ValueError,
         r"recall: max_sweeps must be an int ≥ 1"),
        (lambda: hop.recall(w, s), TypeError, r"recall: order='random' needs a PRNG key"),
        (lambda: hop.recall(np.ones((4, 4), complex), s, key), TypeError, r"W must be real"),
    ]
    for call, error, pattern in cases:
        with pytest.raises(error, match=pattern):
            call()


def test_module_is_exported():
    assert funnet.hopfield is hop and "hopfield" in funnet.__all__
    assert set(hop.__all__) == {"Recall", "energy", "hebbian", "is_fixed_point", "recall",
                                "update"}


def test_energy_is_the_formula_of_any_square_w_while_the_dynamics_check_it():
    """docs/recurrent.md and the module docstring: energy takes any real square W (not
    symmetric, a nonzero diagonal, even NaN: the formula's value); update, recall and
    is_fixed_point refuse such a W."""
    s = np.array([1.0, -1.0, 1.0])
    w = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, -1.0]])
    assert float(hop.energy(w, s)) == pytest.approx(numpy_energy(w, s), rel=1e-13)
    assert np.isnan(float(hop.energy(np.where(w == 3.0, np.nan, w), s)))
    for call in (lambda: hop.update(w, s, jax.random.key(0), steps=1),
                 lambda: hop.recall(w, s, jax.random.key(0)),
                 lambda: hop.is_fixed_point(w, s)):
        with pytest.raises(ValueError, match="W"):
            call()
