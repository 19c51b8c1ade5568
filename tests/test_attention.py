"""Attention (docs/math.md §11): dot_product_attention, its hand backward, MultiHeadAttention.

Witnesses, all in float64, none from funnet:

* ``jax.nn.dot_product_attention`` (values) and its ``jax.grad``;
* ``jax.vjp`` of plain per-head formulas written in the tests (``attention_ref``,
  ``mha_ref`` in ``_registry.py``) and central differences of funnet's own ``apply``
  along random directions;
* ``flax.linen.MultiHeadDotProductAttention`` with its params mapped as docs/attention.md
  says (so the mapping is tested too);
* a padded batch against each sequence run alone at its own length.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import assert_trees_close, attention_ref, causal_ref, init_params, mha_ref

import funnet

KEY = jax.random.PRNGKey(0)
# hand backward vs jax.vjp of the plain formula: the same float64 sums in another order, a
# few ulp of O(1) values
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
# jax.nn.dot_product_attention (its XLA implementation) rounds the scores to float32 before
# the softmax, whatever the input dtype: scores of size ≲ 5 then carry errors ≲ 5 · 2⁻²⁴ ≈
# 3e-7, and so do P, O and the gradients (O(1) sums of a few such terms)
JAX_TOL = {"rtol": 2e-6, "atol": 2e-6}
# central differences, step ε = 1e-6 on O(1) values: truncation O(ε²) ≈ 1e-12, rounding
# ≈ 1e-16/ε = 1e-10, times the O(10) size of the directional derivative
CD_EPS = 1e-6
CD_TOL = {"rtol": 1e-6, "atol": 1e-8}


def _normal(rng, shape, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape))


def _tree_dot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree_util.tree_leaves(a),
                                                jax.tree_util.tree_leaves(b)))


def _directions(rng, tree, n=3):
    """``n`` random directions like ``tree``, stacked on a leading axis."""
    return jax.tree_util.tree_map(lambda a: _normal(rng, (n, *a.shape)), tree)


def _central_differences(f, point, directions):
    """``(f(x + ε t) − f(x − ε t)) / 2ε`` for each direction ``t``, in one vmap."""
    steps = jax.tree_util.tree_map(lambda v: jnp.concatenate([v, -v]) * CD_EPS, directions)
    values = jax.vmap(lambda d: f(*jax.tree_util.tree_map(jnp.add, point, d)))(steps)
    n = values.shape[0] // 2
    return (values[:n] - values[n:]) / (2 * CD_EPS)


# --- the function: values and gradients equal jax.nn.dot_product_attention -------------------

# (id, B, T_q, T_k, N, d, mask kind, causal); no row fully masked (see the next test for those)
JAX_CASES = [
    ("no mask", 2, 4, 4, 2, 3, None, False),
    ("causal", 2, 5, 5, 2, 3, None, True),
    ("random mask, T_q != T_k", 2, 4, 6, 3, 2, "random", False),
    ("key padding and causal", 3, 5, 5, 1, 4, "keys", True),
    ("causal, T_q > T_k", 1, 5, 3, 2, 2, None, True),
    ("T = 1", 3, 1, 1, 2, 3, None, True),
]


def _mask(kind, rng, b, n, t_q, t_k):
    """A boolean mask for jax's layout; every query row keeps key 0 (none fully masked)."""
    if kind is None:
        return None
    if kind == "keys":  # key padding [B, 1, 1, T_k]: lengths ≥ 1
        lengths = rng.integers(1, t_k + 1, b)
        return jnp.asarray(np.arange(t_k)[None, None, None, :]
                           < lengths[:, None, None, None])
    m = rng.random((b, n, t_q, t_k)) < 0.5
    m[..., 0] = True
    return jnp.asarray(m)


@functools.cache
def _jax_case(case_id):
    _, b, t_q, t_k, n, d, kind, causal = next(c for c in JAX_CASES if c[0] == case_id)
    rng = np.random.default_rng(0)
    q, k, v = _normal(rng, (b, t_q, n, d)), _normal(rng, (b, t_k, n, d)), _normal(
        rng, (b, t_k, n, d))
    mask = _mask(kind, rng, b, n, t_q, t_k)
    do = _normal(rng, (b, t_q, n, d))

    @jax.jit
    def run(q, k, v, do):
        def theirs(q, k, v):
            return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)

        return {"o": funnet.dot_product_attention(q, k, v, mask=mask, causal=causal),
                "jax_o": theirs(q, k, v),
                "hand": funnet.dot_product_attention_backward(q, k, v, do, mask=mask,
                                                              causal=causal),
                "jax_grad": jax.grad(lambda *a: jnp.vdot(theirs(*a), do),
                                     argnums=(0, 1, 2))(q, k, v)}

    return run(q, k, v, do)


@pytest.mark.parametrize("case_id", [c[0] for c in JAX_CASES])
def test_values_and_gradients_equal_jax_nn_dot_product_attention(case_id):
    r = _jax_case(case_id)
    assert r["o"].dtype == jnp.float64
    np.testing.assert_allclose(r["o"], r["jax_o"], **JAX_TOL)
    single_key = r["o"].shape[1] == 1  # T = 1: P ≡ 1, so O = V and dq = dk = 0 exactly
    for i, (ours, theirs) in enumerate(zip(r["hand"], r["jax_grad"])):
        assert ours.dtype == jnp.float64
        np.testing.assert_allclose(ours, theirs, **JAX_TOL)
        if single_key and i < 2:
            np.testing.assert_array_equal(ours, 0.0)
        else:
            assert np.max(np.abs(np.asarray(theirs))) > 1e-2  # a non-trivial check


def test_a_fully_masked_row_gives_zero_where_jax_gives_the_mean_of_the_values():
    rng = np.random.default_rng(1)
    b, t, n, d = 2, 4, 2, 3
    q, k, v, do = (_normal(rng, (b, t, n, d)) for _ in range(4))
    mask = np.ones((b, n, t, t), bool)
    mask[0, 1, 2] = False  # batch 0, head 1, query 2: no key
    mask[1, 0, :, 1] = False  # and an ordinary masked column
    mask = jnp.asarray(mask)

    @jax.jit
    def run(q, k, v, do):
        def ours(*a):
            return funnet.dot_product_attention(*a, mask=mask)

        def theirs(*a):
            return jax.nn.dot_product_attention(*a, mask=mask)

        empty = jnp.zeros((b, t, n, 1), bool).at[0, 2, 1].set(True)  # that row, as [B,T,N]
        do_rest = jnp.where(empty, 0.0, do)  # jax's gradient without that row's cotangent
        return (ours(q, k, v), theirs(q, k, v),
                funnet.dot_product_attention_backward(q, k, v, do, mask=mask),
                jax.grad(lambda *a: jnp.vdot(ours(*a), do), argnums=(0, 1, 2))(q, k, v),
                jax.grad(lambda *a: jnp.vdot(theirs(*a), do_rest), argnums=(0, 1, 2))(q, k, v))

    o, jax_o, hand, formula, jax_rest = run(q, k, v, do)
    # funnet: output 0 and no gradient through the row; no NaN anywhere
    np.testing.assert_array_equal(o[0, 2, 1], 0.0)
    assert all(np.all(np.isfinite(g)) for g in (*hand, *formula))
    np.testing.assert_array_equal(hand[0][0, 2, 1], 0.0)  # dq of that query
    # jax: the row attends uniformly to every key, masked ones included (the mean of v)
    np.testing.assert_allclose(jax_o[0, 2, 1], np.mean(np.asarray(v)[0, :, 1], axis=0),
                               **JAX_TOL)
    # every other entry agrees; and the gradients agree once that row sends none in jax
    rest = np.ones(o.shape, bool)
    rest[0, 2, 1] = False
    np.testing.assert_allclose(np.asarray(o)[rest], np.asarray(jax_o)[rest], **JAX_TOL)
    for ours, theirs in zip(hand, jax_rest):
        np.testing.assert_allclose(ours, theirs, **JAX_TOL)
    # jax.grad of funnet's formula (with its double where) equals the hand rule
    assert_trees_close(formula, hand, **TIGHT)
    # a masked key gets no gradient from the queries that may not see it
    np.testing.assert_array_equal(hand[1][1, 1, 0], 0.0)
    np.testing.assert_array_equal(hand[2][1, 1, 0], 0.0)


# --- the function: hand backward == formula witness == central differences ------------------

# (id, B, T_q, T_k, N, d, d_v, mask kind, causal): masks with fully masked rows
HAND_CASES = [
    ("no mask, d_v != d", 2, 3, 4, 2, 3, 5, None, False),
    ("random mask with empty rows", 2, 4, 5, 2, 3, 2, "holes", False),
    ("causal and key padding", 2, 4, 4, 1, 2, 3, "keys", True),
    ("T = 1", 2, 1, 1, 3, 2, 2, None, True),
    ("T_k = 1, masked", 2, 3, 1, 1, 2, 2, "holes", False),
]


@functools.cache
def _hand_case(case_id):
    _, b, t_q, t_k, n, d, dv, kind, causal = next(c for c in HAND_CASES if c[0] == case_id)
    rng = np.random.default_rng(2)
    q, k, v = (_normal(rng, (b, t, n, e)) for t, e in ((t_q, d), (t_k, d), (t_k, dv)))
    mask = None
    if kind == "holes":
        m = rng.random((b, n, t_q, t_k)) < 0.6
        m[0, 0, 0] = False  # a fully masked row
        mask = jnp.asarray(m)
    elif kind == "keys":
        mask = jnp.asarray(np.arange(t_k)[None, None, None, :]
                           < np.array([t_k, 1])[:, None, None, None])
    allowed = np.ones((1, 1, t_q, t_k), bool)
    if causal:
        allowed = allowed & causal_ref(t_q, t_k)
    if mask is not None:
        allowed = allowed & np.asarray(mask)
    do = _normal(rng, (b, t_q, n, dv))
    directions = _directions(rng, (q, k, v))

    @jax.jit
    def run(q, k, v, do, directions):
        hand = funnet.dot_product_attention_backward(q, k, v, do, mask=mask, causal=causal)
        ref_o, pull = jax.vjp(lambda *a: attention_ref(*a, allowed), q, k, v)
        cd = _central_differences(lambda *a: jnp.vdot(funnet.dot_product_attention(
            *a, mask=mask, causal=causal), do), (q, k, v), directions)
        along = jax.vmap(lambda t: _tree_dot(hand, t))(directions)
        return {"o": funnet.dot_product_attention(q, k, v, mask=mask, causal=causal),
                "ref_o": ref_o, "hand": hand, "ref": pull(do), "cd": cd, "along": along}

    return run(q, k, v, do, directions), allowed


@pytest.mark.parametrize("case_id", [c[0] for c in HAND_CASES])
def test_hand_backward_equals_the_formula_and_central_differences(case_id):
    r, allowed = _hand_case(case_id)
    assert_trees_close(r["o"], r["ref_o"], **TIGHT)
    assert_trees_close(r["hand"], r["ref"], **TIGHT)
    np.testing.assert_allclose(r["cd"], r["along"], **CD_TOL)
    assert np.all(np.abs(np.asarray(r["along"])) > 1e-3)  # a non-trivial check
    empty = ~np.any(np.broadcast_to(allowed, r["hand"][0].shape[:1] + (
        r["hand"][0].shape[2],) + allowed.shape[2:]), axis=-1)  # [B, N, T_q]
    if empty.any():  # fully masked rows: output 0 and dq 0 there
        np.testing.assert_array_equal(np.moveaxis(np.asarray(r["o"]), 1, 2)[empty], 0.0)
        np.testing.assert_array_equal(np.moveaxis(np.asarray(r["hand"][0]), 1, 2)[empty], 0.0)


def test_attention_weights_rows_sum_to_one_over_the_allowed_keys():
    rng = np.random.default_rng(3)
    q, k = _normal(rng, (2, 4, 2, 3)), _normal(rng, (2, 5, 2, 3))
    m = rng.random((2, 1, 4, 5)) < 0.6
    m[1, 0, 3] = False
    p = np.asarray(funnet.attention_weights(q, k, mask=jnp.asarray(m), causal=True))
    allowed = np.broadcast_to(m & causal_ref(4, 5), p.shape)
    np.testing.assert_array_equal(p[~allowed], 0.0)
    sums = p.sum(-1)
    np.testing.assert_allclose(sums[allowed.any(-1)], 1.0, rtol=1e-14)
    np.testing.assert_array_equal(sums[~allowed.any(-1)], 0.0)
    # O = P V
    v = _normal(rng, (2, 5, 2, 4))
    o = funnet.dot_product_attention(q, k, v, mask=jnp.asarray(m), causal=True)
    np.testing.assert_allclose(o, np.einsum("bnts,bsnd->btnd", p, v), **TIGHT)


def test_large_scores_do_not_overflow():
    # scores of size ~1e3 (inputs or projections not normalised): exp overflows float64
    # beyond ≈ 709, so each row's largest allowed score must be subtracted first, with a
    # mask and without. The witness, attention_ref, subtracts the row maximum too.
    rng = np.random.default_rng(4)
    b, t, n, d = 2, 4, 2, 3
    q, k = _normal(rng, (b, t, n, d), 30.0), _normal(rng, (b, t, n, d), 30.0)
    v, do = _normal(rng, (b, t, n, d)), _normal(rng, (b, t, n, d))
    holes = rng.random((b, n, t, t)) < 0.7
    holes[..., 0] = True  # no row fully masked
    scores = np.einsum("btnd,bsnd->bnts", q, k) / np.sqrt(d)
    assert scores.max() > 1e3 and scores[holes].max() > 1e3  # exp(S) = inf unshifted

    @jax.jit
    def run(q, k, v, do):
        out = {}
        for label, mask in (("no mask", None), ("mask", jnp.asarray(holes))):
            ref_o, pull = jax.vjp(lambda *a, m=mask: attention_ref(*a, m), q, k, v)
            out[label] = (funnet.dot_product_attention(q, k, v, mask=mask), ref_o,
                          funnet.dot_product_attention_backward(q, k, v, do, mask=mask),
                          pull(do))
        return out

    for label, (o, ref_o, hand, ref) in run(q, k, v, do).items():
        assert np.all(np.isfinite(o)), label
        assert_trees_close(o, ref_o, **TIGHT)
        assert_trees_close(hand, ref, **TIGHT)


# --- the layer: hand backward == formula witness == central differences == flax -------------

B, D, HEADS, DIM = 3, 4, 2, 6

# (id, options, T_q, T_k (None: self-attention), query mask, memory mask, D_kv)
LAYER_CASES = [
    ("self", {}, 4, None, None, None, D),
    ("self, key padding with holes and an empty sequence", {}, 5, None, "holes", None, D),
    ("self, causal, padding, out_dim=3", {"causal": True, "out_dim": 3}, 5, None, "prefix",
     None, D),
    ("self, T = 1", {"causal": True}, 1, None, None, None, D),
    ("cross, masks, a memory without a real step", {"cross": True}, 3, 5, "prefix", "holes",
     5),
    ("cross, causal, T_q > T_k", {"cross": True, "causal": True}, 4, 2, None, None, 3),
    ("cross, T_k = 1, query mask", {"cross": True, "out_dim": 2}, 3, 1, "holes", None, 2),
]


def _seq_mask(kind, rng, t):
    if kind is None:
        return None
    if kind == "prefix":
        return jnp.asarray(np.arange(t)[None, :] < np.array([t, 1, max(1, t - 2)])[:, None])
    m = rng.random((B, t)) < 0.6
    m[0] = False  # a sequence (or memory) without a real step
    m[1, 0] = True
    return jnp.asarray(m)


def _pack(x, m):
    return x if m is None else (x, m)


def _first(a):
    return a[0] if isinstance(a, tuple) else a


def funnet_to_flax(p, heads):
    """The mapping of docs/attention.md, read backwards: funnet params → flax's."""
    dh = p["W_q"].shape[1] // heads

    def dense(name):
        return {"kernel": p["W_" + name].reshape(-1, heads, dh),
                "bias": p["b_" + name].reshape(heads, dh)}

    return {"params": {"query": dense("q"), "key": dense("k"), "value": dense("v"),
                       "out": {"kernel": p["W_o"].reshape(heads, dh, -1), "bias": p["b_o"]}}}


def flax_to_funnet(v):
    """The mapping of docs/attention.md: flax params → funnet's."""
    f = v["params"]
    dim = f["query"]["kernel"].shape[1] * f["query"]["kernel"].shape[2]
    out = {}
    for name in ("query", "key", "value"):
        out["W_" + name[0]] = f[name]["kernel"].reshape(-1, dim)
        out["b_" + name[0]] = f[name]["bias"].reshape(dim)
    out["W_o"] = f["out"]["kernel"].reshape(dim, -1)
    out["b_o"] = f["out"]["bias"]
    return out


def _flax(options, xq, xkv, mq, mkv):
    """flax's module, its variables (random biases too) and its mask ``[B, 1, T_q, T_k]``."""
    module = nn.MultiHeadDotProductAttention(
        num_heads=HEADS, qkv_features=DIM, out_features=options.get("out_dim", D),
        param_dtype=jnp.float64, deterministic=True, bias_init=nn.initializers.normal(0.5))
    variables = module.init(KEY, xq, xkv)
    t_q, t_k = xq.shape[1], xkv.shape[1]
    mask = nn.make_attention_mask(jnp.ones((B, t_q)) if mq is None else mq,
                                  jnp.ones((B, t_k)) if mkv is None else mkv, dtype=jnp.bool_)
    if options.get("causal"):
        mask = mask & causal_ref(t_q, t_k)
    return module, variables, mask


@functools.cache
def _layer_case(case_id):
    """Everything a layer case compares, in one jitted program; params from flax's init."""
    _, options, t_q, t_k, kq, kkv, d_kv = next(c for c in LAYER_CASES if c[0] == case_id)
    cross, causal = options.get("cross", False), options.get("causal", False)
    rng = np.random.default_rng(4)
    layer = funnet.MultiHeadAttention(HEADS, DIM, **options)
    xq, mq = _normal(rng, (B, t_q, D)), _seq_mask(kq, rng, t_q)
    xkv, mkv = (_normal(rng, (B, t_k, d_kv)), _seq_mask(kkv, rng, t_k)) if cross else (xq, mq)
    module, variables, fmask = _flax(options, xq, xkv, mq, mkv)
    params = flax_to_funnet(variables)
    # where a query attends to something; elsewhere flax attends uniformly to every key
    real = np.asarray(fmask).any(axis=(1, 3))  # [B, T_q]

    def inputs_of(fl):
        if cross:
            return (_pack(fl[0], mq), _pack(fl[1], mkv))
        return _pack(fl[0], mq)

    floats = (xq, xkv) if cross else (xq,)
    dy = _normal(rng, (B, t_q, options.get("out_dim", D)))
    directions = _directions(rng, (params, floats))

    def ref(p, fl):
        return mha_ref(p, HEADS, fl[0], fl[-1], causal=causal, mq=mq, mkv=mkv)

    def flax_loss(v, fl):  # ⟨flax's output, dy⟩ on the rows where it attends to something
        out = module.apply(v, fl[0], fl[-1], mask=fmask)
        return jnp.vdot(jnp.where(real[:, :, None], out, 0.0), dy), out

    @jax.jit
    def run(params, floats, dy, directions, variables):
        out, res = layer.forward(params, inputs_of(floats))
        dy_in = (dy, None) if isinstance(out, tuple) else dy
        dparams, dx = layer.backward(params, res, dy_in)
        hand = (dparams, tuple(_first(d) for d in dx) if cross else (_first(dx),))
        ref_y, pull = jax.vjp(ref, params, floats)
        _, pull_apply = jax.vjp(lambda p, fl: _first(layer.apply(p, inputs_of(fl))),
                                params, floats)
        cd = _central_differences(
            lambda p, fl: jnp.vdot(_first(layer.apply(p, inputs_of(fl))), dy),
            (params, floats), directions)
        along = jax.vmap(lambda t: _tree_dot(hand, t))(directions)
        (_, flax_y), (flax_dv, flax_dx) = jax.value_and_grad(
            flax_loss, argnums=(0, 1), has_aux=True)(variables, floats)
        # funnet's hand gradient of the same objective: dy on those rows only
        dy_real = jnp.where(real[:, :, None], dy, 0.0)
        dp_real, dx_real = layer.backward(
            params, res, (dy_real, None) if isinstance(out, tuple) else dy_real)
        return {"out": out, "ref_y": ref_y, "hand": hand, "dx": dx, "ref": pull(dy),
                "apply_vjp": pull_apply(dy), "cd": cd, "along": along, "flax_y": flax_y,
                "flax": (flax_to_funnet(flax_dv), flax_dx),
                "hand_real": (dp_real, tuple(_first(d) for d in dx_real) if cross
                              else (_first(dx_real),))}

    r = run(params, floats, dy, directions, variables)
    given = inputs_of(floats)
    return r, given, (mq, mkv), cross, real, params, variables


@pytest.mark.parametrize("case_id", [c[0] for c in LAYER_CASES])
def test_layer_backward_equals_the_formula_and_central_differences(case_id):
    r, given, (mq, mkv), cross, _, params, _ = _layer_case(case_id)
    y = _first(r["out"])
    assert_trees_close(y, r["ref_y"], **TIGHT)
    assert_trees_close(r["hand"], r["ref"], **TIGHT)
    assert_trees_close(r["hand"], r["apply_vjp"], **TIGHT)  # jax.grad of apply: no NaN
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(r["hand"]))
    np.testing.assert_allclose(r["cd"], r["along"], **CD_TOL)
    assert np.all(np.abs(np.asarray(r["along"])) > 1e-3)  # a non-trivial check
    # the key bias shifts each row's scores by a constant: no gradient (math §11.3); O(1)
    # sums of O(1) terms cancel to rounding
    np.testing.assert_allclose(r["hand"][0]["b_k"], 0.0, atol=1e-13)
    dW_k = np.abs(np.asarray(r["hand"][0]["W_k"]))
    if r["hand"][1][-1].shape[1] == 1:  # one key: P ≡ 1 whatever the scores, dK = 0
        np.testing.assert_array_equal(dW_k, 0.0)
    else:
        assert dW_k.max() > 1e-3
    # a tuple in gives a tuple out, the mask echoed; the masks get None
    q_in = given[0] if cross else given
    assert isinstance(r["out"], tuple) == isinstance(q_in, tuple)
    if isinstance(q_in, tuple):
        np.testing.assert_array_equal(r["out"][1], q_in[1])
    for part, x in zip(r["dx"], given) if cross else ((r["dx"], given),):
        assert isinstance(part, tuple) == isinstance(x, tuple)
        assert not isinstance(part, tuple) or part[1] is None
    # padding steps output 0 and get no gradient (as queries, keys and values)
    dxq = r["hand"][1][0]
    if mq is not None:
        np.testing.assert_array_equal(np.asarray(y)[~np.asarray(mq)], 0.0)
        if not cross:
            np.testing.assert_array_equal(np.asarray(dxq)[~np.asarray(mq)], 0.0)
    if cross and mkv is not None:
        np.testing.assert_array_equal(np.asarray(r["hand"][1][1])[~np.asarray(mkv)], 0.0)
        # a memory without a real step: O = 0, so y = b_o at the real queries
        empty = ~np.asarray(mkv).any(axis=1)
        real_q = np.ones(y.shape[:2], bool) if mq is None else np.asarray(mq)
        rows = np.asarray(y)[empty[:, None] & real_q]
        assert rows.size and np.all(rows == np.asarray(params["b_o"])[None])


@pytest.mark.parametrize("case_id", [c[0] for c in LAYER_CASES])
def test_the_layer_equals_flax_multi_head_dot_product_attention(case_id):
    r, _, (mq, _), _, real, params, variables = _layer_case(case_id)
    assert_trees_close(funnet_to_flax(params, HEADS), variables, rtol=0, atol=0)  # a bijection
    y, theirs = np.asarray(_first(r["out"])), np.asarray(r["flax_y"])
    assert real.any()
    np.testing.assert_allclose(y[real], theirs[real], **TIGHT)
    # elsewhere funnet has O = 0: y = 0 at a padding query, y = b_o at a real one
    padding = np.zeros(real.shape, bool) if mq is None else ~np.asarray(mq)
    np.testing.assert_array_equal(y[padding], 0.0)
    alone = ~real & ~padding
    np.testing.assert_array_equal(y[alone], np.broadcast_to(
        params["b_o"], (int(alone.sum()),) + params["b_o"].shape))
    # the hand backward equals jax.grad through flax (params through the mapping, inputs)
    assert_trees_close(r["hand_real"], r["flax"], **TIGHT)


def test_a_padded_batch_equals_each_sequence_alone():
    lengths, t = (5, 2, 1), 5
    layer = funnet.MultiHeadAttention(HEADS, DIM, causal=True)
    params = init_params(layer, ((-1, t, D), (-1, t)), seed=6)
    rng = np.random.default_rng(6)
    x, dy = _normal(rng, (3, t, D)), _normal(rng, (3, t, D))
    mask = jnp.asarray(np.arange(t)[None, :] < np.array(lengths)[:, None])

    @jax.jit
    def run(params, x, dy):
        (y, _), res = layer.forward(params, (x, mask))
        dp, (dx, _) = layer.backward(params, res, (dy, None))
        alone = []
        for b, n in enumerate(lengths):
            y_b, res_b = layer.forward(params, x[b:b + 1, :n])
            alone.append((y_b, layer.backward(params, res_b, dy[b:b + 1, :n])))
        return y, dp, dx, alone

    y, dp, dx, alone = run(params, x, dy)
    total = jax.tree_util.tree_map(lambda *g: sum(g), *(a[1][0] for a in alone))
    for b, n in enumerate(lengths):
        y_b, (_, dx_b) = alone[b]
        np.testing.assert_allclose(y[b:b + 1, :n], y_b, **TIGHT)
        np.testing.assert_allclose(dx[b:b + 1, :n], dx_b, **TIGHT)
    assert_trees_close(dp, total, **TIGHT)  # the batch's gradient: the sum over sequences
    # noise in the padding changes nothing
    noise = jnp.where(mask[:, :, None], 0.0, _normal(rng, x.shape))
    np.testing.assert_allclose(layer.apply(params, (x + noise, mask))[0], y, **TIGHT)


# --- in a model ------------------------------------------------------------------------------


def test_embedding_attention_stack_passes_check_model():
    vocab, t = 7, 4
    model = funnet.serial(
        funnet.parallel(funnet.Embedding(vocab, D), funnet.Identity),  # (ids, mask)
        funnet.MultiHeadAttention(HEADS, 4, causal=True),  # (y, mask)
        funnet.parallel(funnet.Dense(vocab), funnet.Identity),
        funnet.LastStep,
    )
    params = init_params(model, ((-1, t), (-1, t)), seed=8)
    rng = np.random.default_rng(8)
    ids = jnp.asarray(rng.integers(0, vocab, (3, t)))
    mask = jnp.asarray(np.arange(t)[None, :] < np.array([4, 2, 3])[:, None])
    labels = jnp.asarray(rng.integers(0, vocab, 3))
    # the hand δ-recursion (and the δ at each layer's output) against jax.grad of the
    # formulas; each layer's hand rule at the inputs it saw
    result = funnet.check_model(model, params, (ids, mask), labels,
                                funnet.softmax_cross_entropy, l2=0.1,
                                methods=("hand", "formula"))
    assert result.ok and result.deltas.ok and all(v.status == "ok" for v in result.layers)


def test_decay_names_and_dtypes():
    layer = funnet.MultiHeadAttention(2, 4, cross=True, causal=True, out_dim=3)
    assert layer.name == "MultiHeadAttention(2, 4, out_dim=3, causal=True, cross=True)"
    params = init_params(layer, ((-1, 3, D), (-1, 2, 5)))
    decayed = layer.decay_mask(params)
    assert decayed == {k: k.startswith("W") for k in params}
    # init: Glorot weights, zero biases, shapes for (queries, memory)
    shapes = (((-1, 3, D), (-1, 3)), (-1, 2, 5))
    box = {}
    p = jax.jit(lambda k: box.setdefault("init", layer.init(k, shapes))[1])(KEY)  # one compile
    assert box["init"][0] == ((-1, 3, 3), (-1, 3))
    assert p["W_k"].shape == (5, 4) and p["W_o"].shape == (4, 3)
    assert all(np.all(p[k] == 0) for k in p if k.startswith("b"))
    assert all(np.all(p[k] != 0) for k in p if k.startswith("W"))
    # gradients in the dtype of what they differentiate (float32 params, float64 inputs)
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    xq, xkv = jnp.ones((2, 3, D)), jnp.ones((2, 2, 5), jnp.float32)

    @jax.jit
    def run(p32, xq, xkv):
        y, res = layer.forward(p32, (xq, xkv))
        return y, layer.backward(p32, res, jnp.ones_like(y)), jax.grad(
            lambda p, a, b: jnp.sum(layer.apply(p, (a, b))), argnums=(0, 1, 2))(p32, xq, xkv)

    y, (grads, (dxq, dxkv)), ref = run(p32, xq, xkv)
    assert y.dtype == jnp.float64 and dxq.dtype == jnp.float64 and dxkv.dtype == jnp.float32
    assert jax.tree_util.tree_map(lambda a: a.dtype, (grads, dxq, dxkv)) == \
        jax.tree_util.tree_map(lambda a: a.dtype, ref)
    assert_trees_close((grads, dxq, dxkv), ref, rtol=1e-5, atol=1e-6)  # float32 params


# --- bad input: clear errors, before any compute ----------------------------------------------

_MHA = funnet.MultiHeadAttention(2, 4)
_P = init_params(_MHA, (-1, 3, D))
_X = jnp.ones((2, 3, D))
_CROSS = funnet.MultiHeadAttention(2, 4, cross=True)
_Q4 = jnp.ones((2, 3, 2, 4))

BAD = [
    ("heads", lambda: funnet.MultiHeadAttention(0, 4), funnet.LayerError,
     ["MultiHeadAttention: heads", "≥ 1", "0"]),
    ("dim multiple", lambda: funnet.MultiHeadAttention(3, 4), funnet.LayerError,
     ["MultiHeadAttention", "dim 4", "multiple of heads 3"]),
    ("causal flag", lambda: funnet.MultiHeadAttention(2, 4, causal="yes"), funnet.LayerError,
     ["MultiHeadAttention", "causal", "'yes'"]),
    ("init rank", lambda: _MHA.init(KEY, (-1, D)), funnet.LayerError,
     ["MultiHeadAttention(2, 4)", "rank 2"]),
    ("init mask shape", lambda: _MHA.init(KEY, ((-1, 3, D), (-1, 4))), funnet.LayerError,
     ["MultiHeadAttention(2, 4)", "(-1, 4)", "(-1, 3, 4)"]),
    ("init cross not a pair", lambda: _CROSS.init(KEY, (-1, 3, D)), funnet.LayerError,
     ["MultiHeadAttention(2, 4, cross=True)", "(queries, memory)"]),
    ("init cross batch", lambda: _CROSS.init(KEY, ((2, 3, D), (5, 3, D))), funnet.LayerError,
     ["MultiHeadAttention(2, 4, cross=True)", "(2, 3, 4)", "(5, 3, 4)", "batch"]),
    ("rank-2 input", lambda: _MHA.apply(_P, jnp.ones((2, D))), funnet.LayerError,
     ["MultiHeadAttention(2, 4)", "(2, 4)", "[batch, time, features]"]),
    ("integer input", lambda: _MHA.apply(_P, jnp.ones((2, 3, D), jnp.int32)),
     funnet.LayerError, ["MultiHeadAttention(2, 4)", "int32", "Embedding"]),
    ("features", lambda: _MHA.apply(_P, jnp.ones((2, 3, 5))), funnet.LayerError,
     ["MultiHeadAttention(2, 4)", "(2, 3, 5)", "W_q (4, 4)"]),
    ("params shapes", lambda: _MHA.apply({**_P, "b_o": jnp.ones(5)}, _X), funnet.ParamsError,
     ["MultiHeadAttention(2, 4)", "b_o (5,)", "W_o [4, out_dim]"]),
    ("out width", lambda: _MHA.apply({**_P, "W_o": jnp.ones((4, 5)), "b_o": jnp.ones(5)}, _X),
     funnet.ParamsError, ["MultiHeadAttention(2, 4)", "W_o has shape (4, 5)", "size 4"]),
    ("mask shape", lambda: _MHA.apply(_P, (_X, jnp.ones((2, 4)))), funnet.LayerError,
     ["MultiHeadAttention(2, 4)", "mask", "(2, 4)", "(2, 3)"]),
    ("params keys", lambda: _MHA.apply({"W_q": _P["W_q"]}, _X), funnet.ParamsError,
     ["MultiHeadAttention(2, 4)", "['W_k', 'W_o', 'W_q', 'W_v', 'b_k', 'b_o', 'b_q', 'b_v']"]),
    ("cross input not a pair", lambda: _CROSS.apply(_P, _X), funnet.LayerError,
     ["MultiHeadAttention(2, 4, cross=True)", "(queries, memory)", "(2, 3, 4)"]),
    ("cross batch", lambda: _CROSS.apply(_P, (_X, jnp.ones((3, 3, D)))), funnet.LayerError,
     ["MultiHeadAttention(2, 4, cross=True)", "(2, 3, 4)", "(3, 3, 4)", "batch"]),
    ("dy shape", lambda: _MHA.backward(_P, _MHA.forward(_P, _X)[1], jnp.ones((2, 3, 5))),
     funnet.LayerError, ["MultiHeadAttention(2, 4)", "dy", "(2, 3, 5)", "(2, 3, 4)"]),
    ("function rank", lambda: funnet.dot_product_attention(_X, _X, _X), funnet.LayerError,
     ["dot_product_attention", "q", "(2, 3, 4)", "rank 4"]),
    ("function shapes", lambda: funnet.dot_product_attention(_Q4, jnp.ones((2, 3, 2, 5)), _Q4),
     funnet.LayerError, ["dot_product_attention", "(2, 3, 2, 4)", "(2, 3, 2, 5)"]),
    ("function mask", lambda: funnet.dot_product_attention(_Q4, _Q4, _Q4,
                                                          mask=jnp.ones((2, 3, 3), bool)),
     funnet.LayerError, ["dot_product_attention", "mask", "(2, 3, 3)", "(2, 2, 3, 3)"]),
    ("function integers", lambda: funnet.attention_weights(_Q4.astype(int), _Q4),
     funnet.LayerError, ["attention_weights", "q", "int"]),
    ("backward do", lambda: funnet.dot_product_attention_backward(_Q4, _Q4, _Q4, _X),
     funnet.LayerError, ["dot_product_attention_backward", "do", "(2, 3, 4)", "(2, 3, 2, 4)"]),
]


@pytest.mark.parametrize("call, error, fragments", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input_raises_a_clear_error(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    # raised while tracing, before XLA sees anything: jit gives the very same error
    with pytest.raises(error) as jitted:
        jax.jit(lambda: call())()
    assert str(jitted.value) == str(info.value)
