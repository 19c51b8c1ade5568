"""Recurrent layers (docs/math.md §9): RNN, LSTM, GRU, LastStep, Bidirectional.

Witnesses, all in float64 and all written here or in ``_registry.py``, none from funnet:

* values: NumPy loops of PyTorch's equations in PyTorch's parameter layout, mapped to
  funnet's params as docs/recurrent.md says (so the mapping is tested too);
* gradients: the hand BPTT against ``jax.vjp`` of ``recurrent_ref`` (a jnp loop over time)
  and against central differences of the layer's own ``apply`` along random directions;
* masks: the masked batch against each sequence run alone at its own length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _registry import assert_trees_close, init_params, recurrent_ref

import funnet

F, H = 3, 4
KEY = jax.random.PRNGKey(0)
KINDS = ("RNN", "LSTM", "GRU")
# hand BPTT vs jax.vjp of the loop: the same float64 sums in another order (a few ulp of
# O(1) values, growing mildly with T)
TIGHT = {"rtol": 1e-10, "atol": 1e-12}
# central differences, step ε = 1e-6 on O(1) values: truncation O(ε²) ≈ 1e-12, rounding
# ≈ 1e-16/ε = 1e-10, times the O(10) size of the directional derivative
CD_EPS = 1e-6
CD_TOL = {"rtol": 1e-6, "atol": 1e-8}


def _layer(kind: str, hidden: int = H, **options) -> funnet.Layer:
    return getattr(funnet, kind)(hidden, **options)


def _normal(rng, shape, scale=1.0):
    return jnp.asarray(scale * rng.standard_normal(shape))


def _state(kind, rng, batch, hidden=H):
    if kind == "LSTM":
        return (_normal(rng, (batch, hidden), 0.5), _normal(rng, (batch, hidden), 0.5))
    return _normal(rng, (batch, hidden), 0.5)


def _prefix_mask(lengths, time):
    return jnp.asarray(np.arange(time)[None, :] < np.asarray(lengths)[:, None])


def _inputs(x, mask, h0):
    """The sequence input convention: x, (x, mask) or (x, mask, h0)."""
    if h0 is not None:
        return (x, mask, h0)
    return x if mask is None else (x, mask)


def _strip(out, form):
    """A layer's output without the echoed mask: ``(y or h_T, state)``."""
    seq, state = out
    return (seq[0] if form > 1 and isinstance(seq, tuple) else seq), state


def _tree_dot(a, b):
    return sum(jnp.vdot(u, v) for u, v in zip(jax.tree_util.tree_leaves(a),
                                                jax.tree_util.tree_leaves(b)))


# --- values: NumPy loops of PyTorch's equations ----------------------------------------


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def torch_forward(kind, w, x, h0, c0=None):
    """PyTorch's nn.RNN / nn.LSTM / nn.GRU (one layer, batch_first) in NumPy float64."""
    w_ih, w_hh, b_ih, b_hh = w
    h, c, ys = h0, c0, []
    for t in range(x.shape[1]):
        gi = x[:, t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        if kind == "RNN":  # h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
            h = np.tanh(gi + gh)
        elif kind == "LSTM":  # rows of W_ih: i, f, g, o
            i, f, g, o = np.split(gi + gh, 4, axis=1)
            c = _sig(f) * c + _sig(i) * np.tanh(g)
            h = _sig(o) * np.tanh(c)
        else:  # GRU rows r, z, n; n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
            (ir, iz, in_), (hr, hz, hn) = np.split(gi, 3, axis=1), np.split(gh, 3, axis=1)
            r, z = _sig(ir + hr), _sig(iz + hz)
            n = np.tanh(in_ + r * hn)
            h = (1 - z) * n + z * h
        ys.append(h)
    return np.stack(ys, axis=1), (h, c)


def torch_to_funnet(kind, w):
    """The mapping of docs/recurrent.md."""
    w_ih, w_hh, b_ih, b_hh = (jnp.asarray(a) for a in w)
    if kind == "GRU":
        return {"W_x": w_ih.T, "W_h": w_hh.T, "b_x": b_ih, "b_h": b_hh}
    return {"W_x": w_ih.T, "W_h": w_hh.T, "b": b_ih + b_hh}


@pytest.mark.parametrize("kind", KINDS)
def test_values_match_pytorch_equations(kind):
    rng = np.random.default_rng(0)
    gates = {"RNN": 1, "LSTM": 4, "GRU": 3}[kind]
    k = 1 / np.sqrt(H)  # PyTorch's init range U(-1/√H, 1/√H)
    w = tuple(rng.uniform(-k, k, s) for s in
              ((gates * H, F), (gates * H, H), (gates * H,), (gates * H,)))
    x = rng.standard_normal((3, 6, F))
    h0, c0 = 0.5 * rng.standard_normal((2, 3, H))
    y_ref, (h_ref, c_ref) = torch_forward(kind, w, x, h0, c0)
    layer = _layer(kind, return_state=True)
    state = (jnp.asarray(h0), jnp.asarray(c0)) if kind == "LSTM" else jnp.asarray(h0)
    (y, _), final = layer.apply(torch_to_funnet(kind, w), (jnp.asarray(x), None, state))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-14)
    if kind == "LSTM":
        np.testing.assert_allclose(final[0], h_ref, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(final[1], c_ref, rtol=1e-12, atol=1e-14)
    else:
        np.testing.assert_allclose(final, h_ref, rtol=1e-12, atol=1e-14)


# --- hand BPTT == jax.vjp of the loop == central differences ---------------------------------

# (kind, T, batch, mask, h0, return_sequences); mask: None, "prefix" (lengths) or "holes"
# (any 0/1 pattern, one sequence without a real step)
GRID = [
    (kind, *case) for kind in KINDS for case in (
        (1, 1, None, False, True),
        (1, 5, "prefix", True, True),
        (2, 1, None, True, False),
        (2, 5, "prefix", False, False),
        (7, 5, "holes", True, True),
        (7, 1, None, False, True),
    )
] + [("LSTM", 50, 2, "prefix", True, True)]


def _mask(kind_of_mask, rng, batch, time):
    if kind_of_mask is None:
        return None
    if kind_of_mask == "prefix":
        lengths = rng.integers(1, time + 1, batch)
        lengths[0] = max(1, time - 1) if time > 1 else 1  # one sequence shorter than T
        return _prefix_mask(lengths, time)
    m = rng.random((batch, time)) < 0.6
    m[0] = False  # a sequence without a real step: state h0 throughout, output 0
    return jnp.asarray(m)


def _problem(kind, T, B, mask_kind, with_h0, seed=0):
    rng = np.random.default_rng(seed)
    layer = _layer(kind, return_state=True, return_sequences=True)
    params = init_params(layer, (-1, T, F), seed=seed)
    x = _normal(rng, (B, T, F))
    mask = _mask(mask_kind, rng, B, T)
    h0 = _state(kind, rng, B) if with_h0 else None
    return params, x, mask, h0


@functools.cache
def _bundle(kind, T, B, mask_kind, with_h0, sequences):
    """Everything a grid case compares, computed in one jitted program."""
    layer = _layer(kind, return_state=True, return_sequences=sequences)
    params, x, mask, h0 = _problem(kind, T, B, mask_kind, with_h0)
    form = 3 if with_h0 else 2 if mask is not None else 1
    rng = np.random.default_rng(1)
    out_shape = (B, T, H) if sequences else (B, H)
    dy = (_normal(rng, out_shape), _state(kind, rng, B))
    # three random directions in (params, x, h0), stacked on a leading axis, and their negatives
    directions = jax.tree_util.tree_map(lambda a: _normal(rng, (3, *a.shape)), (params, x, h0))

    def ref(p, x, h0):
        ys, state = recurrent_ref(kind, p, x, mask, h0)
        return (ys if sequences else (state[0] if kind == "LSTM" else state)), state

    def objective(p, x, h0):  # ⟨layer(θ), dy⟩ through the layer's own apply
        return _tree_dot(_strip(layer.apply(p, _inputs(x, mask, h0)), form), dy)

    @jax.jit
    def run(params, x, h0, dy, directions):
        out, res = layer.forward(params, _inputs(x, mask, h0))
        seq_dy = (dy[0], None) if (form > 1 and sequences) else dy[0]
        dparams, dxs = layer.backward(params, res, funnet.RecurrentOutput(seq_dy, dy[1]))
        dx, dh0 = (dxs, None) if form == 1 else (dxs[0], dxs[2] if form == 3 else None)
        ref_out, pull = jax.vjp(ref, params, x, h0)
        steps = jax.tree_util.tree_map(lambda v: jnp.concatenate([v, -v]) * CD_EPS, directions)
        values = jax.vmap(lambda d: objective(*jax.tree_util.tree_map(
            jnp.add, (params, x, h0), d)))(steps)  # one vmapped scan for all 6 evaluations
        cd = (values[:3] - values[3:]) / (2 * CD_EPS)
        hand = (dparams, dx, dh0)
        along = jax.vmap(lambda d: _tree_dot(hand, d))(directions)
        return {"out": _strip(out, form), "ref_out": ref_out, "hand": hand,
                "ref": pull(dy), "cd": cd, "along": along, "dxs": dxs}

    return run(params, x, h0, dy, directions), mask


@pytest.mark.parametrize("kind, T, B, mask_kind, with_h0, sequences", GRID,
                         ids=[f"{k}-T{t}-B{b}-mask={m}-h0={h}-seq={s}"
                              for k, t, b, m, h, s in GRID])
def test_bptt_matches_the_loop_and_central_differences(kind, T, B, mask_kind, with_h0,
                                                       sequences):
    r, mask = _bundle(kind, T, B, mask_kind, with_h0, sequences)
    assert_trees_close(r["out"], r["ref_out"], **TIGHT)  # forward: the scan is the loop
    dparams, dx, dh0 = r["hand"]
    ref_dparams, ref_dx, ref_dh0 = r["ref"]
    assert_trees_close(dparams, ref_dparams, **TIGHT)
    assert_trees_close(dx, ref_dx, **TIGHT)
    if with_h0:
        assert_trees_close(dh0, ref_dh0, **TIGHT)
    else:
        assert dh0 is None
    np.testing.assert_allclose(r["cd"], r["along"], **CD_TOL)
    assert np.all(np.abs(np.asarray(r["along"])) > 1e-3)  # a non-trivial check
    if mask is not None:  # padding steps get no gradient; the mask gets None
        np.testing.assert_array_equal(np.asarray(dx)[~np.asarray(mask)], 0.0)
        assert r["dxs"][1] is None


# --- masks: a masked batch is each sequence run alone at its own length ----------------------


@functools.cache
def _alone(kind):
    lengths = (5, 1, 3)
    T, B = max(lengths), len(lengths)
    layer = _layer(kind, return_state=True)
    params, x, _, h0 = _problem(kind, T, B, None, True, seed=3)
    mask = _prefix_mask(lengths, T)
    rng = np.random.default_rng(4)
    dy = (_normal(rng, (B, T, H)), _state(kind, rng, B))

    @jax.jit
    def run(params, x, h0, dy):
        out, res = layer.forward(params, (x, mask, h0))
        grads = layer.backward(params, res, funnet.RecurrentOutput((dy[0], None), dy[1]))
        alone = []
        for b, n in enumerate(lengths):
            h0_b = jax.tree_util.tree_map(lambda a, b=b: a[b:b + 1], h0)
            dy_b = funnet.RecurrentOutput((dy[0][b:b + 1, :n], None),
                                          jax.tree_util.tree_map(lambda a, b=b: a[b:b + 1], dy[1]))
            out_b, res_b = layer.forward(params, (x[b:b + 1, :n], None, h0_b))
            alone.append((out_b, layer.backward(params, res_b, dy_b)))
        return out, grads, alone

    return lengths, run(params, x, h0, dy)


@pytest.mark.parametrize("kind", KINDS)
def test_masked_batch_equals_each_sequence_alone(kind):
    lengths, (out, (dparams, (dx, dmask, dh0)), alone) = _alone(kind)
    (y, _), final = out
    assert dmask is None
    total = jax.tree_util.tree_map(jnp.zeros_like, dparams)
    for b, (n, (((y_b, _), final_b), (dparams_b, (dx_b, _, dh0_b)))) in enumerate(
            zip(lengths, alone)):
        np.testing.assert_allclose(y[b, :n], y_b[0], **TIGHT)
        np.testing.assert_array_equal(y[b, n:], 0.0)  # padding: zero output
        assert_trees_close(jax.tree_util.tree_map(lambda a, b=b: a[b], final),
                           jax.tree_util.tree_map(lambda a: a[0], final_b), **TIGHT)
        np.testing.assert_allclose(dx[b, :n], dx_b[0], **TIGHT)
        np.testing.assert_array_equal(dx[b, n:], 0.0)  # padding: zero gradient
        assert_trees_close(jax.tree_util.tree_map(lambda a, b=b: a[b], dh0),
                           jax.tree_util.tree_map(lambda a: a[0], dh0_b), **TIGHT)
        total = jax.tree_util.tree_map(jnp.add, total, dparams_b)
    assert_trees_close(dparams, total, **TIGHT)  # the batch gradient is the sum of the alones


# --- outputs, state, continuation -----------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_last_step_final_state_and_continuation(kind):
    rng = np.random.default_rng(5)
    T, B = 4, 3
    full = _layer(kind, return_state=True)
    params = init_params(full, (-1, T, F))
    x, h0 = _normal(rng, (B, T, F)), _state(kind, rng, B)
    mask = _prefix_mask([4, 1, 3], T)
    last_layer = _layer(kind, return_sequences=False)

    @jax.jit
    def run(params, x, h0):
        (y, m), final = full.apply(params, (x, mask, h0))
        last = last_layer.apply(params, (x, mask, h0))
        # stateful use: two chunks, the state of the first fed to the second, is one run
        (y1, _), s1 = full.apply(params, (x[:, :2], None, h0))
        (y2, _), s2 = full.apply(params, (x[:, 2:], None, s1))
        (y_all, _), s_all = full.apply(params, (x, None, h0))
        return (y, m, final, last, funnet.LastStep.apply((), (y, mask)),
                jnp.concatenate([y1, y2], axis=1), s2, y_all, s_all)

    _, m, final, last, last_step, chunked, s2, y_all, s_all = run(params, x, h0)
    np.testing.assert_array_equal(m, mask)  # the mask is passed on for the next layer
    h_final = final[0] if kind == "LSTM" else final
    np.testing.assert_allclose(last, h_final, **TIGHT)
    np.testing.assert_allclose(last_step, h_final, **TIGHT)
    np.testing.assert_allclose(chunked, y_all, **TIGHT)
    assert_trees_close(s2, s_all, **TIGHT)
    # init gives the shapes: a tuple in, a tuple out; the state as RecurrentOutput.state
    box = {}
    jax.eval_shape(lambda k: box.setdefault("out", full.init(k, ((-1, T, F), (-1, T), None))[0])
                   and 0, KEY)
    want_state = ((-1, H), (-1, H)) if kind == "LSTM" else (-1, H)
    assert box["out"] == funnet.RecurrentOutput(((-1, T, H), (-1, T)), want_state)


def test_last_step_backward_and_empty_sequences():
    x = jnp.arange(24.0).reshape(2, 4, 3)
    mask = jnp.array([[1, 1, 0, 0], [0, 0, 0, 0]])
    y, res = funnet.LastStep.forward((), (x, mask))
    np.testing.assert_array_equal(y, np.stack([x[0, 1], np.zeros(3)]))
    _, (dx, dmask) = funnet.LastStep.backward((), res, jnp.ones((2, 3)))
    expected = np.zeros((2, 4, 3))
    expected[0, 1] = 1.0
    np.testing.assert_array_equal(dx, expected)
    assert dmask is None


# --- stacks, training, the formula witness ------------------------------------------------


def test_masked_stack_with_serial_passes_check_model():
    rng = np.random.default_rng(7)
    net = funnet.serial(funnet.RNN(4), funnet.LSTM(3), funnet.GRU(2), funnet.LastStep,
                        funnet.Dense(1))
    params = init_params(net, ((-1, 5, F), (-1, 5)))
    x, y = _normal(rng, (4, 5, F)), _normal(rng, (4, 1))
    mask = _prefix_mask([5, 2, 4, 1], 5)
    # the hand δ-recursion through three masked scans (and the δ at each layer's output)
    # against jax.grad of the formula wiring; each layer's hand rule at the inputs it saw
    result = funnet.check_model(net, params, (x, mask), y, funnet.mse, l2=0.1,
                                methods=("hand", "formula"))
    assert result.ok and result.deltas.ok and all(v.status == "ok" for v in result.layers)
    # and the padding changes nothing: the loss does not see what lies past each end
    noise = jnp.where(mask[:, :, None], 0.0, _normal(rng, x.shape))
    apply = jax.jit(net.apply)
    np.testing.assert_allclose(apply(params, (x + noise, mask)), apply(params, (x, mask)),
                               **TIGHT)


def test_hand_training_equals_autodiff_step_for_step():
    rng = np.random.default_rng(8)
    net = funnet.serial(funnet.parallel(funnet.Embedding(6, 3), funnet.Identity), funnet.LSTM(4),
                        funnet.LastStep, funnet.Dense(3))
    ids = jnp.asarray(rng.integers(0, 6, (8, 5)))
    mask = _prefix_mask(rng.integers(1, 6, 8), 5)
    labels = jnp.asarray(rng.integers(0, 3, 8))
    params = init_params(net, ((-1, 5), (-1, 5)))
    tx = optax.adam(0.05)
    states = {g: funnet.TrainState.create(params, tx, jax.random.PRNGKey(0))
              for g in ("hand", "reverse")}
    steps = {g: funnet.make_step(net, funnet.softmax_cross_entropy, tx, l2=1e-3, grad=g)
             for g in states}
    for _ in range(3):
        for g, step in steps.items():
            states[g], _ = step(states[g], ((ids, mask), labels))
        assert_trees_close(states["hand"].params, states["reverse"].params, rtol=1e-9, atol=1e-11)


def test_the_formula_wiring_is_independent_of_the_hand_derivative():
    # a tanh whose hand "derivative" is wrong by a factor 2: the hand backward (and jax.vjp
    # through the custom_vjp wiring) use it, the formula wiring does not, so check_layer
    # catches it
    wrong = funnet.define_activation("wrong_tanh", jnp.tanh, lambda x, y: 2 * (1 - y * y))
    rnn = funnet.RNN(H, activation=wrong)
    params = init_params(rnn, (-1, 3, F))
    x = _normal(np.random.default_rng(9), (2, 3, F))
    with pytest.raises(funnet.GradientCheckError, match=r"RNN\(4, activation=wrong_tanh\)"):
        funnet.check_layer(rnn, params, x)
    right = funnet.RNN(H)
    assert funnet.check_layer(right, params, x).ok
    # the gates of LSTM and GRU are rewired too: no custom_vjp left in the formula wiring
    for kind in ("LSTM", "GRU"):
        layer = _layer(kind)
        p = init_params(layer, (-1, 3, F))
        wired = str(jax.make_jaxpr(functools.partial(layer.apply, x=x))(p))
        plain = str(jax.make_jaxpr(functools.partial(layer.rewired("formula").apply, x=x))(p))
        assert "custom_vjp" in wired and "custom_vjp" not in plain


def test_decay_dtypes_and_jit():
    for kind in KINDS:
        layer = _layer(kind)
        params = init_params(layer, (-1, 3, F))
        mask = layer.decay_mask(params)
        assert mask["W_x"] and mask["W_h"] and not any(
            v for k, v in mask.items() if k.startswith("b"))
    lstm = funnet.LSTM(H)
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), init_params(lstm, (-1, 3, F)))
    x = jnp.ones((2, 3, F), jnp.float32)
    y, res = lstm.forward(params, x)
    grads, dx = lstm.backward(params, res, jnp.ones_like(y))
    assert y.dtype == jnp.float32 and dx.dtype == jnp.float32
    assert all(g.dtype == jnp.bfloat16 for g in jax.tree_util.tree_leaves(grads))
    # PyTorch's forget bias is 0 unless set: forget_bias=0.0 leaves b to b_init
    _, p0 = funnet.LSTM(2, forget_bias=0.0).init(jax.random.PRNGKey(0), (-1, 3, F))
    np.testing.assert_array_equal(p0["b"], np.zeros(8))


@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_inputs_of_another_dtype_get_gradients_of_their_dtype(kind):
    """x and h0 in float32 with float64 params: the scan runs in float64 (x and h0 cast up)
    and dx, dh0 come back in float32, the dtype of what they differentiate (as jax.grad's),
    with the values of the all-float64 run (the witness: x and h0 given in float64)."""
    rng = np.random.default_rng(43)
    T, B = 3, 2
    layer = _layer(kind, return_state=True)
    params = init_params(layer, (-1, T, F), seed=43)
    to32, to64 = (functools.partial(jax.tree_util.tree_map, lambda a, t=t: a.astype(t))
                  for t in (jnp.float32, jnp.float64))
    x, h0 = to32((_normal(rng, (B, T, F)), _state(kind, rng, B)))
    dy = funnet.RecurrentOutput((_normal(rng, (B, T, H)), None), _state(kind, rng, B))
    got, want = (layer.backward(params, layer.forward(params, (xs, None, s))[1], dy)
                 for xs, s in ((x, h0), to64((x, h0))))
    dx, dh0 = got[1][0], got[1][2]
    assert all(d.dtype == jnp.float32 for d in jax.tree_util.tree_leaves((dx, dh0)))
    assert all(g.dtype == jnp.float64 for g in jax.tree_util.tree_leaves(got[0]))
    assert_trees_close(to64(got), want, rtol=1e-6, atol=1e-7)


def test_init_draws_each_parameter_and_each_direction_from_its_own_key():
    """init splits its key: W_x, W_h and each bias (the GRU's b_x and b_h) get keys of their
    own, and so do Bidirectional's two directions. With one initializer for all of them and
    F = H (equal shapes) a shared key gave W_x == W_h, b_x == b_h, or two directions that
    start as the same layer."""
    normal = jax.nn.initializers.normal(1.0)
    for kind in KINDS:
        layer = _layer(kind, W_x_init=normal, W_h_init=normal, b_init=normal)
        _, p = layer.init(KEY, (-1, 5, H))
        assert p["W_x"].shape == p["W_h"].shape
        assert not np.allclose(p["W_x"], p["W_h"]), kind
        if kind == "GRU":
            assert not np.allclose(p["b_x"], p["b_h"])
        _, (p_f, p_b) = funnet.Bidirectional(layer).init(KEY, (-1, 5, H))
        assert not any(np.allclose(p_f[k], p_b[k]) for k in p_f), kind


# --- Bidirectional ---------------------------------------------------------------------------


def _reverse_each(a, lengths):
    """NumPy: each sequence reversed within its own length, padding left in place."""
    a = np.array(a)
    for b, n in enumerate(lengths):
        a[b, :n] = a[b, :n][::-1].copy()
    return a


def test_bidirectional_with_lengths():
    rng = np.random.default_rng(10)
    lengths, T = (5, 2, 3), 5
    mask = _prefix_mask(lengths, T)
    layer = funnet.Bidirectional(funnet.LSTM(H))
    params = init_params(layer, (-1, T, F))
    x = _normal(rng, (3, T, F))

    def ref(p, x):  # the forward LSTM, and the LSTM of each sequence reversed in its length
        rev = jnp.asarray(_reverse_each(np.eye(T)[None].repeat(3, 0), lengths))  # [B, T, T]
        back = recurrent_ref("LSTM", p[1], jnp.einsum("bst,btf->bsf", rev, x), mask)[0]
        return jnp.concatenate([recurrent_ref("LSTM", p[0], x, mask)[0],
                                jnp.einsum("bst,btf->bsf", rev, back)], axis=-1)

    last = funnet.Bidirectional(funnet.LSTM(H, return_sequences=False))

    @jax.jit
    def run(params, x, dy, dy_last, dy_at_ends):
        (y, m), res = layer.forward(params, (x, mask))
        ref_y, pull = jax.vjp(ref, params, x)
        _, res_last = last.forward(params, (x, mask))
        return (y, m, ref_y, layer.backward(params, res, (dy, None)), pull(dy),
                last.apply(params, (x, mask)), last.backward(params, res_last, dy_last),
                pull(dy_at_ends))

    dy = _normal(rng, (3, T, 2 * H))
    # the last-step form's gradient is the sequence form's with dy at those steps only
    dy_last = _normal(rng, (3, 2 * H))
    dy_at_ends = np.zeros((3, T, 2 * H))
    dy_at_ends[np.arange(3), np.asarray(lengths) - 1, :H] = dy_last[:, :H]
    dy_at_ends[:, 0, H:] = dy_last[:, H:]
    (y, m, ref_y, (dparams, (dx, dmask)), (ref_dparams, ref_dx), both, last_grads,
     ref_last_grads) = run(params, x, dy, dy_last, jnp.asarray(dy_at_ends))
    np.testing.assert_array_equal(m, mask)
    np.testing.assert_allclose(y, ref_y, **TIGHT)
    assert_trees_close(dparams, ref_dparams, **TIGHT)
    assert_trees_close(dx, ref_dx, **TIGHT)
    assert dmask is None
    # the last-step form: the forward state at each end, the backward one at step 0
    ends = y[np.arange(3), np.asarray(lengths) - 1, :H]
    np.testing.assert_allclose(both, np.concatenate([ends, y[:, 0, H:]], axis=-1), **TIGHT)
    assert_trees_close(last_grads, (ref_last_grads[0], (ref_last_grads[1], None)), **TIGHT)


def test_reverse_time_is_a_mask_aware_involution():
    rng = np.random.default_rng(11)
    x = _normal(rng, (3, 6, 2))
    mask = jnp.asarray(rng.random((3, 6)) < 0.5)
    reverse = jax.jit(funnet.reverse_time)
    r = reverse(x, mask)
    np.testing.assert_array_equal(reverse(r, mask), x)
    for b in range(3):
        real = np.flatnonzero(mask[b])
        np.testing.assert_array_equal(r[b, real], x[b, real[::-1]])  # real steps reversed
        pad = np.flatnonzero(~np.asarray(mask[b]))
        np.testing.assert_array_equal(r[b, pad], x[b, pad])  # padding in place
    np.testing.assert_array_equal(funnet.reverse_time(x), x[:, ::-1])


# --- bad input ---------------------------------------------------------------------------------

_LSTM = funnet.LSTM(H)
_P = init_params(_LSTM, (-1, 3, F))
_X = jnp.ones((2, 3, F))

BAD = [
    ("hidden 0", lambda: funnet.LSTM(0), funnet.LayerError, ["LSTM: hidden", "got 0"]),
    ("activation not an Activation", lambda: funnet.RNN(3, activation=jnp.tanh),
     funnet.LayerError, ["RNN", "funnet.Activation"]),
    ("rank-2 input", lambda: _LSTM.apply(_P, jnp.ones((2, F))),
     funnet.LayerError, ["LSTM(4)", "(2, 3)", "[batch, time, features]"]),
    ("integer input", lambda: _LSTM.apply(_P, jnp.ones((2, 3, F), jnp.int32)),
     funnet.LayerError, ["LSTM(4)", "int32", "Embedding"]),
    ("features", lambda: _LSTM.apply(_P, jnp.ones((2, 3, 5))),
     funnet.LayerError, ["LSTM(4)", "(2, 3, 5)", "W_x", "(3, 16)"]),
    ("mask shape", lambda: _LSTM.apply(_P, (_X, jnp.ones((2, 4)))),
     funnet.LayerError, ["LSTM(4)", "mask", "(2, 4)", "(2, 3)"]),
    ("h0 of an LSTM", lambda: _LSTM.apply(_P, (_X, None, jnp.ones((2, H)))),
     funnet.LayerError, ["LSTM(4)", "(h0, c0)", "(2, 4)"]),
    ("h0 shape", lambda: funnet.GRU(H).apply(init_params(funnet.GRU(H), (-1, 3, F)),
                                              (_X, None, jnp.ones((2, 5)))),
     funnet.LayerError, ["GRU(4)", "(2, 5)", "(2, 4)"]),
    ("params", lambda: _LSTM.apply({"W_x": _P["W_x"]}, _X),
     funnet.ParamsError, ["LSTM(4)", "['W_h', 'W_x', 'b']"]),
    ("params shapes", lambda: _LSTM.apply({**_P, "W_h": jnp.ones((4, 4))}, _X),
     funnet.ParamsError, ["LSTM(4)", "W_h (4, 4)", "[4, 16]"]),
    ("tuple of 4", lambda: _LSTM.apply(_P, (_X, None, None, None)),
     funnet.LayerError, ["LSTM(4)", "tuple of 4"]),
    ("init rank", lambda: _LSTM.init(KEY, (-1, F)), funnet.LayerError, ["LSTM(4)", "rank 2"]),
    ("init mask shape", lambda: _LSTM.init(KEY, ((-1, 3, F), (-1, 4))),
     funnet.LayerError, ["LSTM(4)", "(-1, 4)", "(-1, 3, 3)"]),
    ("Bidirectional of return_state",
     lambda: funnet.Bidirectional(funnet.GRU(2, return_state=True)).init(KEY, (-1, 3, F)),
     funnet.LayerError, ["Bidirectional(GRU(2, return_state=True))", "return_state"]),
    ("Bidirectional h0",
     lambda: funnet.Bidirectional(funnet.GRU(2)).init(KEY, ((-1, 3, F), None, (-1, 2))),
     funnet.LayerError, ["Bidirectional(GRU(2))", "(x, mask)"]),
]


@pytest.mark.parametrize("call, error, fragments", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input_raises_a_clear_error(call, error, fragments):
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


# --- non-finite values at padding steps ------------------------------------------------------

_PAD_MASK = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 1, 0, 1, 0]], bool)  # end, holes


def _padded(x, value):
    """``x`` with every padding step of ``_PAD_MASK`` set to ``value``."""
    return jnp.where(jnp.asarray(_PAD_MASK)[:, :, None], x, value)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_values_change_no_output_and_no_gradient(kind):
    """A padding step's input is ignored: NaN, ±inf or a huge value there gives exactly the
    outputs and gradients (hand BPTT and jax.grad of apply) of zeros there, and its input
    gradient is 0. Witness: jax.vjp of the plain loop ``recurrent_ref`` on the zeroed x."""
    layer = _layer(kind, return_state=True)
    B, T = _PAD_MASK.shape
    rng = np.random.default_rng(20)
    params = init_params(layer, (-1, T, F), seed=20)
    x = _padded(_normal(rng, (B, T, F)), 0.0)
    mask = jnp.asarray(_PAD_MASK)
    dy = (_normal(rng, (B, T, H)), _state(kind, rng, B))

    def objective(p, x):
        (y, _), state = layer.apply(p, (x, mask))
        return _tree_dot((y, state), dy)

    @jax.jit
    def run(params, x):
        out, res = layer.forward(params, (x, mask))
        hand = layer.backward(params, res, funnet.RecurrentOutput((dy[0], None), dy[1]))
        return _strip(out, 2), (hand[0], hand[1][0]), jax.grad(objective, (0, 1))(params, x)

    ref_out, pull = jax.vjp(lambda p, x: recurrent_ref(kind, p, x, mask), params, x)
    ref_grads = pull(dy)
    zero_run = run(params, x)
    assert_trees_close(zero_run[0], ref_out, **TIGHT)
    assert_trees_close(zero_run[1], ref_grads, **TIGHT)
    for value in (np.nan, np.inf, -np.inf, 1e300):
        got = run(params, _padded(x, value))
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(got))
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, zero_run)
        np.testing.assert_array_equal(np.asarray(got[1][1])[~_PAD_MASK], 0.0)
        np.testing.assert_array_equal(np.asarray(got[2][1])[~_PAD_MASK], 0.0)


def test_padding_values_are_ignored_through_bidirectional_and_an_embedding_under_jit():
    """Bidirectional(LSTM) with NaN at padding steps, and a masked GRU fed by
    ``parallel(Embedding, Identity)`` whose padding ids are out of range (NaN rows under
    jit): loss, hand gradients and jax.grad are finite and those of in-range padding."""
    B, T = _PAD_MASK.shape
    mask = jnp.asarray(_PAD_MASK)
    rng = np.random.default_rng(21)
    bi = funnet.Bidirectional(funnet.LSTM(H))
    p_bi = init_params(bi, (-1, T, F), seed=21)
    x = _padded(_normal(rng, (B, T, F)), 0.0)
    dy = _normal(rng, (B, T, 2 * H))

    @jax.jit
    def run_bi(x):
        (y, _), res = bi.forward(p_bi, (x, mask))
        hand = bi.backward(p_bi, res, (dy, None))
        auto = jax.grad(lambda p, x: jnp.vdot(bi.apply(p, (x, mask))[0], dy), (0, 1))(p_bi, x)
        return y, (hand[0], hand[1][0]), auto

    zero = run_bi(x)
    got = run_bi(_padded(x, np.nan))
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(got))
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, zero)

    V = 7
    net = funnet.serial(funnet.parallel(funnet.Embedding(V, F), funnet.Identity),
                        funnet.GRU(H), funnet.LastStep, funnet.Dense(2))
    p_net = init_params(net, ((-1, T), (-1, T)), seed=22)
    ids = jnp.asarray(rng.integers(0, V, (B, T)))
    labels = jnp.array([0, 1, 1])
    loss = funnet.softmax_cross_entropy
    hand_vg = funnet.backprop.value_and_grad(net, loss)

    @jax.jit
    def run_net(ids):
        auto = jax.value_and_grad(lambda p: loss(net.apply(p, (ids, mask)), labels))(p_net)
        return hand_vg(p_net, (ids, mask), labels), auto

    in_range = run_net(jnp.where(mask, ids, 0))
    for pad in (-1, V):
        got = run_net(jnp.where(mask, ids, pad))
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree_util.tree_leaves(got))
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, in_range)


# --- a return_state output fed to another sequence layer --------------------------------------


@pytest.mark.parametrize("after", [funnet.GRU(2), funnet.LastStep,
                                   funnet.Bidirectional(funnet.GRU(2))], ids=repr)
def test_a_return_state_output_is_not_taken_for_x_and_mask(after):
    """``RecurrentOutput(outputs, state)`` is not ``(x, mask)``: with H == T the state
    ``[B, H]`` has the mask's shape and was silently read as one. Refused at init and at
    apply (eager and under jit), naming the layer and the fix."""
    T = 4
    net = funnet.serial(funnet.GRU(T, return_state=True), after)
    with pytest.raises(funnet.LayerError) as info:
        net.init(KEY, (-1, T, F))
    message = str(info.value)
    for fragment in (f"serial[1] › {after.name}", "return_state=True", ".outputs"):
        assert fragment in message, (fragment, message)
    gru = funnet.GRU(T, return_state=True)
    p_gru = init_params(gru, (-1, T, F))
    out = gru.apply(p_gru, jnp.ones((2, T, F)))
    p_after = init_params(after, (-1, T, T))
    for apply in (after.apply, jax.jit(after.apply)):
        with pytest.raises(funnet.LayerError, match=r"returns its state \(return_state=True\)"):
            apply(p_after, out)
    assert after.apply(p_after, out.outputs).shape[0] == 2  # its outputs are fine


# --- Bidirectional: one key per direction ----------------------------------------------------


def test_bidirectional_gives_each_direction_its_own_key():
    """The key is split, ``k_f, k_b = jax.random.split(key)``: the two directions' dropout
    masks are independent (not one mask mirrored in time), the result is deterministic for
    a given key, and the hand forward draws the masks apply draws."""
    drop = funnet.Dropout(0.5)
    bi = funnet.Bidirectional(drop)
    _, p = bi.init(KEY, (-1, 6, 4))
    x = jnp.asarray(np.random.default_rng(30).uniform(1.0, 2.0, (2, 6, 4)))
    key = jax.random.PRNGKey(3)
    y = bi.apply(p, x, key=key, train=True)
    k_f, k_b = jax.random.split(key)
    np.testing.assert_array_equal(y[..., :4], drop.apply((), x, key=k_f, train=True))
    back = jnp.flip(drop.apply((), jnp.flip(x, 1), key=k_b, train=True), 1)
    np.testing.assert_array_equal(y[..., 4:], back)
    kept_f, kept_b = np.asarray(y[..., :4] != 0), np.asarray(y[..., 4:] != 0)
    assert (kept_f != kept_b).any() and (kept_f != kept_b[:, ::-1]).any()
    np.testing.assert_array_equal(bi.apply(p, x, key=key, train=True), y)
    y_hand, _ = bi.forward(p, x, key=key, train=True)
    np.testing.assert_array_equal(y_hand, y)
    assert (bi.apply(p, x, key=jax.random.PRNGKey(4), train=True) != y).any()


# --- init takes what apply takes: rank 3 --------------------------------------------------------


@pytest.mark.parametrize("layer", [funnet.RNN(3), funnet.LSTM(3), funnet.GRU(3),
                                   funnet.LastStep, funnet.Bidirectional(funnet.GRU(3))],
                         ids=repr)
@pytest.mark.parametrize("shape", [(-1, 5, 2, 7), ((-1, 5, 2, 7), (-1, 5))], ids=["x", "pair"])
def test_init_refuses_a_sequence_shape_of_rank_other_than_3(layer, shape):
    """apply refuses x of rank ≠ 3; init did accept rank 4 (a GRU then reported a wrong
    output shape, LastStep dropped the time axis of a 4-D input)."""
    with pytest.raises(funnet.LayerError) as info:
        layer.init(KEY, shape)
    for fragment in (layer.name, "(-1, 5, 2, 7)", "rank 4", "[batch, time, features]"):
        assert fragment in str(info.value), (fragment, str(info.value))


# --- small errors that named no function, argument or shape -----------------------------------

_GRU = funnet.GRU(H)
_PG = init_params(_GRU, (-1, 3, F))
_LSTM_S = funnet.LSTM(H, return_state=True)
_PLS = init_params(_LSTM_S, (-1, 3, F))
_RES_S = _LSTM_S.forward(_PLS, _X)[1]
_RES_G = _GRU.forward(_PG, (_X, jnp.ones((2, 3))))[1]

SMALL = [
    ("reverse_time mask shape", lambda: funnet.reverse_time(jnp.ones((2, 5, 3)), jnp.ones((2, 7))),
     ValueError, ["reverse_time", "mask", "(2, 7)", "(2, 5)", "(2, 5, 3)"]),
    ("reverse_time rank 1", lambda: funnet.reverse_time(jnp.ones((5,))),
     ValueError, ["reverse_time", "x", "(5,)", "[batch, time, ...]"]),
    ("reverse_time list", lambda: funnet.reverse_time([[1.0, 2.0]]),
     TypeError, ["reverse_time", "x must be an array", "list"]),
    ("LastStep T = 0", lambda: funnet.LastStep.apply((), jnp.ones((2, 0, 3))),
     funnet.LayerError, ["LastStep", "(2, 0, 3)", "no time steps"]),
    ("GRU T = 0", lambda: _GRU.apply(_PG, jnp.ones((2, 0, F))),
     funnet.LayerError, ["GRU(4)", "(2, 0, 3)", "no time steps"]),
    ("forget_bias None", lambda: funnet.LSTM(2, forget_bias=None),
     funnet.LayerError, ["LSTM: forget_bias must be a finite number", "None"]),
    ("forget_bias str", lambda: funnet.LSTM(2, forget_bias="1"),
     funnet.LayerError, ["LSTM: forget_bias must be a finite number", "'1'"]),
    ("forget_bias nan", lambda: funnet.LSTM(2, forget_bias=float("nan")),
     funnet.LayerError, ["LSTM: forget_bias must be a finite number", "nan"]),
    ("GRU h0 as a 1-tuple", lambda: _GRU.apply(_PG, (_X, None, (jnp.zeros((2, H)),))),
     funnet.LayerError, ["GRU(4)", "one array h0 of shape (2, 4)", "a tuple of 1",
                         "[(2, 4)]"]),
    ("LSTM h0 alone", lambda: _LSTM.apply(_P, (_X, None, jnp.zeros((2, H)))),
     funnet.LayerError, ["LSTM(4)", "(h0, c0)", "an array of shape (2, 4)"]),
    ("a list as the input", lambda: _GRU.apply(_PG, [[[1.0, 2.0, 3.0]] * 3]),
     funnet.LayerError, ["GRU(4)", "a list", "jnp.asarray"]),
    ("return_state backward, dy an array",
     lambda: _LSTM_S.backward(_PLS, _RES_S, jnp.ones((2, 3, H))),
     funnet.LayerError, ["LSTM(4, return_state=True)", "RecurrentOutput(d_outputs, d_state)",
                         "(2, 3, 4)"]),
    ("return_state backward, LSTM d_state an array",
     lambda: _LSTM_S.backward(_PLS, _RES_S, (jnp.ones((2, 3, H)), jnp.ones((2, H)))),
     funnet.LayerError, ["LSTM(4, return_state=True)", "d_state", "(dh, dc)", "(2, 4)"]),
    ("backward, dy of the wrong width",
     lambda: _GRU.backward(_PG, _GRU.forward(_PG, _X)[1], jnp.ones((2, 3, 5))),
     funnet.LayerError, ["GRU(4)", "(2, 3, 5)", "(2, 3, 4)"]),
    ("backward, dy without the mask's None", lambda: _GRU.backward(_PG, _RES_G, jnp.ones((2, 3, H))),
     funnet.LayerError, ["GRU(4)", "(dy, None)", "(y, mask)"]),
]


@pytest.mark.parametrize("call, error, fragments",
                         [pytest.param(*b[1:], id=b[0]) for b in SMALL])
def test_small_mistakes_raise_errors_naming_the_function_argument_and_shapes(call, error,
                                                                              fragments):
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


# --- Bidirectional: what the inner layer may return ----------------------------------------


@pytest.mark.parametrize("inner, shown", [
    (funnet.Reshape((2, -1)), "(-1, 2, 12)"),  # time axis of another length
    (funnet.Reshape((6, 2, 2)), "(-1, 6, 2, 2)"),  # rank 4
], ids=repr)
def test_bidirectional_refuses_an_inner_output_that_is_not_a_sequence_or_a_vector(inner, shown):
    """Reversing back an output whose axis 1 is not the input's time axis pairs unrelated
    steps (or, with a mask, crashes); init and apply refuse it, naming the shapes."""
    bi = funnet.Bidirectional(inner)
    with pytest.raises(funnet.LayerError) as info:
        bi.init(KEY, (-1, 6, 4))
    for fragment in (bi.name, shown, "[B, T, H]", "[B, H]", "(-1, 6, 4)"):
        assert fragment in str(info.value), (fragment, str(info.value))
    with pytest.raises(funnet.LayerError, match=r"\[B, T, H\]"):
        bi.apply(((), ()), jnp.ones((2, 6, 4)))


def test_bidirectional_of_a_per_step_layer_is_two_per_step_maps():
    """What the docstring says of a layer without memory along time (Dense): each direction
    maps every step on its own, so y = [x W_f + b_f ‖ x W_b + b_b] (a NumPy witness)."""
    bi = funnet.Bidirectional(funnet.Dense(3))
    assert bi.init(KEY, (-1, 6, 4))[0] == (-1, 6, 6)
    p = init_params(bi, (-1, 6, 4))
    x = np.random.default_rng(40).standard_normal((2, 6, 4))
    want = np.concatenate([x @ np.asarray(q["W"]) + np.asarray(q["b"]) for q in p], axis=-1)
    np.testing.assert_allclose(bi.apply(p, jnp.asarray(x)), want, rtol=1e-12, atol=1e-12)


def test_rnn_calls_its_activation_with_the_activations_defaults():
    """As the docstring says: RNN(activation=f) uses f's default hyperparameters, and an
    activation with other defaults (dataclasses.replace) gives other ones. NumPy witness of
    h_t = leaky(x_t W_x + h_{t-1} W_h + b) with slope 0.01 and 0.2."""
    import dataclasses

    steep = dataclasses.replace(funnet.leaky_relu, name="leaky_relu(0.2)",
                                defaults={"slope": 0.2})
    x = np.random.default_rng(41).standard_normal((2, 4, F))
    for activation, slope in ((funnet.leaky_relu, 0.01), (steep, 0.2)):
        rnn = funnet.RNN(H, activation=activation)
        assert rnn.name == f"RNN({H}, activation={activation.name})"
        p = {k: np.asarray(v) for k, v in init_params(rnn, (-1, 4, F), seed=41).items()}
        h, want = np.zeros((2, H)), []
        for t in range(4):
            a = x[:, t] @ p["W_x"] + h @ p["W_h"] + p["b"]
            h = np.where(a > 0, a, slope * a)
            want.append(h)
        np.testing.assert_allclose(rnn.apply(p, jnp.asarray(x)), np.stack(want, 1),
                                   rtol=1e-12, atol=1e-12)
