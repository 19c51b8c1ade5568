"""BatchNorm, LayerNorm and GroupNorm (funnet/layers/normalization.py, docs/math.md §8.3, §8.4).

Values against NumPy loops written here; the hand backward against ``jax.vjp`` of plain
``jax.numpy`` formulas written here and against central differences, in float64, for
dense ``[B, C]`` and image ``[B, H, W, C]`` inputs, masks and batches of one; the running
statistics, evaluation mode and the errors. All problems of one kind share one compile.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import assert_trees_close
from jax.flatten_util import ravel_pytree

import funnet

EPS = 1e-5
KEY = jax.random.PRNGKey(0)
# float64, the same sums in another order: a few ulp of O(1) values
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
# central differences, h = 1e-6 on O(1) inputs: truncation h²·|f'''| ~ 1e-12, rounding
# ε·|f|/h ~ 1e-16·10/1e-6 = 1e-9; 1e-7 leaves a factor 100 and still sees a 1e-4 error
NUMERIC = {"rtol": 1e-6, "atol": 1e-7}


def _rng(seed):
    return np.random.default_rng(seed)


def _normal(shape, seed):
    return jnp.asarray(_rng(seed).standard_normal(shape))


# --- NumPy references (loops, float64) ------------------------------------------------------


def np_batch_norm(x, gamma, beta, axis=-1, mask=None):
    """``(y, μ, σ²)``: channel by channel, over the rows with mask 1 (every row without)."""
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    m = np.ones(x.shape[0]) if mask is None else np.asarray(mask, np.float64)
    y, mus, vs = np.empty_like(x), [], []
    for c in range(x.shape[-1]):
        real = x[m == 1][..., c].ravel()  # the channel's elements in the real rows
        mu, var = real.mean(), real.var()  # biased: ddof = 0
        y[..., c] = gamma[c] * (x[..., c] - mu) / np.sqrt(var + EPS) + beta[c]
        mus.append(mu)
        vs.append(var)
    return np.moveaxis(y, -1, axis), np.array(mus), np.array(vs)


def np_group_norm(x, gamma, beta, groups):
    """Sample by sample and group by group, over spatial × channels of the group."""
    x = np.asarray(x, np.float64)
    y, k = np.empty_like(x), x.shape[-1] // groups
    for b in range(x.shape[0]):
        for g in range(groups):
            block = x[b, ..., g * k:(g + 1) * k]
            y[b, ..., g * k:(g + 1) * k] = (block - block.mean()) / np.sqrt(block.var() + EPS)
    return y * np.asarray(gamma) + np.asarray(beta)


def np_layer_norm(x, gamma, beta):
    x = np.asarray(x, np.float64)
    y = np.empty_like(x)
    for row in np.ndindex(x.shape[:-1]):
        y[row] = (x[row] - x[row].mean()) / np.sqrt(x[row].var() + EPS)
    return y * np.asarray(gamma) + np.asarray(beta)


# --- plain jax.numpy formulas (the vjp witness) ---------------------------------------------


def _channel(v, ndim, axis):
    return v.reshape(tuple(-1 if a == axis else 1 for a in range(ndim)))


def bn_formula(p, x, axis=-1, mask=None):
    """Training-mode BatchNorm, masked statistics written out: w = mask over the rows."""
    ax = axis % x.ndim
    axes = tuple(a for a in range(x.ndim) if a != ax)
    w = jnp.ones_like(x) if mask is None else jnp.broadcast_to(
        mask.reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
    n = jnp.sum(w, axis=axes, keepdims=True)
    mu = jnp.sum(w * x, axis=axes, keepdims=True) / n
    var = jnp.sum(w * (x - mu) ** 2, axis=axes, keepdims=True) / n
    return (_channel(p["scale"], x.ndim, ax) * (x - mu) / jnp.sqrt(var + EPS)
            + _channel(p["offset"], x.ndim, ax))


def gn_formula(p, x, groups):
    xg = x.reshape(x.shape[:-1] + (groups, -1))
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    mu = jnp.mean(xg, axis=axes, keepdims=True)
    var = jnp.mean((xg - mu) ** 2, axis=axes, keepdims=True)
    xhat = ((xg - mu) / jnp.sqrt(var + EPS)).reshape(x.shape)
    return _channel(p["scale"], x.ndim, x.ndim - 1) * xhat + _channel(p["offset"], x.ndim,
                                                                       x.ndim - 1)


def ln_formula(p, x):
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean((x - mu) ** 2, axis=-1, keepdims=True)
    return (_channel(p["scale"], x.ndim, x.ndim - 1) * (x - mu) / jnp.sqrt(var + EPS)
            + _channel(p["offset"], x.ndim, x.ndim - 1))


def central_differences(f, args, h=1e-6):
    """``∇f(args)`` of a scalar ``f`` by central differences, coordinate by coordinate."""
    flat, unravel = ravel_pytree(args)
    steps = h * jnp.eye(flat.size, dtype=flat.dtype)
    g = jax.vmap(lambda e: (f(unravel(flat + e)) - f(unravel(flat - e))) / (2 * h))(steps)
    return unravel(g)


# --- the problems -----------------------------------------------------------------------------

MASK6 = np.array([1.0, 1, 1, 1, 0, 0])
MASK4 = np.array([1.0, 0, 1, 1])

# (id, layer, x shape, NumPy reference, plain formula, mask)
PROBLEMS = [
    ("BatchNorm [B, C]", funnet.BatchNorm(), (5, 3), np_batch_norm, bn_formula, None),
    ("BatchNorm [B, H, W, C]", funnet.BatchNorm(), (2, 3, 2, 3), np_batch_norm, bn_formula,
     None),
    ("BatchNorm(axis=1) [B, C, L]", funnet.BatchNorm(axis=1), (4, 3, 2),
     functools.partial(np_batch_norm, axis=1), functools.partial(bn_formula, axis=1), None),
    ("BatchNorm masked [B, C]", funnet.BatchNorm(), (6, 3), np_batch_norm, bn_formula, MASK6),
    ("BatchNorm masked [B, H, W, C]", funnet.BatchNorm(), (4, 2, 2, 3), np_batch_norm,
     bn_formula, MASK4),
    ("BatchNorm batch 1 [1, H, W, C]", funnet.BatchNorm(), (1, 2, 3, 2), np_batch_norm,
     bn_formula, None),
    ("LayerNorm [B, C]", funnet.LayerNorm(), (5, 4), np_layer_norm, ln_formula, None),
    ("LayerNorm [B, H, W, C]", funnet.LayerNorm(), (2, 2, 2, 3), np_layer_norm, ln_formula,
     None),
    ("LayerNorm batch 1", funnet.LayerNorm(), (1, 4), np_layer_norm, ln_formula, None),
    ("GroupNorm(2) [B, C]", funnet.GroupNorm(2), (3, 4), functools.partial(
        np_group_norm, groups=2), functools.partial(gn_formula, groups=2), None),
    ("GroupNorm(2) [B, H, W, C]", funnet.GroupNorm(2), (2, 2, 3, 4), functools.partial(
        np_group_norm, groups=2), functools.partial(gn_formula, groups=2), None),
    ("GroupNorm(3) batch 1 [1, H, W, C]", funnet.GroupNorm(3), (1, 2, 2, 3),
     functools.partial(np_group_norm, groups=3), functools.partial(gn_formula, groups=3), None),
]
IDS = [p[0] for p in PROBLEMS]
BY_ID = {p[0]: p for p in PROBLEMS}


def _inputs(pid):
    _, lay, shape, _, _, mask = BY_ID[pid]
    seed = IDS.index(pid)
    c = shape[1] if "axis=1" in pid else shape[-1]
    params = {"scale": 1 + 0.5 * _normal((c,), seed), "offset": _normal((c,), seed + 50)}
    _, _, state = lay.init_with_state(KEY, (-1,) + shape[1:])
    x = _normal(shape, seed + 100)
    dy = _normal(shape, seed + 200)
    return params, state, x, dy, None if mask is None else jnp.asarray(mask)


def _run(pid, params, state, x, dy, mask):
    _, lay, _, _, formula, _ = BY_ID[pid]
    kw = {} if mask is None else {"mask": mask}
    stateful = {"train": True, **kw} if lay.stateful else {}
    y, new_state, res = lay.forward_with_state(params, state, x, **stateful)
    hand = lay.backward(params, res, dy)
    plain = functools.partial(formula, mask=mask) if mask is not None else formula
    vjp = jax.vjp(plain, params, x)[1](dy)
    numeric = central_differences(lambda a: jnp.vdot(dy, plain(*a)), (params, x))
    return {"y": y, "state": new_state, "hand": hand, "vjp": vjp, "numeric": numeric}


@functools.cache
def _all():
    inputs = {pid: _inputs(pid) for pid in IDS}
    return inputs, jax.jit(lambda i: {pid: _run(pid, *i[pid]) for pid in IDS})(inputs)


@pytest.mark.parametrize("pid", IDS)
def test_values_match_the_numpy_reference(pid):
    inputs, out = _all()
    params, _, x, _, mask = inputs[pid]
    lay, ref = BY_ID[pid][1], BY_ID[pid][3]
    kw = {"mask": mask} if mask is not None else {}
    got = ref(x, params["scale"], params["offset"], **kw)
    expected = got[0] if isinstance(got, tuple) else got
    np.testing.assert_allclose(out[pid]["y"], expected, rtol=1e-12, atol=1e-12)
    if lay.stateful:  # running statistics: 0.9·(0, 1) + 0.1·(μ, biased σ²)
        np.testing.assert_allclose(out[pid]["state"]["mean"], 0.1 * got[1], rtol=1e-12)
        np.testing.assert_allclose(out[pid]["state"]["var"], 0.9 + 0.1 * got[2], rtol=1e-12)


@pytest.mark.parametrize("pid", IDS)
def test_hand_backward_is_the_vjp_of_the_formula_and_central_differences(pid):
    _, out = _all()
    hand, vjp, numeric = out[pid]["hand"], out[pid]["vjp"], out[pid]["numeric"]
    assert_trees_close(hand, vjp, **TIGHT)
    assert_trees_close(hand, numeric, **NUMERIC)
    # a non-trivial check: dx is not 0
    assert float(jnp.max(jnp.abs(hand[1]))) > 1e-2


def test_masked_batch_norm_is_batch_norm_of_the_real_rows():
    bn = funnet.BatchNorm(momentum=0.8)
    for shape in ((4, 3), (3, 2, 2, 3)):
        _, params, state = bn.init_with_state(KEY, (-1,) + shape[1:])
        params = {"scale": _normal(shape[-1:], 1), "offset": _normal(shape[-1:], 2)}
        real = _normal(shape, 3)
        x = jnp.concatenate([real, real[:2]])  # padded as fit pads: repeats of real rows
        mask = jnp.asarray([1.0] * shape[0] + [0.0, 0.0])
        dy_real = _normal(shape, 4)
        dy = jnp.concatenate([dy_real, jnp.zeros_like(dy_real[:2])])  # the padding: dy = 0

        @jax.jit
        def run(params, state, x, real, dy, dy_real, mask):
            y, new, res = bn.forward_with_state(params, state, x, train=True, mask=mask)
            y_ref, new_ref, res_ref = bn.forward_with_state(params, state, real, train=True)
            y_all, _ = bn.apply_with_state(params, state, x, train=True)  # no mask
            return (y, new, bn.backward(params, res, dy), y_ref, new_ref,
                    bn.backward(params, res_ref, dy_real), y_all)

        y, new, (dp, dx), y_ref, new_ref, (dp_ref, dx_ref), y_all = run(
            params, state, x, real, dy, dy_real, mask)
        assert_trees_close(y[: shape[0]], y_ref, **TIGHT)
        assert_trees_close(new, new_ref, **TIGHT)
        assert_trees_close(dp, dp_ref, **TIGHT)
        assert_trees_close(dx[: shape[0]], dx_ref, **TIGHT)
        np.testing.assert_array_equal(dx[shape[0]:], 0.0)
        # without the mask the padding rows count: then the statistics differ
        assert float(jnp.max(jnp.abs(y_all[: shape[0]] - y_ref))) > 1e-3


def test_an_all_zero_mask_keeps_the_state_and_stays_finite():
    bn = funnet.BatchNorm()
    _, params, _ = bn.init_with_state(KEY, (-1, 3))
    state = {"mean": jnp.asarray([0.3, -0.2, 1.0]), "var": jnp.asarray([2.0, 0.5, 1.0])}
    x = _normal((4, 3), 5)
    y, new, res = bn.forward_with_state(params, state, x, train=True, mask=jnp.zeros(4))
    assert_trees_close(new, state, rtol=0, atol=0)
    grads = bn.backward(params, res, jnp.ones_like(x))
    assert np.all(np.isfinite(y)) and all(np.all(np.isfinite(g))
                                          for g in jax.tree_util.tree_leaves(grads))


def test_running_statistics_update_and_momentum():
    x = _normal((8, 3), 6)
    mu, var = np.mean(np.asarray(x), 0), np.var(np.asarray(x), 0)  # biased
    state = {"mean": jnp.asarray([0.3, -0.2, 1.0]), "var": jnp.asarray([2.0, 0.5, 1.0])}
    bn = funnet.BatchNorm(momentum=0.7)
    _, params, _ = bn.init_with_state(KEY, (-1, 3))
    _, new = bn.apply_with_state(params, state, x, train=True)
    np.testing.assert_allclose(new["mean"], 0.7 * state["mean"] + 0.3 * mu, rtol=1e-13)
    np.testing.assert_allclose(new["var"], 0.7 * state["var"] + 0.3 * var, rtol=1e-13)
    unbiased = 0.7 * state["var"] + 0.3 * var * 8 / 7
    assert not np.allclose(new["var"], unbiased)  # the biased σ² is stored
    # momentum 0: the running statistics are the last batch's
    _, last = funnet.BatchNorm(momentum=0.0).apply_with_state(params, state, x, train=True)
    np.testing.assert_allclose(last["mean"], mu, rtol=1e-13)
    np.testing.assert_allclose(last["var"], var, rtol=1e-13)
    # k steps on the same batch from (0, 1): mean = (1 − ρᵏ) μ, var = ρᵏ + (1 − ρᵏ) σ²
    bn9 = funnet.BatchNorm()
    _, _, s = bn9.init_with_state(KEY, (-1, 3))
    step = jax.jit(lambda s: bn9.apply_with_state(params, s, x, train=True)[1])
    for _ in range(5):
        s = step(s)
    decay = 0.9 ** 5
    np.testing.assert_allclose(s["mean"], (1 - decay) * mu, rtol=1e-12)
    np.testing.assert_allclose(s["var"], decay + (1 - decay) * var, rtol=1e-12)


def test_evaluation_uses_the_running_statistics_and_is_affine():
    bn = funnet.BatchNorm()
    state = {"mean": jnp.asarray([0.3, -0.2, 1.0]), "var": jnp.asarray([2.0, 0.5, 1.0])}
    params = {"scale": _normal((3,), 7), "offset": _normal((3,), 8)}
    x, dy = _normal((4, 2, 2, 3), 9), _normal((4, 2, 2, 3), 10)
    y, same, res = bn.forward_with_state(params, state, x)  # train=False by default
    assert same is state
    sd = np.sqrt(np.asarray(state["var"]) + EPS)
    expected = np.asarray(params["scale"]) * (np.asarray(x) - np.asarray(state["mean"])) / sd \
        + np.asarray(params["offset"])
    np.testing.assert_allclose(y, expected, rtol=1e-13, atol=1e-13)
    dp, dx = bn.backward(params, res, dy)
    np.testing.assert_allclose(dx, np.asarray(dy) * np.asarray(params["scale"]) / sd,
                               rtol=1e-13)
    xhat = (np.asarray(x) - np.asarray(state["mean"])) / sd
    np.testing.assert_allclose(dp["scale"], (np.asarray(dy) * xhat).sum((0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(dp["offset"], np.asarray(dy).sum((0, 1, 2)), rtol=1e-12)
    # each sample alone gives the same: evaluation does not couple the batch
    alone = bn.apply_with_state(params, state, x[1:2])[0]
    assert_trees_close(alone, y[1:2], **TIGHT)


def test_untrained_evaluation_is_the_identity_scaled_by_one_over_root_one_plus_eps():
    bn = funnet.BatchNorm()
    _, params, state = bn.init_with_state(KEY, (-1, 5))
    assert_trees_close(state, {"mean": jnp.zeros(5), "var": jnp.ones(5)}, rtol=0, atol=0)
    assert_trees_close(params, {"scale": jnp.ones(5), "offset": jnp.zeros(5)}, rtol=0, atol=0)
    x = 100 * _normal((3, 5), 11)
    y, _ = bn.apply_with_state(params, state, x)
    np.testing.assert_allclose(y, x / np.sqrt(1 + EPS), rtol=1e-14)
    g, b = _normal((5,), 12), _normal((5,), 13)
    y, _ = bn.apply_with_state({"scale": g, "offset": b}, state, x)
    np.testing.assert_allclose(y, g[None] * x / np.sqrt(1 + EPS) + b[None], rtol=1e-13,
                               atol=1e-13)


def test_a_batch_of_one_row_in_training_has_zero_variance():
    # σ² = 0: x̂ = 0, y = β, dx = 0, dγ = 0, dβ = dy, all finite (docs/math.md §8.3)
    bn = funnet.BatchNorm()
    _, _, state = bn.init_with_state(KEY, (-1, 3))
    params = {"scale": _normal((3,), 14), "offset": _normal((3,), 15)}
    x, dy = _normal((1, 3), 16), _normal((1, 3), 17)
    y, new, res = bn.forward_with_state(params, state, x, train=True)
    np.testing.assert_array_equal(y, params["offset"][None])
    dp, dx = bn.backward(params, res, dy)
    np.testing.assert_array_equal(dx, 0.0)
    np.testing.assert_array_equal(dp["scale"], 0.0)
    np.testing.assert_array_equal(dp["offset"], dy[0])
    assert_trees_close((dp, dx), jax.vjp(bn_formula, params, x)[1](dy), **TIGHT)
    np.testing.assert_allclose(new["mean"], 0.1 * x[0], rtol=1e-15)
    np.testing.assert_allclose(new["var"], 0.9 * np.ones(3), rtol=1e-15)


def test_group_norm_with_one_group_is_layer_norm_of_the_whole_sample():
    x = _normal((3, 2, 2, 4), 18)
    p = {"scale": _normal((4,), 19), "offset": _normal((4,), 20)}
    gn = funnet.GroupNorm(1).apply(p, x)
    flat = np.asarray(x).reshape(3, -1)
    xhat = (flat - flat.mean(1, keepdims=True)) / np.sqrt(flat.var(1, keepdims=True) + EPS)
    np.testing.assert_allclose(gn, xhat.reshape(x.shape) * np.asarray(p["scale"])
                               + np.asarray(p["offset"]), rtol=1e-12, atol=1e-12)
    dense = _normal((5, 4), 21)
    assert_trees_close(funnet.GroupNorm(1).apply(p, dense), funnet.LayerNorm().apply(p, dense),
                       **TIGHT)


def test_names_shapes_and_no_weight_decay():
    assert funnet.BatchNorm().name == "BatchNorm"
    assert funnet.BatchNorm(momentum=0.99, axis=1).name == "BatchNorm(momentum=0.99, axis=1)"
    assert funnet.LayerNorm(epsilon=1e-3).name == "LayerNorm(epsilon=0.001)"
    assert funnet.GroupNorm(4).name == "GroupNorm(4)"
    bn = funnet.BatchNorm()
    assert bn.stateful and not funnet.LayerNorm().stateful
    out, _, state = bn.init_with_state(KEY, (-1, 5, 5, 3))
    assert out == (-1, 5, 5, 3) and {k: v.shape for k, v in state.items()} == {
        "mean": (3,), "var": (3,)}
    for lay, shape in ((bn, (-1, 3)), (funnet.LayerNorm(), (-1, 3)),
                       (funnet.GroupNorm(3), (-1, 3))):
        p = lay.init_with_state(KEY, shape)[1]
        assert lay.decay_mask(p) == {"scale": False, "offset": False}
        assert funnet.l2_penalty(p, 1.0, model=lay) == 0


def test_dtypes_of_the_gradients_follow_what_they_differentiate():
    for lay in (funnet.BatchNorm(), funnet.LayerNorm(), funnet.GroupNorm(2)):
        _, params, state = lay.init_with_state(KEY, (-1, 4))
        x = jnp.asarray(_normal((3, 4), 22), jnp.float32)

        @jax.jit
        def grads(params, state, x, lay=lay):
            y, _, res = lay.forward_with_state(params, state, x, train=True)
            return lay.backward(params, res, jnp.ones_like(y))

        dp, dx = grads(params, state, x)
        assert dx.dtype == jnp.float32 and dp["scale"].dtype == params["scale"].dtype



def test_integer_inputs_are_normalised_as_their_float_values_and_get_no_gradient():
    # an integer x is promoted to the params' float dtype (as Conv, AvgPool): casting x̂
    # back to int32 gave [[-1, 0, 0, 1]] for LayerNorm on [[1, 2, 3, 4]]
    xi = jnp.asarray([[1, 2, 3, 4], [5, 3, 0, 2], [7, 7, 1, 0]], jnp.int32)
    for lay in (funnet.BatchNorm(), funnet.LayerNorm(), funnet.GroupNorm(2)):
        _, params, state = lay.init_with_state(KEY, (-1, 4))
        for train in (False, True):
            y, new = lay.apply_with_state(params, state, xi, train=train)
            ref, ref_new = lay.apply_with_state(params, state, xi.astype(jnp.float64),
                                                train=train)
            assert y.dtype == params["scale"].dtype, (lay.name, y.dtype)
            np.testing.assert_array_equal(y, ref)  # the same float computation
            assert_trees_close(new, ref_new, rtol=0, atol=0)
            _, _, res = lay.forward_with_state(params, state, xi, train=train)
            dp, dx = lay.backward(params, res, jnp.ones_like(y))
            assert dx is None  # integers have no gradient (as Embedding's ids)
            assert dp["scale"].dtype == params["scale"].dtype
    x = funnet.LayerNorm().apply({"scale": jnp.ones(4), "offset": jnp.zeros(4)}, xi[:1])
    np.testing.assert_allclose(x, [[-1.3416354, -0.4472118, 0.4472118, 1.3416354]],
                               rtol=1e-6)


def test_half_precision_statistics_are_computed_in_float32_and_the_output_dtype_rule():
    # values ~300 from their mean: Σ(x − μ)² in float16 overflows (65504) to inf, as did the
    # running var; the statistics are now float32 and y has Conv's dtype result_type(x, γ, β)
    x64 = jnp.asarray(_rng(31).integers(0, 600, (8, 4)), jnp.float64)
    for half in (jnp.float16, jnp.bfloat16):
        x = x64.astype(half)
        for lay in (funnet.BatchNorm(), funnet.LayerNorm(), funnet.GroupNorm(2)):
            _, params, state = lay.init_with_state(KEY, (-1, 4))
            for p_dtype in (jnp.float32, half):
                p = jax.tree_util.tree_map(lambda v, d=p_dtype: v.astype(d), params)
                s = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32), state)
                y, new = lay.apply_with_state(p, s, x, train=True)
                ref, ref_new = lay.apply_with_state(params, state, x.astype(jnp.float64),
                                                    train=True)
                assert y.dtype == jnp.result_type(half, p_dtype), (lay.name, half, y.dtype)
                # the reference normalises the same (rounded) x in float64; |y| ≤ 2, so the
                # error is the output's rounding: half an ulp of 2, float16 1e-3, bfloat16
                # 8e-3; a float32 output (float32 statistics) is good to ~1e-6
                tol = {jnp.float16: 2e-3, jnp.bfloat16: 1.6e-2}.get(y.dtype.type, 1e-5)
                np.testing.assert_allclose(np.asarray(y, np.float64), ref, atol=tol)
                # the running statistics are float32 (mean ~ 30, var ~ 0.9 + 0.1·3e4)
                assert_trees_close(new, ref_new, rtol=1e-5, atol=0)
                _, _, res = lay.forward_with_state(p, s, x, train=True)
                dp, dx = lay.backward(p, res, jnp.ones_like(y) / 8)
                assert dx.dtype == half and bool(jnp.all(jnp.isfinite(dx)))
                assert all(bool(jnp.all(jnp.isfinite(v))) and v.dtype == p_dtype
                           for v in dp.values())
    # float32 inputs keep float32 statistics; float32 params give a float32 output
    p32 = {"scale": jnp.ones(4, jnp.float32), "offset": jnp.zeros(4, jnp.float32)}
    y = funnet.LayerNorm().apply(p32, x64.astype(jnp.float32))
    assert y.dtype == jnp.float32


def test_backward_refuses_a_dy_of_the_wrong_shape():
    x = _normal((2, 3, 3, 4), 32)
    for lay in (funnet.BatchNorm(), funnet.LayerNorm(), funnet.GroupNorm(2)):
        _, params, state = lay.init_with_state(KEY, (-1, 3, 3, 4))
        for train in (False, True):
            _, _, res = lay.forward_with_state(params, state, x, train=train)
            for bad in ((2, 3, 3, 2), (3, 3, 3, 4), (3, 3, 4)):
                with pytest.raises(funnet.LayerError) as info:
                    lay.backward(params, res, jnp.ones(bad))
                for fragment in (lay.name, "backward", f"dy of shape {bad}", "(2, 3, 3, 4)"):
                    assert fragment in str(info.value), (fragment, str(info.value))

# --- errors -----------------------------------------------------------------------------------

BN = funnet.BatchNorm()
P3 = {"scale": jnp.ones(3), "offset": jnp.zeros(3)}
S3 = {"mean": jnp.zeros(3), "var": jnp.ones(3)}
X43 = jnp.ones((4, 3))

ERRORS = [
    ("momentum 1", lambda: funnet.BatchNorm(momentum=1.0), funnet.LayerError,
     ["BatchNorm", "momentum", "[0, 1)", "1.0"]),
    ("momentum < 0", lambda: funnet.BatchNorm(momentum=-0.1), funnet.LayerError,
     ["BatchNorm", "momentum", "-0.1"]),
    ("momentum a string", lambda: funnet.BatchNorm(momentum="0.9"), funnet.LayerError,
     ["BatchNorm: momentum must be a number"]),
    ("epsilon 0", lambda: funnet.BatchNorm(epsilon=0.0), funnet.LayerError,
     ["BatchNorm", "epsilon", "> 0"]),
    ("LayerNorm epsilon < 0", lambda: funnet.LayerNorm(epsilon=-1e-5), funnet.LayerError,
     ["LayerNorm", "epsilon"]),
    ("GroupNorm epsilon nan", lambda: funnet.GroupNorm(2, epsilon=float("nan")),
     funnet.LayerError, ["GroupNorm", "epsilon"]),
    ("GroupNorm groups 0", lambda: funnet.GroupNorm(0), funnet.LayerError,
     ["GroupNorm: groups"]),
    ("axis not an int", lambda: funnet.BatchNorm(axis=1.0), funnet.LayerError,
     ["BatchNorm", "axis"]),
    ("axis 0 is the batch", lambda: funnet.BatchNorm(axis=0).init_with_state(KEY, (-1, 3)),
     funnet.LayerError, ["BatchNorm(axis=0)", "(-1, 3)", "batch"]),
    ("axis out of range", lambda: funnet.BatchNorm(axis=3).init_with_state(KEY, (-1, 4, 3)),
     funnet.LayerError, ["BatchNorm(axis=3)", "(-1, 4, 3)", "rank 3"]),
    ("axis out of range at apply", lambda: funnet.BatchNorm(axis=2).apply_with_state(
        P3, S3, X43), funnet.LayerError, ["BatchNorm(axis=2)", "(4, 3)"]),
    ("BatchNorm rank 1", lambda: BN.init_with_state(KEY, (-1,)), funnet.LayerError,
     ["BatchNorm", "(-1,)"]),
    ("BatchNorm rank 1 at apply", lambda: BN.apply_with_state(P3, S3, jnp.ones(3), train=True),
     funnet.LayerError, ["BatchNorm", "(3,)", "rank 1", "at least 2 axes"]),
    ("GroupNorm groups do not divide C", lambda: funnet.GroupNorm(4).init(KEY, (-1, 2, 2, 6)),
     funnet.LayerError, ["GroupNorm(4)", "(-1, 2, 2, 6)", "6 channels", "4 groups"]),
    ("GroupNorm groups do not divide C at apply",
     lambda: funnet.GroupNorm(2).apply(P3, X43), funnet.LayerError,
     ["GroupNorm(2)", "(4, 3)", "3 channels", "2 groups"]),
    ("BatchNorm scale of the wrong shape",
     lambda: BN.apply_with_state({"scale": jnp.ones(4), "offset": jnp.zeros(3)}, S3, X43),
     funnet.ParamsError, ["BatchNorm", "scale", "(4,)", "(4, 3)", "(3,)"]),
    ("BatchNorm params keys", lambda: BN.apply_with_state({"gamma": jnp.ones(3)}, S3, X43),
     funnet.ParamsError, ["BatchNorm", "['offset', 'scale']", "['gamma']"]),
    ("BatchNorm state keys", lambda: BN.apply_with_state(P3, (), X43), funnet.ParamsError,
     ["BatchNorm", "state", "['mean', 'var']"]),
    ("BatchNorm state of the wrong shape",
     lambda: BN.apply_with_state(P3, {"mean": jnp.zeros(2), "var": jnp.ones(3)}, X43),
     funnet.ParamsError, ["BatchNorm", "state['mean']", "(2,)", "(4, 3)"]),
    ("BatchNorm mask of the wrong shape",
     lambda: BN.apply_with_state(P3, S3, X43, train=True, mask=jnp.ones(3)), funnet.LayerError,
     ["BatchNorm", "mask", "(3,)", "(4, 3)"]),
    ("LayerNorm offset of the wrong shape",
     lambda: funnet.LayerNorm().apply({"scale": jnp.ones(3), "offset": jnp.ones((3, 1))}, X43),
     funnet.ParamsError, ["LayerNorm", "offset", "(3, 1)", "(4, 3)"]),
    ("BatchNorm through the stateless apply", lambda: BN.apply(P3, X43),
     funnet.StatefulModelError, ["BatchNorm holds state", "apply_with_state"]),
    ("BatchNorm in serial, wrong params",
     lambda: funnet.serial(funnet.Relu, BN).apply_with_state(((), {"scale": jnp.ones(2),
                                                                    "offset": jnp.ones(2)}),
                                                             ((), S3), X43),
     funnet.ParamsError, ["serial[1] › BatchNorm", "(2,)"]),
]


@pytest.mark.parametrize("call, error, fragments", [pytest.param(*e[1:], id=e[0]) for e in ERRORS])
def test_bad_input_raises_a_clear_error(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


# --- gradient checks of whole models with BatchNorm -------------------------------------------


def test_check_model_on_batch_norm_in_training_mode():
    net = funnet.serial(funnet.Dense(3), funnet.BatchNorm(), funnet.Tanh, funnet.Dense(2))
    _, params, state = net.init_with_state(KEY, (-1, 4))
    x, y = _normal((6, 4), 23), jnp.asarray([0, 1, 1, 0, 1, 0])
    result = funnet.check_model(net, params, x, y, funnet.softmax_cross_entropy, state=state,
                                train=True, batch=True)
    # every method (hand, formula, reverse, forward, numerical) agrees, each layer passes
    assert result.ok and len(result.reports) == 4
    assert [v.status for v in result.layers] == ["ok"] * 4
    assert result.batch.verdict == "coupled"  # batch statistics couple the rows
    with pytest.raises(funnet.StatefulModelError, match=r"serial\[1\] › BatchNorm.*state="):
        funnet.check_model(net, params, x, y, funnet.softmax_cross_entropy, train=True)


def test_check_model_on_batch_norm_of_images_and_in_evaluation():
    net = funnet.serial(funnet.BatchNorm(), funnet.Flatten, funnet.Dense(2))
    _, params, state = net.init_with_state(KEY, (-1, 2, 2, 3))
    state = (jax.tree_util.tree_map(lambda v: v + 0.5, state[0]), (), ())
    x, y = _normal((3, 2, 2, 3), 24), _normal((3, 2), 25)
    fast = {"methods": ("hand", "formula", "numerical"), "batch": True}
    train = funnet.check_model(net, params, x, y, funnet.mse, state=state, train=True, **fast)
    assert train.ok and train.batch.verdict == "coupled"
    evaluation = funnet.check_model(net, params, x, y, funnet.mse, state=state, **fast)
    assert evaluation.ok and evaluation.batch.verdict == "consistent"


# --- gaps found by the mutation review of the conv family (issue 12) ------------------------


def test_coupled_excuses_only_batch_statistics_in_training():
    # "coupled" (shuffle invariant, not the mean of per-example gradients) is the verdict only
    # where batch statistics couple the rows: a stateful model with train=True. The same
    # BatchNorm model in evaluation (running statistics, each row alone) and a stateless model
    # with train=True have no excuse: a loss that sums instead of averaging is "failed"
    summed = lambda pred, target: 0.5 * jnp.sum((pred - target) ** 2)
    fast = {"methods": ("formula", "reverse"), "batch": True, "layers": False}
    bn_net = funnet.serial(funnet.BatchNorm(), funnet.Flatten, funnet.Dense(2))
    _, params, state = bn_net.init_with_state(KEY, (-1, 2, 2, 3))
    x, y = _normal((3, 2, 2, 3), 26), _normal((3, 2), 27)
    plain = funnet.serial(funnet.Flatten, funnet.Dense(2))
    _, plain_params = plain.init(KEY, (-1, 2, 2, 3))
    for net, p, kw in ((bn_net, params, {"state": state}), (plain, plain_params,
                                                             {"train": True})):
        with pytest.raises(funnet.GradientCheckError, match="batch consistency failed") as info:
            funnet.check_model(net, p, x, y, summed, **kw, **fast)
        batch = info.value.result.batch
        assert batch.verdict == "failed" and batch.shuffled.ok and not batch.per_example.ok
    # (with funnet.mse both are "consistent", and the BatchNorm model in training "coupled":
    # test_check_model_on_batch_norm_of_images_and_in_evaluation)


def test_check_model_holds_the_state_of_a_batch_norm_inside_parallel():
    # the state is bound layer by layer through serial and parallel alike (a parallel rebuilt
    # as a serial passed every test): in evaluation, R uses the given running statistics;
    # value and gradients against the plain formula
    net = funnet.serial(funnet.Dense(3), funnet.fanout(2),
                        funnet.parallel(funnet.BatchNorm(), funnet.Tanh), funnet.FanInSum,
                        funnet.Dense(2))
    _, params, _ = net.init_with_state(KEY, (-1, 4))
    params = jax.tree_util.tree_map(lambda v: v + 0.1 * _normal(v.shape, v.size), params)
    running = {"mean": jnp.asarray([0.3, -0.2, 0.5]), "var": jnp.asarray([2.0, 0.5, 1.5])}
    x, y = _normal((5, 4), 28), _normal((5, 2), 29)

    def plain(p):  # R = mse(Dense(BN(h) + tanh(h)), y), h = Dense(x), BN by the running stats
        h = x @ p[0]["W"] + p[0]["b"][None]
        bn = p[2][0]
        z = (bn["scale"][None] * (h - running["mean"][None])
             / jnp.sqrt(running["var"][None] + EPS) + bn["offset"][None])
        return funnet.mse((z + jnp.tanh(h)) @ p[4]["W"] + p[4]["b"][None], y)

    state = ((), (), (running, ()), (), ())  # serial's: the BatchNorm's sits in parallel's
    result = funnet.check_model(net, params, x, y, funnet.mse, state=state,
                                methods=("hand", "formula"), layers=False)
    value, grads = jax.value_and_grad(plain)(params)
    np.testing.assert_allclose(result.value, value, rtol=1e-12)
    assert_trees_close(result.grads["hand"], grads, **TIGHT)
    assert_trees_close(result.grads["formula"], grads, **TIGHT)


def test_a_non_default_epsilon_is_the_one_used():
    # every other test runs at the default ε = 1e-5: a layer that ignored its epsilon= option
    # passed them all. ε = 0.5 moves every output by O(1)
    eps = 0.5
    x, p = _normal((4, 2, 3), 30), {"scale": _normal((3,), 31), "offset": _normal((3,), 32)}
    running = {"mean": jnp.asarray([0.3, -0.2, 0.5]), "var": jnp.asarray([2.0, 0.5, 1.5])}
    bn = funnet.BatchNorm(epsilon=eps)
    ln, gn, bn_train, bn_eval = jax.jit(lambda p, x: (
        funnet.LayerNorm(epsilon=eps).apply(p, x), funnet.GroupNorm(3, epsilon=eps).apply(p, x),
        bn.apply_with_state(p, running, x, train=True)[0], bn.apply_with_state(p, running, x)[0],
    ))(p, x)
    xs, g, b = np.asarray(x), np.asarray(p["scale"]), np.asarray(p["offset"])

    def norm(mu, var):
        return g * (xs - mu) / np.sqrt(var + eps) + b

    for got, axes in ((ln, (2,)), (gn, (1,)), (bn_train, (0, 1))):  # GroupNorm(C): per channel
        expected = norm(xs.mean(axes, keepdims=True), xs.var(axes, keepdims=True))
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(bn_eval, norm(np.asarray(running["mean"]),
                                             np.asarray(running["var"])), rtol=1e-12, atol=1e-12)
