"""Gradients through time from ``return_deltas=True`` (docs/recurrent.md).

For a recurrent layer at the top level of a ``serial``, ``deltas[l]`` is a
``TimeDeltas(output, h, c)``: ``output`` the gradient reaching the layer's output (the entry
every layer has), ``h = ∂L/∂h_t`` and, for the LSTM, ``c = ∂L/∂c_t``, all from the layer's
own backward scan. The witness is written here, independent of funnet: a plain ``jnp`` loop
of each recurrence with zero probes added to every state ``h_t`` (to ``c_t`` before
``h_t = o ⊙ tanh(c_t)``) and to every layer's output, and ``jax.grad`` with respect to the
probes; float64, with and without masks.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import assert_trees_close, init_params

import funnet
from funnet.contract import InnerDeltas

B, T, F = 4, 6, 3
# the hand scan against jax.grad of the loop: the same float64 sums in another order, a
# few ulp of values of size ≤ 1 (the gradients here are 1e-3 … 1)
TIGHT = {"rtol": 1e-10, "atol": 1e-13}
# leading padding, a gap, trailing padding, and a sequence with no real step at all
MASK = np.array([[1, 1, 1, 1, 1, 1],
                 [1, 1, 1, 0, 0, 0],
                 [0, 1, 1, 0, 1, 0],
                 [0, 0, 0, 0, 0, 0]], bool)


def _sig(v):
    return 1.0 / (1.0 + jnp.exp(-v))


def ref_recurrent(kind, p, x, m, ph, pc):
    """``(y [B, T, H], h_T)`` of one layer, one step at a time, with probes.

    ``ph[:, t]`` is added to the state ``h_t`` after step ``t`` (at a padding step, to the
    state carried on), ``pc[:, t]`` to the LSTM's ``c_t`` where it is computed, before
    ``h_t = o ⊙ tanh(c_t)``; ``y_t = m_t ⊙ h_t``. The steps run in a ``lax.scan`` (a
    smaller program to compile than a Python loop) of the plain formulas.
    """
    H = p["W_h"].shape[0]

    def step(hc, inputs):
        (h, c), (xt, mt, pht, pct) = hc, inputs
        mt = mt[:, None]
        if kind == "RNN":  # h_t = tanh(x_t W_x + h_{t-1} W_h + b)
            h_new = jnp.tanh(xt @ p["W_x"] + h @ p["W_h"] + p["b"][None])
        elif kind == "LSTM":  # blocks i, f, g, o
            a = xt @ p["W_x"] + h @ p["W_h"] + p["b"][None]
            i, f, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
            c = jnp.where(mt, _sig(f) * c + _sig(i) * jnp.tanh(g), c) + pct
            h_new = _sig(o) * jnp.tanh(c)
        else:  # GRU, PyTorch's variant: n = tanh(g^x_n + r ⊙ (h W_hn + b_hn))
            gx = xt @ p["W_x"] + p["b_x"][None]
            gh = h @ p["W_h"] + p["b_h"][None]
            r = _sig(gx[:, :H] + gh[:, :H])
            z = _sig(gx[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
            h_new = (1 - z) * n + z * h
        h = jnp.where(mt, h_new, h) + pht
        return (h, c), jnp.where(mt, h, 0.0)

    zeros = jnp.zeros((x.shape[0], H))
    time_major = [jnp.swapaxes(v, 0, 1) for v in (x, m, ph, pc)]
    (h, _), ys = jax.lax.scan(step, (zeros, zeros), time_major)
    return jnp.swapaxes(ys, 0, 1), h


def ref_last_step(y, m):
    """``y[b, last_b]``, the last step with mask 1 (zeros for a row without one)."""
    t = jnp.arange(y.shape[1])[None, :]
    last = jnp.max(jnp.where(m, t, -1), axis=1)
    picked = (t == last[:, None]).astype(y.dtype)  # all 0 where last = -1
    return jnp.einsum("bt,bth->bh", picked, y)


# Each stack: its layers, and for each layer its kind in the reference ("last": LastStep,
# "final": the recurrent layer with return_sequences=False).
STACKS = {
    "rnn-lstm-gru-laststep": (
        lambda: funnet.serial(funnet.RNN(4), funnet.LSTM(3), funnet.GRU(2), funnet.LastStep,
                              funnet.Dense(1)),
        ("RNN", "LSTM", "GRU", "last", "dense")),
    "gru-rnn-lstm-final": (
        lambda: funnet.serial(funnet.GRU(3), funnet.RNN(4),
                              funnet.LSTM(2, return_sequences=False), funnet.Dense(1)),
        ("GRU", "RNN", "LSTM-final", "dense")),
}


def ref_loss(kinds, params, x, m, target, probes):
    """The stack's loss ``1/(2B) Σ (ŷ - y)²`` with ``probes = (out, h, c)``: ``out[l]`` added
    to layer ``l``'s output, ``h[l]``/``c[l]`` inside recurrent layer ``l``."""
    out, ph, pc = probes
    a = x
    for l, (kind, p) in enumerate(zip(kinds, params)):
        if kind == "last":
            a = ref_last_step(a, m)
        elif kind == "dense":
            a = a @ p["W"] + p["b"][None]
        else:
            y, h_final = ref_recurrent(kind.split("-")[0], p, a, m, ph[l], pc[l])
            a = h_final if kind.endswith("final") else y
        a = a + out[l]
    return jnp.sum((a - target) ** 2) / (2 * x.shape[0])


@functools.cache
def ref_grad(name):
    """``(probes, m, params, x, target) -> (R, ∂R/∂probes)`` of the stack, compiled once."""
    kinds = STACKS[name][1]
    return jax.jit(jax.value_and_grad(
        lambda q, m, params, x, target: ref_loss(kinds, params, x, m, target, q)))


def _case(name, masked):
    build, kinds = STACKS[name]
    net = build()
    rng = np.random.default_rng([list(STACKS).index(name), int(masked)])
    m = MASK if masked else np.ones((B, T), bool)
    in_shape = ((-1, T, F), (-1, T)) if masked else (-1, T, F)
    params = init_params(net, in_shape, seed=3)
    x = jnp.asarray(rng.standard_normal((B, T, F)))
    target = jnp.asarray(rng.standard_normal((B, 1)))
    inputs = (x, jnp.asarray(m.astype(np.int32))) if masked else x
    return net, kinds, params, x, m, inputs, target


@functools.cache
def hand_deltas(name, masked):
    """The case and ``(value, deltas, grads)`` by ``value_and_grad(..., return_deltas=True)``."""
    case = _case(name, masked)
    net, _, params, _, _, inputs, target = case
    vg = funnet.backprop.value_and_grad(net, funnet.mse, return_deltas=True)
    value, grads, deltas = jax.jit(vg)(params, inputs, target)
    return case, value, deltas, grads


def _zero_probes(net, params, inputs, kinds):
    """Zeros shaped like each layer's output, and like its states (recurrent layers)."""
    outs, a = [], inputs
    for child, p in zip(net.children, params):
        a = jax.eval_shape(child.apply, p, a)  # shapes only: nothing runs
        y = a[0] if isinstance(a, tuple) else a
        outs.append(jnp.zeros(y.shape, y.dtype))
    states = [None if k in ("last", "dense") else jnp.zeros((B, T, p["W_h"].shape[0]))
              for k, p in zip(kinds, params)]
    return outs, states, states


@pytest.mark.parametrize("masked", [False, True], ids=["no mask", "masked"])
@pytest.mark.parametrize("name", list(STACKS))
def test_time_deltas_equal_grad_of_probes_in_a_plain_loop(name, masked):
    (net, kinds, params, x, m, inputs, target), value, deltas, _ = hand_deltas(name, masked)
    probes = _zero_probes(net, params, inputs, kinds)
    ref_value, (d_out, d_h, d_c) = ref_grad(name)(probes, m, params, x, target)
    np.testing.assert_allclose(value, ref_value, **TIGHT)
    assert len(deltas) == len(kinds)
    for l, (kind, d) in enumerate(zip(kinds, deltas)):
        if kind in ("last", "dense"):  # every other layer's entry: the array it always was
            assert isinstance(d, jax.Array)
            np.testing.assert_allclose(d, d_out[l], **TIGHT, err_msg=f"deltas[{l}]")
            continue
        assert isinstance(d, funnet.backprop.TimeDeltas)
        # output: exactly the entry of before, ∂L/∂y
        sequence_in = masked and kind != "LSTM-final"  # (y, mask) out: the mask gets None
        out = d.output[0] if sequence_in else d.output
        if sequence_in:
            assert d.output[1] is None
        np.testing.assert_allclose(out, d_out[l], **TIGHT, err_msg=f"deltas[{l}].output")
        assert d.h.shape == d_h[l].shape == (B, T, params[l]["W_h"].shape[0])
        np.testing.assert_allclose(d.h, d_h[l], **TIGHT, err_msg=f"deltas[{l}].h")
        if kind.startswith("LSTM"):
            np.testing.assert_allclose(d.c, d_c[l], **TIGHT, err_msg=f"deltas[{l}].c")
        else:
            assert d.c is None
        if kind != "LSTM-final":  # more than the output's gradient: what later steps send back
            assert float(jnp.max(jnp.abs(d.h - out))) > 1e-3


def test_masked_steps_pass_the_gradient_on_and_the_final_state_feeds_the_last():
    """The convention at padding steps: the state is the previous one carried on, so its
    gradient is what the next step sends back; a step adds ``m_t ⊙ dy_t``."""
    (_, _, _, _, m, _, _), _, deltas, _ = hand_deltas("gru-rnn-lstm-final", True)
    last = deltas[2]  # LSTM(2, return_sequences=False): only its final state is used
    # the final state's gradient reaches h_T, and passes trailing padding unchanged
    np.testing.assert_array_equal(last.h[:, -1], last.output)
    for b in range(B):
        for t in range(T - 1):
            if not m[b, t + 1]:  # step t+1 is padding: it hands δ on exactly
                np.testing.assert_array_equal(last.h[b, t], last.h[b, t + 1])
                if not m[b, t]:  # (at a real step, c_t also feeds h_t)
                    np.testing.assert_array_equal(last.c[b, t], last.c[b, t + 1])
                first = deltas[0]  # a sequence layer: plus the output's gradient at t
                np.testing.assert_allclose(
                    first.h[b, t], first.h[b, t + 1] + m[b, t] * first.output[0][b, t],
                    **TIGHT)
    # a sequence with no real step: its final state is h0 = 0, every step carries dy
    np.testing.assert_array_equal(last.h[3], jnp.broadcast_to(last.output[3], (T, 2)))
    # and at a real step of the GRU the gradient changes: it went through the cell
    assert float(jnp.max(jnp.abs(deltas[0].h[0, :-1] - deltas[0].h[0, 1:]))) > 1e-3


def test_check_model_delta_trace_checks_the_gradient_through_time():
    net, _, params, _, _, inputs, target = _case("rnn-lstm-gru-laststep", True)
    result = funnet.check_model(net, params, inputs, target, funnet.mse,
                                methods=("hand", "formula"), layers=False)
    paths = [p for p, _ in result.deltas.rows]
    assert result.deltas.inside == ("serial[2] › GRU(2) › h", "serial[1] › LSTM(3) › h",
                                    "serial[1] › LSTM(3) › c", "serial[0] › RNN(4) › h")
    assert paths.index("serial[1] › LSTM(3) › c") == paths.index("serial[1] › LSTM(3)") + 2
    assert result.deltas.ok

    # a recurrent layer whose reported ∂L/∂h_t is off at one step (its gradients are right):
    # the δ-trace names that layer's own backward (a small stack: less to compile)
    rnn = net.children[0]

    def off(params, res, dy):
        grads, dx, d = rnn.inner_deltas.backward(params, res, dy)
        return grads, dx, d._replace(h=d.h.at[:, 2].multiply(1.001))

    bad = funnet.layer(lambda k, s: rnn.init(k, s), rnn.forward, rnn.backward, name="RNN(4)",
                       inner_deltas=InnerDeltas(off, rnn.inner_deltas.probed, rnn.backward))
    wrong = funnet.serial(bad, funnet.LastStep, funnet.Dense(1))
    params = init_params(wrong, ((-1, T, F), (-1, T)), seed=4)
    with pytest.raises(funnet.GradientCheckError, match=r"inside a layer, at serial\[0\] › "
                       r"RNN\(4\) › h \(computed by that layer's own backward\)") as info:
        funnet.check_model(wrong, params, inputs, target, funnet.mse,
                           methods=("hand", "formula"), layers=False)
    trace = info.value.result.deltas
    assert trace.first_divergence == "serial[0] › RNN(4) › h"
    assert all(r.ok for p, r in trace.rows if p != "serial[0] › RNN(4) › h")


def test_inner_deltas_come_with_a_backward():
    rnn = funnet.RNN(2)
    with pytest.raises(TypeError, match="inner_deltas must be a funnet.contract.InnerDeltas"):
        funnet.layer(lambda k, s: rnn.init(k, s), apply=rnn.apply,
                     inner_deltas=rnn.inner_deltas)


def test_a_replaced_backward_is_not_bypassed_by_the_inner_deltas():
    """Gradient-check tests swap a layer's backward for a wrong one: ``return_deltas`` (and so
    ``check_model``'s hand method) must run the swapped rule, not the inner deltas' scan."""
    case, _, right, plain = hand_deltas("rnn-lstm-gru-laststep", True)
    net, _, params, _, _, inputs, target = case
    lstm = net.children[1]

    def doubled(p, res, dy):
        grads, dx = lstm.backward(p, res, dy)
        return jax.tree_util.tree_map(lambda g: 2 * g, grads), dx

    swapped = dataclasses.replace(lstm, backward=doubled)
    assert swapped.inner_deltas is lstm.inner_deltas and swapped.inner_rule is None
    model = funnet.serial(net.children[0], swapped, *net.children[2:])
    _, grads, deltas = jax.jit(funnet.backprop.value_and_grad(model, funnet.mse,
                                                              return_deltas=True))(
        params, inputs, target)
    assert_trees_close(grads[1], jax.tree_util.tree_map(lambda g: 2 * g, plain[1]), **TIGHT)
    assert isinstance(deltas[1], tuple) and not hasattr(deltas[1], "h")  # (dy, None)
    assert isinstance(deltas[0], funnet.backprop.TimeDeltas)  # the others keep theirs
    np.testing.assert_allclose(deltas[0].h, right[0].h, **TIGHT)
