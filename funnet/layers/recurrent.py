r"""Recurrent layers ``RNN``, ``LSTM``, ``GRU`` with hand-derived BPTT (docs/math.md §9).

Each maps a sequence ``x [B, T, F]`` (or ``(x, mask)``, ``(x, mask, h0)``: see
:mod:`funnet.layers.sequence`) to ``y [B, T, H]`` (``return_sequences=True``, the
default) or to the last state ``h_T [B, H]``. Every cell has the same shape: one
``lax.scan`` over time forms the input projection ``g^x_t = x_t W_x + b`` of each step and
runs the cell on ``g^x_t`` and the state::

    RNN   a_t = g^x_t + h_{t-1} W_h                  h_t = f(a_t)
    LSTM  a_t = g^x_t + h_{t-1} W_h = [a_i a_f a_g a_o]   (PyTorch's gate order i, f, g, o)
          c_t = σ(a_f) ⊙ c_{t-1} + σ(a_i) ⊙ tanh(a_g),   h_t = σ(a_o) ⊙ tanh(c_t)
    GRU   g^h_t = h_{t-1} W_h + b_h = [g^h_r g^h_z g^h_n]  (PyTorch's variant, gates r, z, n)
          r = σ(g^x_r + g^h_r),  z = σ(g^x_z + g^h_z),  n = tanh(g^x_n + r ⊙ g^h_n)
          h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

The forward scan keeps, per step, the pre-activations and ``h_{t-1}`` (and the cell states
of the LSTM): what backpropagation through time needs. The backward rule is one reverse
``lax.scan`` carrying ``dh`` (and ``dc``) that turns the gradient reaching each state into
the gradient of its pre-activations ``dg_t`` (docs/math.md §9.2–9.4); the weight gradients
are then matrix products over all steps::

    dW_x = Σ_t x_tᵀ dg^x_t,   db = Σ_{t, rows} dg^x_t,   dW_h = Σ_t h_{t-1}ᵀ dg^h_t,
    dx_t = dg^x_t W_xᵀ,       dh_0 = the carry after step 1

Activation derivatives come from the activations' hand-derived ``f'``
(:meth:`funnet.Activation.derivative`), never from autodiff. A sequence mask freezes the
state at padding steps (``h_t = h_{t-1}``) and zeroes their output, so the gradient passes
them unchanged; their inputs are replaced by zeros before the projection (``x_t`` in
``dW_x`` too), so a padding value, even NaN or inf, changes no output and no gradient,
and its ``dx_t`` is 0.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .. import activations as act
from .._validate import LayerError, ParamsError, check_int, expect_params, shape_of
from ..contract import InnerDeltas, Layer, layer
from .sequence import RecurrentOutput, TimeDeltas, join, join_dx, split_input, split_shape

__all__ = ["GRU", "LSTM", "RNN"]

Initializer = Callable[..., jax.Array]
_GLOROT_NORMAL = jax.nn.initializers.glorot_normal()
_ORTHOGONAL = jax.nn.initializers.orthogonal()
_ZEROS = jax.nn.initializers.zeros


def _value_slope(f: act.Activation, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(f(x), f'(x))`` by the activation's plain formula and its hand-derived derivative."""
    h = dict(f._hyper({}))
    y = f.f(x, **h)
    return y, f.df(x, y, **h)


def _slope(f: act.Activation, x: jax.Array, y: jax.Array) -> jax.Array:
    """``f'(x)`` by the activation's hand-derived derivative, given ``y = f(x)``."""
    return f.df(x, y, **dict(f._hyper({})))


def _split(a: jax.Array, n: int) -> list[jax.Array]:
    return jnp.split(a, n, axis=-1)


# -- the cells: one step forward, one step backward ------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Cell:
    """One recurrent cell. ``state`` is a tuple whose first entry is ``h``.

    ``step(p, gx_t, state, probe) -> (state_t, residual_t)`` computes the new state from the
    input projection ``gx_t = x_t W_x + b_x``, adding ``probe`` (``None``, or one array per
    state entry) to each state entry where it is computed (the LSTM's ``c_t`` before
    ``h_t = o ⊙ tanh(c_t)``); ``back(p, residual_t, h_prev, g) -> (d_state_prev, dgx_t,
    dgh_t, dc_t)`` pulls back ``g``, the gradients reaching ``state_t``, to the previous
    state and to the pre-activations (``dgh_t is None``: the same as ``dgx_t``); ``dc_t``
    is the LSTM's total ``∂L/∂c_t`` (``None`` for the other cells).
    """

    gates: int
    biases: tuple[str, ...]
    states: int
    step: Callable[..., tuple[tuple, Any]]
    back: Callable[..., tuple[tuple, jax.Array, jax.Array | None]]


def _probe(v: jax.Array, probe: tuple | None, i: int) -> jax.Array:
    return v if probe is None or probe[i] is None else v + probe[i]


def _rnn_cell(f: act.Activation) -> _Cell:
    def step(p, gx, state, probe=None):
        a = gx + state[0] @ p["W_h"]  # a_t = x_t W_x + b + h_{t-1} W_h
        return (_probe(f(a), probe, 0),), a  # h_t = f(a_t)

    def back(p, a, h_prev, g):
        da = g[0] * _value_slope(f, a)[1]  # da_t = (dh_t + c_t) ⊙ f'(a_t)
        return (da @ p["W_h"].T,), da, None, None  # c_{t-1} = da_t W_hᵀ

    return _Cell(1, ("b",), 1, step, back)


def _lstm_cell(sigma: act.Activation, tanh: act.Activation) -> _Cell:
    """The LSTM cell. The forward step keeps the six local derivatives BPTT multiplies by
    (``6 H`` numbers per row and step, as many as the pre-activations and both cell states
    it would otherwise keep)::

        k_i = g σ'(a_i),  k_f = c_{t-1} σ'(a_f),  k_g = i tanh'(a_g)   (∂c_t/∂a_·)
        k_o = tanh(c_t) σ'(a_o),  k_c = o tanh'(c_t)                   (∂h_t/∂a_o, ∂h_t/∂c_t)
        f = ∂c_t/∂c_{t-1}

    so the reverse scan is products only. Evaluating σ, tanh and their derivatives there
    instead, on per-step slices of the kept arrays, made the hand backward 1.25–1.4× slower
    on XLA's CPU backend (docs/benchmarks.md, *recurrent*).
    """

    def step(p, gx, state, probe=None):
        h, c = state
        a = gx + h @ p["W_h"]
        a_i, a_f, a_g, a_o = _split(a, 4)
        i, f, g, o = sigma(a_i), sigma(a_f), tanh(a_g), sigma(a_o)
        c_new = _probe(f * c + i * g, probe, 1)  # c_t = f ⊙ c_{t-1} + i ⊙ g
        tc = tanh(c_new)
        k = (g * _slope(sigma, a_i, i), c * _slope(sigma, a_f, f), i * _slope(tanh, a_g, g),
             tc * _slope(sigma, a_o, o), o * _slope(tanh, c_new, tc), f)
        return (_probe(o * tc, probe, 0), c_new), k  # h_t = o ⊙ tanh(c_t)

    def back(p, k, h_prev, g):
        k_i, k_f, k_g, k_o, k_c, f = k
        dh, dc = g
        dc = dc + dh * k_c  # dc = dc_carry + dh ⊙ o ⊙ tanh'(c_t)
        # da = [dc ⊙ g ⊙ σ'(a_i), dc ⊙ c_{t-1} ⊙ σ'(a_f), dc ⊙ i ⊙ tanh'(a_g),
        #       do ⊙ σ'(a_o)] with do = dh ⊙ tanh(c_t)
        da = jnp.concatenate([dc * k_i, dc * k_f, dc * k_g, dh * k_o], axis=-1)
        # dh_{t-1} = da W_hᵀ, dc_{t-1} = dc ⊙ f; dc is the total ∂L/∂c_t
        return (da @ p["W_h"].T, dc * f), da, None, dc

    return _Cell(4, ("b",), 2, step, back)


def _gru_cell(sigma: act.Activation, tanh: act.Activation) -> _Cell:
    def step(p, gx, state, probe=None):
        h = state[0]
        gh = h @ p["W_h"] + p["b_h"].reshape(1, -1)
        (x_r, x_z, x_n), (h_r, h_z, h_n) = _split(gx, 3), _split(gh, 3)
        a_r, a_z = x_r + h_r, x_z + h_z
        a_n = x_n + sigma(a_r) * h_n  # n = tanh(x W_xn + b_xn + r ⊙ (h W_hn + b_hn))
        z = sigma(a_z)
        h_new = _probe((1 - z) * tanh(a_n) + z * h, probe, 0)  # h' = (1-z) ⊙ n + z ⊙ h
        return (h_new,), (a_r, a_z, a_n, h_n)

    def back(p, res, h_prev, g):
        a_r, a_z, a_n, h_n = res
        (r, sr), (z, sz), (n, sn) = (_value_slope(fn, v) for fn, v in zip(
            (sigma, sigma, tanh), (a_r, a_z, a_n)))
        dh = g[0]
        da_n = dh * (1 - z) * sn  # dn ⊙ tanh'(a_n)
        da_z = dh * (h_prev - n) * sz  # dz ⊙ σ'(a_z)
        da_r = da_n * h_n * sr  # dr ⊙ σ'(a_r), dr = da_n ⊙ (h W_hn + b_hn)
        dgx = jnp.concatenate([da_r, da_z, da_n], axis=-1)
        dgh = jnp.concatenate([da_r, da_z, da_n * r], axis=-1)
        return (dgh @ p["W_h"].T + dh * z,), dgx, dgh, None  # dh_{t-1} = dgh W_hᵀ + dh ⊙ z

    return _Cell(3, ("b_x", "b_h"), 1, step, back)


# -- the scans ----------------------------------------------------------------------------


def _where(m: jax.Array | None, a: jax.Array, b: jax.Array) -> jax.Array:
    return a if m is None else jnp.where(m, a, b)


def _scan_forward(cell: _Cell, p: dict, x: jax.Array, ms: jax.Array | None, state0: tuple, *,
                  sequences: bool, keep: bool, unroll: int, probes: tuple | None = None):
    """``(ys [T, B, H] | None, final state, saved | None)``: one ``lax.scan`` over time.

    ``ms [T, B, 1]`` (bool) freezes the state where it is false and zeroes the output.
    Each step forms its input projection ``g^x_t = x_t W_x + b`` from its slice ``x_t``.
    Forming all ``T`` of them first, as one ``[T, B, G·H]`` product, made the forward pass
    2× slower on XLA's CPU backend: each step's slice of that array was read inside the
    cell's exp/tanh fusions, which do not vectorise around a ``dynamic-slice``, while a
    slice of ``x`` feeds a matrix product (docs/benchmarks.md, *recurrent*).
    ``probes`` (``None``, or one ``[T, B, H]`` array or ``None`` per state entry) are added
    to the states where they are computed, at a padding step to the frozen state.
    """
    b_x = p[cell.biases[0]].reshape(1, -1)

    def step(state, inputs):
        x_t, m_t, q_t = inputs
        gx_t = x_t @ p["W_x"] + b_x  # g^x_t = x_t W_x + b
        new, res = cell.step(p, gx_t, state, q_t)
        # padding: the state frozen (plus its probe)
        new = tuple(_where(m_t, n, _probe(s, q_t, i))
                    for i, (n, s) in enumerate(zip(new, state)))
        y_t = _where(m_t, new[0], jnp.zeros((), new[0].dtype)) if sequences else None
        return new, (y_t, (state[0], res) if keep else None)

    final, (ys, saved) = lax.scan(step, state0, (jnp.swapaxes(x, 0, 1), ms, probes),
                                  unroll=unroll)
    return ys, final, saved


def _scan_backward(cell: _Cell, p: dict, saved: Any, ms: jax.Array | None,
                   dys: jax.Array | None, d_final: tuple, *, unroll: int, trace: bool = False):
    """``(d_state0, dgx [T, B, G·H], dgh | None, deltas | None)``: one reverse ``lax.scan``
    carrying ``dh`` (and ``dc``) from ``t = T`` down to 1.

    With ``trace``, ``deltas = (∂L/∂h_t, ∂L/∂c_t | None)``, each ``[T, B, H]``: the carry
    ``dh`` once step ``t``'s output has added its gradient, and the LSTM's total ``dc``
    (the carry at a padding step, where the frozen state passes it on).
    """

    def step(g, inputs):
        dy_t, m_t, (h_prev, res) = inputs
        if dy_t is not None:  # the output y_t = m_t ⊙ h_t adds its gradient to dh_t
            g = (g[0] + _where(m_t, dy_t, jnp.zeros((), dy_t.dtype)),) + g[1:]
        zero = jnp.zeros((), g[0].dtype)
        d_prev, dgx, dgh, dc = cell.back(p, res, h_prev, tuple(_where(m_t, v, zero) for v in g))
        if m_t is not None:  # a padding step passes the gradient on unchanged
            d_prev = tuple(d + jnp.where(m_t, zero, v) for d, v in zip(d_prev, g))
        deltas = None
        if trace:  # ∂L/∂h_t = g_t + c_t; ∂L/∂c_t: the cell's total, or the carry (padding)
            deltas = (g[0], None if dc is None else _where(m_t, dc, g[1]))
        return d_prev, (dgx, dgh, deltas)

    d_state0, (dgx, dgh, deltas) = lax.scan(step, d_final, (dys, ms, saved), reverse=True,
                                            unroll=unroll)
    return d_state0, dgx, dgh, deltas


# -- the layer ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Options:
    return_sequences: bool
    return_state: bool
    W_x_init: Initializer
    W_h_init: Initializer
    b_init: Initializer
    forget_bias: float
    unroll: int


def _name(kind: str, hidden: int, opts: _Options, extra: str = "") -> str:
    parts = [str(hidden)]
    if extra:
        parts.append(extra)
    if not opts.return_sequences:
        parts.append("return_sequences=False")
    if opts.return_state:
        parts.append("return_state=True")
    return f"{kind}({', '.join(parts)})"


def _recurrent(kind: str, hidden: int, acts: tuple[act.Activation, ...], opts: _Options,
               name: str) -> Layer:
    cell = {"RNN": _rnn_cell, "LSTM": _lstm_cell, "GRU": _gru_cell}[kind](*acts)
    width = cell.gates * hidden
    keys = ("W_x", "W_h", *cell.biases)

    def state_shape(batch: int):
        return (batch, hidden) if cell.states == 1 else ((batch, hidden), (batch, hidden))

    def init(key, input_shape):
        x_shape, m_shape, s_shape, form = split_shape(name, input_shape, with_state=True)
        if form == 3 and s_shape is not None and not _state_fits(s_shape, state_shape(-1)):
            raise LayerError(f"{name}: the initial state shape {s_shape} must be "
                             f"{state_shape(x_shape[0])}")
        k_x, k_h, k_b = jax.random.split(key, 3)
        params = {"W_x": opts.W_x_init(k_x, (x_shape[-1], width)),
                  "W_h": opts.W_h_init(k_h, (hidden, width))}
        for k, bias_key in zip(cell.biases, jax.random.split(k_b, len(cell.biases))):
            params[k] = opts.b_init(bias_key, (width,))
        if kind == "LSTM" and opts.forget_bias:
            params["b"] = params["b"].at[hidden:2 * hidden].add(opts.forget_bias)
        batch = x_shape[0]
        if opts.return_sequences:
            out = join((batch, x_shape[1], hidden), m_shape, form)
        else:
            out = (batch, hidden)
        return (RecurrentOutput(out, state_shape(batch)) if opts.return_state else out), params

    def check(params, x):
        expect_params(name, params, keys)
        in_dim = shape_of(params["W_x"])[:1]
        expected = {"W_x": in_dim + (width,), "W_h": (hidden, width),
                    **{k: (width,) for k in cell.biases}}
        if np.ndim(params["W_x"]) != 2 or any(shape_of(params[k]) != expected[k] for k in keys):
            got = ", ".join(f"{k} {shape_of(params[k])}" for k in keys)
            raise ParamsError(f"{name}: params have shapes {got}; expected W_x [F, {width}], "
                              f"W_h [{hidden}, {width}] and {width} per bias")
        if shape_of(x)[-1] != shape_of(params["W_x"])[0]:
            raise LayerError(f"{name}: input has shape {shape_of(x)}, {shape_of(x)[-1]} features, "
                             f"but W_x has shape {shape_of(params['W_x'])} (expects "
                             f"{shape_of(params['W_x'])[0]})")

    def initial_state(h0, batch, dtype):
        if h0 is None:
            return (jnp.zeros((batch, hidden), dtype),) * cell.states
        one = (batch, hidden)
        if cell.states == 1:
            parts, want = (h0,), f"one array h0 of shape {one}"
            ok = not isinstance(h0, (tuple, list)) and shape_of(h0) == one
        else:
            parts, want = h0, f"(h0, c0), each of shape {one}"
            ok = (isinstance(h0, (tuple, list)) and len(h0) == 2
                  and all(v is not None and shape_of(v) == one for v in h0))
        if not ok:
            raise LayerError(f"{name}: the initial state must be {want}, got {_describe(h0)}")
        return tuple(jnp.asarray(v).astype(dtype) for v in parts)

    def run(params, inputs, keep, probes=None):
        x, mask, h0, form = split_input(name, inputs, with_state=True)
        check(params, x)
        dtype = jnp.result_type(x, *(params[k] for k in keys))
        state0 = initial_state(h0, x.shape[0], dtype)
        ms = None if mask is None else jnp.swapaxes(mask, 0, 1)[:, :, None]
        x_dtype, x = x.dtype, x.astype(dtype)
        if mask is not None:  # a padding step's input is ignored: zeros, even for NaN there
            x = jnp.where(mask[:, :, None], x, jnp.zeros((), dtype))
        if probes is not None:  # [B, T, H] each (or None) → time-major
            probes = tuple(None if q is None else jnp.swapaxes(q, 0, 1).astype(dtype)
                           for q in probes)
        ys, final, saved = _scan_forward(cell, params, x, ms, state0,
                                         sequences=opts.return_sequences, keep=keep,
                                         unroll=opts.unroll, probes=probes)
        if opts.return_sequences:
            out = join(jnp.swapaxes(ys, 0, 1), None if form == 1 else inputs[1], form)
        else:
            out = final[0]
        if opts.return_state:
            out = RecurrentOutput(out, final[0] if cell.states == 1 else final)
        h0_dtypes = None if h0 is None else tuple(jnp.result_type(v) for v in
                                                  ((h0,) if cell.states == 1 else h0))
        return out, (x, x_dtype, ms, saved, form, h0_dtypes, dtype)

    def apply(params, inputs):
        return run(params, inputs, keep=False)[0]

    def forward(params, inputs):
        return run(params, inputs, keep=True)

    def probed(params, inputs, probes):  # the forward with probes on h_t (and c_t)
        return run(params, inputs, keep=False, probes=(probes.h, probes.c)[:cell.states])[0]

    def check_dy(dy, batch, time, form):
        """``(d_seq | None, d_state | None)`` of the gradient ``dy`` of the output, checked
        to have the output's structure and shapes."""
        seq = (batch, time, hidden) if opts.return_sequences else (batch, hidden)
        what = "d_outputs" if opts.return_state else "dy"
        if opts.return_state:
            if not isinstance(dy, (tuple, list)) or len(dy) != 2:
                raise LayerError(
                    f"{name}: backward got dy {_describe(dy)}, but the layer returns "
                    "RecurrentOutput(outputs, state) (return_state=True): dy must be "
                    "RecurrentOutput(d_outputs, d_state), None for a part without gradient; "
                    f"d_outputs of shape {seq}")
            d_seq, d_state = dy
        else:
            d_seq, d_state = dy, None
        if opts.return_sequences and form > 1 and d_seq is not None:
            if not isinstance(d_seq, (tuple, list)) or len(d_seq) != 2:
                raise LayerError(
                    f"{name}: backward got {what} {_describe(d_seq)}, but for an input (x, "
                    f"mask) the output is (y, mask): its gradient is (dy, None), dy of shape "
                    f"{seq} (the mask has none)")
            d_seq = d_seq[0]
        if d_seq is not None and shape_of(d_seq) != seq:
            raise LayerError(f"{name}: backward got {what} of shape {shape_of(d_seq)}, but the "
                             f"output has shape {seq}: dy = ∂L/∂y must have y's shape")
        one = (batch, hidden)
        if d_state is not None:
            parts = (d_state,) if cell.states == 1 else d_state
            fits = (not isinstance(d_state, (tuple, list)) if cell.states == 1 else
                    isinstance(d_state, (tuple, list)) and len(d_state) == 2)
            if not fits or any(v is not None and shape_of(v) != one for v in parts):
                want = (f"dh of shape {one}" if cell.states == 1 else
                        f"(dh, dc), each of shape {one} or None")
                raise LayerError(f"{name}: backward got d_state {_describe(d_state)}; the "
                                 f"gradient of the final state must be {want}")
        return d_seq, d_state

    def backward(params, res, dy, trace=False):
        x, x_dtype, ms, saved, form, h0_dtypes, dtype = res
        d_seq, d_state = check_dy(dy, x.shape[0], x.shape[1], form)
        zeros = jnp.zeros((x.shape[0], hidden), dtype)
        d_final = [zeros] * cell.states
        given = (d_state,) if cell.states == 1 else (
            (None, None) if d_state is None else d_state)
        for i, d in enumerate(given):
            if d is not None:
                d_final[i] = d_final[i] + d.astype(dtype)
        dys = None
        if d_seq is not None and opts.return_sequences:
            dys = jnp.swapaxes(d_seq, 0, 1).astype(dtype)
        elif d_seq is not None:
            d_final[0] = d_final[0] + d_seq.astype(dtype)  # y = h_T
        d_state0, dgx, dgh, deltas = _scan_backward(cell, params, saved, ms, dys,
                                                    tuple(d_final), unroll=opts.unroll,
                                                    trace=trace)
        dgh = dgx if dgh is None else dgh
        h_prev = saved[0]
        grads = {
            "W_x": jnp.einsum("btf,tbg->fg", x, dgx),  # Σ_t x_tᵀ dg^x_t, x_t = 0 at padding
            "W_h": jnp.einsum("tbh,tbg->hg", h_prev, dgh),  # Σ_t h_{t-1}ᵀ dg^h_t
            cell.biases[0]: jnp.sum(dgx, axis=(0, 1)),  # Σ_{t, rows} dg^x_t
        }
        if len(cell.biases) == 2:
            grads[cell.biases[1]] = jnp.sum(dgh, axis=(0, 1))  # Σ_{t, rows} dg^h_t
        grads = {k: grads[k].astype(jnp.result_type(params[k])) for k in keys}
        dx = jnp.einsum("tbg,fg->btf", dgx, params["W_x"]).astype(x_dtype)  # dx_t = dg^x_t W_xᵀ
        dh0 = None
        if h0_dtypes is not None:
            dh0 = tuple(d.astype(t) for d, t in zip(d_state0, h0_dtypes))
            dh0 = dh0[0] if cell.states == 1 else dh0
        if not trace:
            return grads, join_dx(dx, dh0, form)
        d_h, d_c = (None if d is None else jnp.swapaxes(d, 0, 1) for d in deltas)
        return grads, join_dx(dx, dh0, form), TimeDeltas(dy, d_h, d_c)

    inner = InnerDeltas(functools.partial(backward, trace=True), probed, backward)
    return layer(init, forward, backward, apply=apply, name=name, decay=("W_x", "W_h"),
                 rewire=lambda wiring: _recurrent(
                     kind, hidden, tuple(a.rewired(wiring) for a in acts), opts, name),
                 inner_deltas=inner)


def _describe(v: Any) -> str:
    """``v`` for an error message: ``an array of shape (2, 4)``, ``a tuple of 1 with shapes
    [(2, 4)]``."""
    if v is None:
        return "None"
    if isinstance(v, (tuple, list)):
        shapes = [None if a is None else shape_of(a) for a in v]
        return f"a {type(v).__name__} of {len(v)} with shapes {shapes}"
    return f"an array of shape {shape_of(v)}"


def _state_fits(given: Any, want: Any) -> bool:
    if isinstance(want[0], tuple):
        return (isinstance(given, (tuple, list)) and len(given) == len(want)
                and all(_state_fits(g, w) for g, w in zip(given, want)))
    return (isinstance(given, (tuple, list)) and len(given) == 2
            and given[1] == want[1] and isinstance(given[0], (int, np.integer)))


def _options(return_sequences: bool, return_state: bool, W_x_init: Initializer,
             W_h_init: Initializer, b_init: Initializer, forget_bias: float,
             unroll: int, kind: str) -> _Options:
    for flag, value in (("return_sequences", return_sequences), ("return_state", return_state)):
        if not isinstance(value, (bool, np.bool_)):
            raise LayerError(f"{kind}: {flag} must be True or False, got {value!r}")
    unroll = check_int(unroll, f"{kind}: unroll", error=LayerError)
    if (isinstance(forget_bias, (bool, np.bool_))
            or not isinstance(forget_bias, (int, float, np.integer, np.floating))
            or not np.isfinite(forget_bias)):
        raise LayerError(f"{kind}: forget_bias must be a finite number, got {forget_bias!r}")
    return _Options(bool(return_sequences), bool(return_state), W_x_init, W_h_init, b_init,
                    float(forget_bias), unroll)


def RNN(
    hidden: int,
    *,
    activation: act.Activation = act.tanh,
    return_sequences: bool = True,
    return_state: bool = False,
    W_x_init: Initializer = _GLOROT_NORMAL,
    W_h_init: Initializer = _ORTHOGONAL,
    b_init: Initializer = _ZEROS,
    unroll: int = 1,
) -> Layer:
    r"""Elman recurrent layer: ``h_t = f(x_t W_x + h_{t-1} W_h + b)`` (docs/math.md §9.2).

    BPTT, backwards over ``t = T … 1`` with the carry ``c`` (``c_T`` = the gradient of the
    final state)::

        da_t = (dh_t + c_t) ⊙ f'(a_t),   c_{t-1} = da_t W_hᵀ,   dh_0 = c_0
        dW_x = Σ_t x_tᵀ da_t,  dW_h = Σ_t h_{t-1}ᵀ da_t,  db = Σ_{t,rows} da_t,  dx_t = da_t W_xᵀ

    Args:
      hidden: the state size ``H``.
      activation: a :class:`funnet.Activation` (``tanh`` by default); the backward uses its
        hand-derived ``f'``, and the formula wiring (:meth:`funnet.Layer.rewired`) its
        plain formula. It is called with its own default hyperparameters
        (``Activation.defaults``: ``leaky_relu``'s slope 0.01, ``elu``'s alpha 1.0); for
        others make an activation whose defaults they are, e.g.
        ``dataclasses.replace(funnet.leaky_relu, name="leaky_relu(0.2)",
        defaults={"slope": 0.2})``.
      return_sequences: ``True``: every step's output ``[B, T, H]``; ``False``: the state
        after each sequence's last real step, ``[B, H]``.
      return_state: also return the final state: ``RecurrentOutput(outputs, h_T)``.
      W_x_init: initializer of ``W_x [F, H]`` (Glorot normal, as ``Dense``).
      W_h_init: initializer of ``W_h [H, H]`` (orthogonal).
      b_init: initializer of ``b [H]`` (zeros).
      unroll: steps per iteration of the ``lax.scan`` loops (a speed option).

    Input: ``x [B, T, F]``, ``(x, mask)`` or ``(x, mask, h0)`` with ``h0 [B, H]`` (see
    :mod:`funnet.layers.sequence`). Params ``{"W_x", "W_h", "b"}``; weight decay applies to
    ``W_x`` and ``W_h``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> rnn = funnet.RNN(4)
    >>> out_shape, params = rnn.init(jax.random.PRNGKey(0), (-1, 7, 3))
    >>> out_shape, {k: v.shape for k, v in params.items()}
    ((-1, 7, 4), {'W_x': (3, 4), 'W_h': (4, 4), 'b': (4,)})
    >>> rnn.apply(params, jnp.ones((2, 7, 3))).shape
    (2, 7, 4)
    """
    hidden = check_int(hidden, "RNN: hidden", error=LayerError)
    if not isinstance(activation, act.Activation):
        raise LayerError(f"RNN: activation must be a funnet.Activation (e.g. funnet.relu), got "
                         f"{activation!r}")
    opts = _options(return_sequences, return_state, W_x_init, W_h_init, b_init, 0.0, unroll,
                    "RNN")
    extra = "" if activation.name == "tanh" else f"activation={activation.name}"
    return _recurrent("RNN", hidden, (activation,), opts, _name("RNN", hidden, opts, extra))


def LSTM(
    hidden: int,
    *,
    return_sequences: bool = True,
    return_state: bool = False,
    forget_bias: float = 1.0,
    W_x_init: Initializer = _GLOROT_NORMAL,
    W_h_init: Initializer = _ORTHOGONAL,
    b_init: Initializer = _ZEROS,
    unroll: int = 1,
) -> Layer:
    r"""Long short-term memory layer (docs/math.md §9.3), PyTorch's gate order ``i, f, g, o``.

    ``a = x_t W_x + h_{t-1} W_h + b`` is split into four blocks of ``H``, in this order::

        i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
        c_t = f ⊙ c_{t-1} + i ⊙ g,   h_t = o ⊙ tanh(c_t)

    BPTT, with ``dh``, ``dc`` the gradients reaching ``h_t``, ``c_t``::

        do = dh ⊙ tanh(c_t),   dc ← dc + dh ⊙ o ⊙ tanh'(c_t)
        di = dc ⊙ g,  df = dc ⊙ c_{t-1},  dg = dc ⊙ i,  dc_{t-1} = dc ⊙ f
        da = [di σ'(a_i), df σ'(a_f), dg tanh'(a_g), do σ'(a_o)],  dh_{t-1} = da W_hᵀ

    Args:
      hidden: the state size ``H`` (of ``h`` and ``c``).
      return_sequences: ``True``: ``h_t`` of every step ``[B, T, H]``; ``False``: the last
        real step's ``h``, ``[B, H]``.
      return_state: also return the final state: ``RecurrentOutput(outputs, (h_T, c_T))``.
      forget_bias: added to the forget gate's block of ``b`` at init (1.0, as Keras'
        ``unit_forget_bias`` and Jozefowicz et al. 2015: the cell remembers from the
        start); 0.0 for a plain ``b_init``.
      W_x_init: initializer of ``W_x [F, 4H]`` (Glorot normal).
      W_h_init: initializer of ``W_h [H, 4H]`` (orthogonal).
      b_init: initializer of ``b [4H]`` (zeros, then ``forget_bias`` on ``b[H:2H]``).
      unroll: steps per iteration of the ``lax.scan`` loops.

    Input: ``x``, ``(x, mask)`` or ``(x, mask, (h0, c0))``. Params ``{"W_x", "W_h", "b"}``,
    columns in blocks ``i, f, g, o``; from PyTorch's ``nn.LSTM``: ``W_x = weight_ih_l0.T``,
    ``W_h = weight_hh_l0.T``, ``b = bias_ih_l0 + bias_hh_l0`` (docs/recurrent.md). Weight
    decay applies to ``W_x`` and ``W_h``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> lstm = funnet.LSTM(4, return_state=True)
    >>> _, params = lstm.init(jax.random.PRNGKey(0), (-1, 7, 3))
    >>> params["b"].tolist()[:8]  # blocks i, f: the forget gate starts at 1
    [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    >>> y, (h, c) = lstm.apply(params, jnp.ones((2, 7, 3)))
    >>> y.shape, h.shape, c.shape
    ((2, 7, 4), (2, 4), (2, 4))
    """
    hidden = check_int(hidden, "LSTM: hidden", error=LayerError)
    opts = _options(return_sequences, return_state, W_x_init, W_h_init, b_init, forget_bias,
                    unroll, "LSTM")
    return _recurrent("LSTM", hidden, (act.logistic, act.tanh), opts,
                      _name("LSTM", hidden, opts))


def GRU(
    hidden: int,
    *,
    return_sequences: bool = True,
    return_state: bool = False,
    W_x_init: Initializer = _GLOROT_NORMAL,
    W_h_init: Initializer = _ORTHOGONAL,
    b_init: Initializer = _ZEROS,
    unroll: int = 1,
) -> Layer:
    r"""Gated recurrent unit, PyTorch's variant (docs/math.md §9.4), gate order ``r, z, n``.

    With ``g^x = x_t W_x + b_x`` and ``g^h = h_{t-1} W_h + b_h``, each split into blocks
    ``r, z, n`` of ``H``::

        r = σ(g^x_r + g^h_r),   z = σ(g^x_z + g^h_z),   n = tanh(g^x_n + r ⊙ g^h_n)
        h_t = (1 - z) ⊙ n + z ⊙ h_{t-1}

    The reset gate multiplies ``h W_hn + b_hn`` (PyTorch, cuDNN), not ``h`` (the original
    paper, Keras' ``reset_after=False``); so ``b_h`` is a parameter of its own. BPTT::

        da_n = dh ⊙ (1 - z) ⊙ tanh'(a_n),   da_z = dh ⊙ (h_{t-1} - n) ⊙ σ'(a_z),
        da_r = da_n ⊙ g^h_n ⊙ σ'(a_r)
        dg^x = [da_r, da_z, da_n],   dg^h = [da_r, da_z, r ⊙ da_n]
        dh_{t-1} = dg^h W_hᵀ + dh ⊙ z

    Args:
      hidden: the state size ``H``.
      return_sequences: ``True``: ``[B, T, H]``; ``False``: the last real step's ``h``.
      return_state: also return the final state: ``RecurrentOutput(outputs, h_T)``.
      W_x_init: initializer of ``W_x [F, 3H]`` (Glorot normal).
      W_h_init: initializer of ``W_h [H, 3H]`` (orthogonal).
      b_init: initializer of ``b_x [3H]`` and ``b_h [3H]`` (zeros).
      unroll: steps per iteration of the ``lax.scan`` loops.

    Input: ``x``, ``(x, mask)`` or ``(x, mask, h0)``. Params ``{"W_x", "W_h", "b_x",
    "b_h"}``; from PyTorch's ``nn.GRU``: ``W_x = weight_ih_l0.T``, ``W_h = weight_hh_l0.T``,
    ``b_x = bias_ih_l0``, ``b_h = bias_hh_l0``. Weight decay applies to ``W_x`` and ``W_h``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> gru = funnet.GRU(4, return_sequences=False)
    >>> out_shape, params = gru.init(jax.random.PRNGKey(0), (-1, 7, 3))
    >>> out_shape, params["W_h"].shape, params["b_h"].shape
    ((-1, 4), (4, 12), (12,))
    """
    hidden = check_int(hidden, "GRU: hidden", error=LayerError)
    opts = _options(return_sequences, return_state, W_x_init, W_h_init, b_init, 0.0, unroll,
                    "GRU")
    return _recurrent("GRU", hidden, (act.logistic, act.tanh), opts, _name("GRU", hidden, opts))
