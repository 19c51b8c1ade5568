r"""Sequences ``[batch, time, features]``: the input convention, ``LastStep``, ``Bidirectional``.

A sequence layer (:func:`funnet.RNN`, :func:`funnet.LSTM`, :func:`funnet.GRU`,
:data:`LastStep`, :func:`Bidirectional`) takes one of three inputs::

    x                    [B, T, F]                     every step of every sequence is real
    (x, mask)            mask [B, T] (0/1, or bool)    variable lengths: steps with mask 0 are
                                                       padding (mask None: none are)
    (x, mask, h0)        h0 the initial state          (recurrent layers only; mask may be None)

A tuple in gives a tuple out: a recurrent layer returns ``(y, mask)`` for ``(x, mask)``
(and for ``(x, mask, h0)``), so that the mask reaches the next layer of a ``serial``
stack; :data:`LastStep` and ``return_sequences=False`` consume it. This sequence mask is
not the contract's ``mask`` keyword (the ``[batch]`` vector of real rows that
:func:`funnet.fit` passes for a padded last batch): the two never meet. The mask gets no
gradient (``None`` in ``dx``). To apply a per-step layer to a masked sequence, map it
over the pair: ``parallel(Dense(3), Identity)`` on ``(y, mask)``, or
``parallel(Embedding(V, D), Identity)`` on ``(ids, mask)``.

Reversal in time (:func:`reverse_time`) is mask-aware: the real steps of each sequence
are reversed among themselves and padding stays where it is, so a sequence padded at the
end is reversed within its own length. The reversal is a permutation that is its own
inverse, so its backward is the same reversal.

Backward rules (``dy = ∂L/∂y``)::

    LastStep        y_b = x[b, last_b]     dx[b, last_b] = dy_b, 0 elsewhere
    Bidirectional   y = [f(x) ‖ R g(R x)]  dx = dx_f + R dx_g,  with dy_g = R dy[…, H_f:]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import (
    LayerError,
    ParamsError,
    check_input_shape,
    expect_no_params,
    refuse_list_input,
    shape_of,
)
from ..contract import Layer, NoBackwardRuleError, StatefulModelError, as_layer, layer

__all__ = ["Bidirectional", "LastStep", "RecurrentOutput", "TimeDeltas", "reverse_time"]


class RecurrentOutput(NamedTuple):
    """What a recurrent layer with ``return_state=True`` returns: ``(outputs, state)``.

    Attributes:
      outputs: what the layer returns without ``return_state`` (``[B, T, H]``, ``(y,
        mask)`` or ``[B, H]``).
      state: the state after each sequence's last real step: ``h [B, H]`` (``RNN``,
        ``GRU``) or ``(h, c)`` (``LSTM``); feed it back as ``h0`` to continue.
    """

    outputs: Any
    state: Any


class TimeDeltas(NamedTuple):
    r"""What ``return_deltas=True`` gives for a recurrent layer: the gradient through time.

    :func:`funnet.backprop.value_and_grad` returns, for every top-level layer ``l`` of a
    ``serial``, ``deltas[l] = ∂L/∂(output of layer l)``; for an ``RNN``, ``LSTM`` or ``GRU``
    that entry is a ``TimeDeltas`` whose ``output`` is that same gradient and whose ``h``
    (and ``c``) are the gradients at the layer's states, computed by its own backward scan
    (docs/recurrent.md), from ``t = T`` down to 1. With ``m_t`` the mask, ``dy_t`` the
    gradient reaching the output ``y_t`` and ``d_T`` that of the final state::

        h_T = m_T ⊙ dy_T + d_T,    h_t = m_t ⊙ dy_t + (what step t+1 sends back to h_t)
        RNN:  h_t = m_t ⊙ dy_t + m_{t+1} ⊙ (h_{t+1} ⊙ f'(a_{t+1})) W_hᵀ + (1 - m_{t+1}) ⊙ h_{t+1}

    (a padding step sends back what reaches it: its state is the previous one).

    Attributes:
      output: ``∂L/∂(output of the layer)``, exactly the entry every other layer has: the
        gradient reaching ``y`` (for a tuple output, in its structure).
      h: ``∂L/∂h_t`` ``[B, T, H]`` for ``t = 1 … T``: the total gradient reaching the state
        after step ``t``, from the output at ``t`` and through every later step (and the
        final state). At a padding step the state is the previous one carried on, and
        ``h`` is the gradient it carries (the same as at the next step, as the step adds
        no output gradient); multiply by the mask for zeros there.
      c: the LSTM's ``∂L/∂c_t`` ``[B, T, H]``, total: through ``h_t = o ⊙ tanh(c_t)`` and
        through ``c_{t+1}`` (at a padding step: the gradient the frozen cell carries);
        ``None`` for ``RNN`` and ``GRU``.
    """

    output: Any
    h: Any
    c: Any = None


# -- the input convention ------------------------------------------------------------------


def _is_shape(s: Any) -> bool:
    return isinstance(s, (tuple, list)) and all(isinstance(d, (int, np.integer)) for d in s)


def _refuse_state(name: str, inputs: Any) -> None:
    """A ``return_state`` layer's output (or its shape, at init) is not ``(x, mask)``."""
    if isinstance(inputs, RecurrentOutput):
        raise LayerError(
            f"{name}: its input is a RecurrentOutput(outputs, state): the previous layer "
            "returns its state (return_state=True), which is not (x, mask); pass on its "
            "outputs (out.outputs), or build the previous layer without return_state")


def split_shape(name: str, input_shape: Any, *, with_state: bool):
    """``(x_shape, mask_shape | None, state_shape | None, form)`` of a sequence input shape.

    ``form`` is 1 (``x``), 2 (``(x, mask)``) or 3 (``(x, mask, h0)``; ``with_state`` only).
    """
    _refuse_state(name, input_shape)
    if _is_shape(input_shape):
        parts, form = (input_shape, None, None), 1
    elif isinstance(input_shape, (tuple, list)) and len(input_shape) in ((2, 3) if with_state
                                                                         else (2,)):
        parts, form = (*input_shape, None)[:3], len(input_shape)
    else:
        allowed = "x, (x, mask) or (x, mask, h0)" if with_state else "x or (x, mask)"
        raise LayerError(f"{name}: input_shape must be the shape of {allowed}, got "
                         f"{input_shape!r}")
    x_shape = check_input_shape(name, parts[0], min_rank=3, features=True)
    if len(x_shape) != 3:  # as apply: one feature axis
        raise LayerError(f"{name}: input_shape {x_shape} has rank {len(x_shape)}; a sequence "
                         "is [batch, time, features] (rank 3)")
    m_shape = None if parts[1] is None else tuple(parts[1])
    if m_shape is not None and (len(m_shape) != 2 or not _same(m_shape, x_shape[:2])):
        raise LayerError(f"{name}: the mask shape {m_shape} must be [batch, time] of the input "
                         f"shape {x_shape}")
    return x_shape, m_shape, parts[2], form


def _same(a: tuple, b: tuple) -> bool:
    """Equal shapes, where ``-1`` (an unknown batch size) matches anything."""
    return len(a) == len(b) and all(u == v or u == -1 or v == -1 for u, v in zip(a, b))


def split_input(name: str, inputs: Any, *, with_state: bool):
    """``(x, mask | None, h0 | None, form)`` of a sequence input (see the module docstring).

    ``mask`` comes back as a bool array ``[B, T]`` (``mask != 0``), so it carries no gradient.
    """
    _refuse_state(name, inputs)
    if isinstance(inputs, list):
        raise LayerError(f"{name}: the input must be an array x [batch, time, features] or a "
                         "tuple (x, mask) (or (x, mask, h0)), got a list; jnp.asarray it for "
                         "an array, or make it a tuple")
    if isinstance(inputs, tuple):
        if len(inputs) not in ((2, 3) if with_state else (2,)):
            allowed = "(x, mask) or (x, mask, h0)" if with_state else "(x, mask)"
            raise LayerError(f"{name}: a tuple input must be {allowed}, got a tuple of "
                             f"{len(inputs)}")
        x, mask, h0, form = (*inputs, None)[0], inputs[1], (*inputs, None)[2], len(inputs)
    else:
        x, mask, h0, form = inputs, None, None, 1
    if not isinstance(x, (jax.Array, np.ndarray)):
        raise LayerError(f"{name}: the input x must be an array [batch, time, features], got "
                         f"a {type(x).__name__}; jnp.asarray it")
    if np.ndim(x) != 3:
        raise LayerError(f"{name}: input of shape {shape_of(x)} must be [batch, time, features]")
    if x.shape[1] == 0:
        raise LayerError(f"{name}: input of shape {shape_of(x)} has no time steps (T = 0); a "
                         "sequence has at least one step")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise LayerError(f"{name}: input must be floating point, got {jnp.result_type(x)} of "
                         f"shape {shape_of(x)} (integer ids go through Embedding first)")
    if mask is not None:
        if shape_of(mask) != shape_of(x)[:2]:
            raise LayerError(f"{name}: mask of shape {shape_of(mask)} must be [batch, time] = "
                             f"{shape_of(x)[:2]} of the input {shape_of(x)}")
        mask = jnp.asarray(mask) != 0
    return x, mask, h0, form


def join(y: Any, mask: Any, form: int) -> Any:
    """The sequence output for an input of ``form``: ``y``, or ``(y, mask)`` for a tuple."""
    return y if form == 1 else (y, mask)


def join_dx(dx: Any, dh0: Any, form: int) -> Any:
    """``dx`` in the structure of the input: the mask gets ``None``, ``h0`` its gradient."""
    return (dx, (dx, None), (dx, None, dh0))[form - 1]


# -- reversal in time -------------------------------------------------------------------------


def reverse_index(mask: jax.Array | None, batch: int, time: int) -> jax.Array | None:
    """``idx [B, T]``: step ``t`` of the reversed sequence ``b`` is step ``idx[b, t]``.

    The real steps (``mask != 0``) are reversed among themselves, padding stays in place;
    ``idx`` is an involution (``idx[idx] = id``). ``None`` without a mask (plain ``flip``).
    """
    if mask is None:
        return None
    t = jnp.broadcast_to(jnp.arange(time), (batch, time))
    order = jnp.argsort(jnp.where(mask, t, time + t), axis=1)  # the real steps first, in order
    rank = jnp.cumsum(mask, axis=1) - 1  # rank of a real step among its sequence's real steps
    count = jnp.sum(mask, axis=1, keepdims=True)
    partner = jnp.take_along_axis(order, jnp.clip(count - 1 - rank, 0, time - 1), axis=1)
    return jnp.where(mask, partner, t)


def reverse_time(x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    r"""``x [B, T, …]`` with each sequence's real steps in reverse order; padding stays put.

    Args:
      x: a batch of sequences, time on axis 1.
      mask: ``[B, T]``, nonzero at the real steps; ``None``: every step is real
        (``jnp.flip(x, 1)``).

    >>> import jax.numpy as jnp, funnet
    >>> x = jnp.arange(4.0).reshape(1, 4, 1)
    >>> funnet.reverse_time(x, jnp.array([[1, 1, 1, 0]]))[0, :, 0].tolist()
    [2.0, 1.0, 0.0, 3.0]
    """
    if not isinstance(x, (jax.Array, np.ndarray)):
        raise TypeError(f"reverse_time: x must be an array [batch, time, ...], got a "
                        f"{type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"reverse_time: x of shape {shape_of(x)} must be [batch, time, ...] "
                         "(rank ≥ 2)")
    if mask is not None and shape_of(mask) != shape_of(x)[:2]:
        raise ValueError(f"reverse_time: mask of shape {shape_of(mask)} must be [batch, time] "
                         f"= {shape_of(x)[:2]} of x of shape {shape_of(x)}")
    idx = reverse_index(None if mask is None else jnp.asarray(mask) != 0, *x.shape[:2])
    return _reverse(x, idx)


def _reverse(x: jax.Array, idx: jax.Array | None) -> jax.Array:
    if idx is None:
        return jnp.flip(x, axis=1)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)


# -- LastStep ---------------------------------------------------------------------------------


def _last_index(mask: jax.Array | None, time: int) -> tuple[jax.Array, jax.Array] | None:
    """``(last [B], any [B])``: each sequence's last real step, and whether it has one."""
    if mask is None:
        return None
    t = jnp.broadcast_to(jnp.arange(time), mask.shape)
    return jnp.max(jnp.where(mask, t, -1), axis=1), jnp.any(mask, axis=1)


def _last_step() -> Layer:
    name = "LastStep"

    def init(key, input_shape):
        x_shape, _, _, _ = split_shape(name, input_shape, with_state=False)
        return (x_shape[0], *x_shape[2:]), ()

    def forward(params, inputs):
        expect_no_params(name, params)
        x, mask, _, _ = split_input(name, inputs, with_state=False)
        last = _last_index(mask, x.shape[1])
        tupled = isinstance(inputs, (tuple, list))
        if last is None:
            return x[:, -1], (x.shape, x.dtype, None, tupled)
        pos, real = last
        y = jnp.take_along_axis(x, jnp.maximum(pos, 0)[:, None, None], axis=1)[:, 0]
        y = jnp.where(real[:, None], y, jnp.zeros_like(y))  # no real step: 0
        return y, (x.shape, x.dtype, last, tupled)

    def backward(params, res, dy):
        shape, dtype, last, tupled = res
        t = jnp.arange(shape[1])[None, :]
        if last is None:
            picked = jnp.broadcast_to(t == shape[1] - 1, shape[:2])
        else:
            picked = (t == last[0][:, None]) & last[1][:, None]  # [B, T]
        picked = picked.reshape(picked.shape + (1,) * (len(shape) - 2))
        dx = jnp.where(picked, dy[:, None].astype(dtype), jnp.zeros((), dtype))
        return (), (dx, None) if tupled else dx  # dx[b, last_b] = dy_b

    return layer(init, forward, backward, name=name)


#: The last step of each sequence: ``[B, T, H] -> [B, H]``; for ``(y, mask)`` the last real
#: step of each sequence (zeros for a sequence without one). No params.
LastStep = _last_step()


# -- Bidirectional ----------------------------------------------------------------------------


def _seq_part(name: str, out: Any, form: int, what: str) -> tuple[Any, bool]:
    """``(y, mask_echoed)`` of an inner layer's output (its shape, at init, or its value)."""
    if isinstance(out, RecurrentOutput):
        raise LayerError(f"{name}: the inner layer returns its state (return_state=True); "
                         "Bidirectional needs its outputs only")
    if form == 2 and isinstance(out, tuple) and len(out) == 2 and not _is_shape(out):
        return out[0], True
    if (what == "shape" and _is_shape(out)) or (what == "value" and not isinstance(out, tuple)):
        return out, False
    raise LayerError(f"{name}: the inner layer must return one sequence array (or (y, mask) "
                     f"for a masked input), got {out!r}" if what == "shape" else
                     f"{name}: the inner layer must return one array (or (y, mask))")


def Bidirectional(layer: Any) -> Layer:
    r"""Run ``layer`` forwards and, with its own params, backwards in time; concatenate.

    ``y = [f(x) ‖ R g(R x)]`` on the feature axis, with ``R`` the mask-aware reversal
    (:func:`reverse_time`): for ``(x, mask)`` each sequence is reversed within its own real
    steps, so the backward direction starts at each sequence's true end. The inner layer's
    output is one of two kinds (anything else is a LayerError, at init and at apply):

    * a sequence ``[B, T, H]`` with the input's ``B`` and ``T``: reversed back, so ``y_t``
      pairs both directions at step ``t``;
    * one vector per sequence ``[B, H]`` (``return_sequences=False``, a ``LastStep``):
      concatenated as is, each direction's final state: the forward one at the last real
      step, the backward one at the first (as PyTorch's ``h_n``). Only the shape is
      checked: ``Flatten`` also gives ``[B, T·F]``, which is then no final state.

    A layer without memory along time (``Dense``, ``Dropout``) is accepted and gives two
    per-step maps, ``[x W_f + b_f ‖ x W_b + b_b]``: reversing and reversing back cancel.

    Args:
      layer: the layer to run in both directions (e.g. ``LSTM(8)``, or a ``serial`` stack);
        it takes the sequence input ``x`` (or ``(x, mask)``) and returns one array of the
        two kinds above (or ``(y, mask)``), not its state, and holds no state. Params are
        ``(params_forward, params_backward)``.

    A ``key`` (dropout inside ``layer``) is split, ``k_f, k_b = jax.random.split(key)``:
    ``k_f`` for the forward direction, ``k_b`` for the backward one, so the two draw
    independent masks (one key for both would drop the same steps mirrored in time).

    Shapes: ``x [B, T, F]`` (or ``(x, mask)``) ``-> [B, T, 2H]`` (or ``([B, T, 2H], mask)``,
    or ``[B, 2H]`` for a last-step layer). An initial state is not taken.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.Bidirectional(funnet.GRU(3))
    >>> out_shape, params = net.init(jax.random.PRNGKey(0), (-1, 5, 2))
    >>> out_shape, len(params)
    ((-1, 5, 6), 2)
    """
    inner = as_layer(layer)
    name = f"Bidirectional({inner.name})"
    if inner.stateful:
        raise StatefulModelError(f"{name}: the inner layer holds state, which Bidirectional "
                                 "does not carry")

    def init_with_state(key, input_shape):
        x_shape, _, _, form = split_shape(name, input_shape, with_state=False)
        k_f, k_b = jax.random.split(key)
        out, p_f, _ = inner.init_with_state(k_f, input_shape)
        _, p_b, _ = inner.init_with_state(k_b, input_shape)
        y_shape, echoed = _seq_part(name, out, form, "shape")
        _check_inner_shape(name, tuple(y_shape), x_shape)
        y_shape = (*y_shape[:-1], 2 * y_shape[-1])
        return (y_shape, input_shape[1]) if echoed else y_shape, (p_f, p_b), ()

    def run(params, inputs, key, rule):
        refuse_list_input(name, inputs)
        if not isinstance(params, (tuple, list)) or len(params) != 2:
            raise ParamsError(f"{name}: params must be (params_forward, params_backward), got "
                              f"{type(params).__name__}")
        x, mask, _, form = split_input(name, inputs, with_state=False)
        idx = reverse_index(mask, *x.shape[:2])
        reversed_in = join(_reverse(x, idx), None if form == 1 else inputs[1], form)
        k_f, k_b = (None, None) if key is None else jax.random.split(key)  # one per direction
        out_f, res_f = rule(params[0], inputs, k_f)
        out_b, res_b = rule(params[1], reversed_in, k_b)
        (y_f, echoed), (y_b, _) = (_seq_part(name, o, form, "value") for o in (out_f, out_b))
        _check_inner_shape(name, shape_of(y_f), shape_of(x))
        seq = y_b.ndim == 3
        y = jnp.concatenate([y_f, _reverse(y_b, idx) if seq else y_b], axis=-1)
        out = (y, inputs[1]) if echoed else y
        return out, (res_f, res_b, idx, seq, echoed, y_f.shape[-1], form)

    def forward_with_state(params, state, inputs, *, key=None, train=False, mask=None):
        out, res = run(params, inputs, key, lambda p, v, k: _forward_rule(inner, name)(
            p, (), v, key=k, train=train)[::2])
        return out, state, res

    def apply_with_state(params, state, inputs, *, key=None, train=False, mask=None):
        out, _ = run(params, inputs, key, lambda p, v, k: (
            inner.apply_with_state(p, (), v, key=k, train=train)[0], None))
        return out, state

    def backward(params, res, dy):
        res_f, res_b, idx, seq, echoed, h_f, form = res
        dy = dy[0] if echoed else dy
        dy_f, dy_b = dy[..., :h_f], dy[..., h_f:]
        dy_b = _reverse(dy_b, idx) if seq else dy_b  # R is an involution: Rᵀ = R
        wrap = (lambda d: (d, None)) if echoed else (lambda d: d)
        dp_f, dx_f = inner.backward(params[0], res_f, wrap(dy_f))
        dp_b, dx_b = inner.backward(params[1], res_b, wrap(dy_b))
        first = (lambda d: d) if form == 1 else (lambda d: d[0])
        dx = first(dx_f) + _reverse(first(dx_b), idx)  # dx = dx_f + R dx_g
        return (dp_f, dp_b), join_dx(dx, None, form)

    def decay(params):
        return tuple(inner.decay_mask(p) for p in params)

    rewire = None if inner.rewire is None else (
        lambda wiring: Bidirectional(inner.rewired(wiring)))
    has_rule = inner.has_backward
    return Layer(init_with_state, apply_with_state, forward_with_state if has_rule else None,
                 backward if has_rule else None, name=name, children=(inner, inner),
                 decay=decay, rewire=rewire)


def _check_inner_shape(name: str, y_shape: tuple, x_shape: tuple) -> None:
    """The inner output is a sequence ``[B, T, H]`` (reversed back step by step) or one
    vector per sequence ``[B, H]`` (concatenated as is)."""
    if len(y_shape) == 2 or (len(y_shape) == 3 and _same(y_shape[:2], tuple(x_shape[:2]))):
        return
    raise LayerError(f"{name}: the inner layer returns shape {y_shape} for the input "
                     f"{tuple(x_shape)}; it must return a sequence [B, T, H] of the input's "
                     "batch and time (reversed back step by step) or one vector per sequence "
                     "[B, H]")


def _forward_rule(inner: Layer, name: str):
    if not inner.has_backward:
        raise NoBackwardRuleError(f"{name}: {inner.name} has no hand-derived backward rule")
    return inner.forward_with_state
