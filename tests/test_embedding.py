"""Embedding (docs/math.md §9.1): a lookup forward, a scatter-add backward, no gradient for ids.

Witnesses written here: ``E[ids]`` by NumPy fancy indexing, ``dE = one_hot(ids)ᵀ dy`` by a
NumPy matrix product, ``jax.vjp`` of the plain ``table[ids]`` and a central difference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import assert_trees_close

import funnet

V, D = 6, 3
EMB = funnet.Embedding(V, D)
TABLE = jnp.asarray(np.random.default_rng(0).standard_normal((V, D)))
PARAMS = {"table": TABLE}
TIGHT = {"rtol": 1e-12, "atol": 1e-14}  # float64 sums of a few terms, in another order


@pytest.mark.parametrize("shape", [(4,), (2, 5), (2, 3, 4)])
def test_lookup_and_scatter_add_backward(shape):
    rng = np.random.default_rng(1)
    ids = rng.integers(0, V, shape)
    ids.flat[:3] = 2  # id 2 repeated: its gradient rows accumulate
    dy = jnp.asarray(rng.standard_normal((*shape, D)))
    y, res = EMB.forward(PARAMS, jnp.asarray(ids))
    np.testing.assert_array_equal(y, np.asarray(TABLE)[ids])  # y[…, :] = E[ids[…], :]
    dparams, dx = EMB.backward(PARAMS, res, dy)
    assert dx is None  # integer ids: no gradient
    one_hot = np.eye(V)[ids.reshape(-1)]  # [N, V]
    np.testing.assert_allclose(dparams["table"], one_hot.T @ np.asarray(dy).reshape(-1, D),
                               **TIGHT)  # dE = one_hot(ids)ᵀ dy
    (ref,) = jax.vjp(lambda t: t[jnp.asarray(ids)], TABLE)[1](dy)
    assert_trees_close(dparams["table"], ref, **TIGHT)
    # central difference along a random direction (the lookup is linear: exact up to rounding)
    v, eps = jnp.asarray(rng.standard_normal((V, D))), 1e-3

    def objective(t):
        return jnp.vdot(EMB.apply({"table": t}, jnp.asarray(ids)), dy)

    cd = (objective(TABLE + eps * v) - objective(TABLE - eps * v)) / (2 * eps)
    np.testing.assert_allclose(cd, jnp.vdot(dparams["table"], v), rtol=1e-10)


def test_repeated_ids_accumulate():
    ids = jnp.array([[1, 1, 1, 4]])
    dy = jnp.ones((1, 4, D))
    dparams, _ = funnet.backprop.backward(EMB, PARAMS, ids, dy)
    expected = np.zeros((V, D))
    expected[1], expected[4] = 3.0, 1.0
    np.testing.assert_array_equal(dparams["table"], expected)


@pytest.mark.parametrize("bad, shown", [([[0, 6]], "6"), ([[-1, 2]], "-1"),
                                        ([[7, -3, 7]], "-3, 7")])
def test_out_of_range_ids_on_concrete_data_are_named(bad, shown):
    with pytest.raises(funnet.LayerError) as info:
        EMB.apply(PARAMS, jnp.asarray(bad))
    message = str(info.value)
    assert f"Embedding({V}, {D})" in message and f"got {shown} (" in message
    assert f"0 … {V - 1}" in message
    net = funnet.serial(funnet.Embedding(V, D), funnet.GRU(2))
    params = (PARAMS, funnet.GRU(2).init(jax.random.PRNGKey(0), (-1, 2, D))[1])
    with pytest.raises(funnet.LayerError, match=r"serial\[0\] › Embedding\(6, 3\)"):
        net.apply(params, jnp.asarray(bad))


def test_out_of_range_ids_under_jit_give_nan_rows_and_no_gradient():
    ids = jnp.array([[0, V, -1, 3]])  # V and -1 are out of range (not clamped, not wrapped)
    y, (dparams, dx) = jax.jit(lambda p, i: (
        EMB.apply(p, i), funnet.backprop.backward(EMB, p, i, jnp.ones((1, 4, D)))))(PARAMS, ids)
    np.testing.assert_array_equal(y[0, [0, 3]], np.asarray(TABLE)[[0, 3]])
    assert np.all(np.isnan(y[0, [1, 2]]))
    expected = np.zeros((V, D))
    expected[[0, 3]] = 1.0  # the out-of-range ids' gradients are dropped
    np.testing.assert_array_equal(dparams["table"], expected)
    assert dx is None


def test_bad_arguments():
    with pytest.raises(funnet.LayerError, match="vocab_size must be an int"):
        funnet.Embedding(0, 3)
    with pytest.raises(funnet.LayerError, match="dim must be an int"):
        funnet.Embedding(4, 2.5)
    with pytest.raises(funnet.LayerError, match=r"Embedding\(6, 3\): ids must be integers, got "
                                                r"float64 of shape \(2,\)"):
        EMB.apply(PARAMS, jnp.array([1.0, 2.0]))
    with pytest.raises(funnet.ParamsError, match=r"table has shape \(5, 3\), expected \(6, 3\)"):
        EMB.apply({"table": jnp.ones((5, D))}, jnp.array([1]))
    with pytest.raises(funnet.ParamsError, match=r"keys \['table'\]"):
        EMB.apply({"W": TABLE}, jnp.array([1]))


def test_init_decay_and_dtypes():
    out_shape, params = EMB.init(jax.random.PRNGKey(0), (-1, 7))
    assert out_shape == (-1, 7, D) and params["table"].shape == (V, D)
    assert 0.5 < float(jnp.std(params["table"])) < 1.5  # N(0, 1)
    _, ones = funnet.Embedding(V, D, init=jax.nn.initializers.ones).init(
        jax.random.PRNGKey(0), (-1, 2))
    np.testing.assert_array_equal(ones["table"], np.ones((V, D)))
    assert EMB.decay_mask(params) == {"table": True}  # the weight matrix of one-hot @ E
    bf16 = {"table": TABLE.astype(jnp.bfloat16)}
    ids = jnp.array([[1, 2]], jnp.uint8)
    y, res = EMB.forward(bf16, ids)
    dparams, _ = EMB.backward(bf16, res, jnp.ones((1, 2, D), jnp.float32))
    assert y.dtype == dparams["table"].dtype == jnp.bfloat16


def test_a_tuple_of_ids_and_mask_is_refused_naming_the_fix():
    """``(ids, mask)`` handed to the Embedding itself (not through ``parallel(Embedding,
    Identity)``): a LayerError naming the layer and the fix, eager and under jit (the check
    is on the structure, not on values)."""
    ids, mask = jnp.array([[1, 2, 3, 0]]), jnp.array([[1, 1, 1, 0]])
    net = funnet.serial(funnet.Embedding(V, D), funnet.LSTM(2))
    params = (PARAMS, funnet.LSTM(2).init(jax.random.PRNGKey(0), (-1, 4, D))[1])
    for apply in (net.apply, jax.jit(net.apply)):
        with pytest.raises(funnet.LayerError) as info:
            apply(params, (ids, mask))
        message = str(info.value)
        for fragment in ("serial[0] › Embedding(6, 3)", "tuple of 2",
                         "parallel(Embedding(6, 3), Identity)"):
            assert fragment in message, (fragment, message)
    with pytest.raises(funnet.LayerError, match=r"parallel\(Embedding\(6, 3\), Identity\)"):
        EMB.forward(PARAMS, (ids, mask))


@pytest.mark.parametrize("ids, fragments", [
    (3, ["Embedding(6, 3)", "ids must be an integer array", "the Python int 3", "jnp.asarray"]),
    ([[1, 2]], ["Embedding(6, 3)", "a list", "jnp.asarray"]),
])
def test_ids_that_are_not_an_integer_array_are_named(ids, fragments):
    with pytest.raises(funnet.LayerError) as info:
        EMB.apply(PARAMS, ids)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    # an array of rank 0 is one id (as inside jax.vmap over the ids): its row
    np.testing.assert_array_equal(EMB.apply(PARAMS, np.int32(3)), np.asarray(TABLE)[3])
    np.testing.assert_array_equal(jax.vmap(lambda i: EMB.apply(PARAMS, i))(jnp.array([4, 0])),
                                  np.asarray(TABLE)[[4, 0]])
