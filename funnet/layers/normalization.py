r"""Normalisation layers: ``BatchNorm``, ``LayerNorm``, ``GroupNorm`` (docs/math.md §8.3, §8.4).

Each layer normalises ``x`` over a set ``R`` of axes and rescales per channel::

    n  = Σ_R w,   μ = Σ_R w ⊙ x / n,   σ² = Σ_R w ⊙ (x − μ)² / n     (biased)
    x̂  = (x − μ) / √(σ² + ε),          y = γ ⊙ x̂ + β

with weights ``w = 1``, except in a masked ``BatchNorm`` (``w`` = the row mask). One
compact backward serves all three (``g = γ ⊙ dy``; the sums run over ``R``, over every
element including masked rows, whose outputs depend on ``μ`` and ``σ²`` too)::

    dβ = Σ dy,   dγ = Σ dy ⊙ x̂
    dx = (g − (w/n) ⊙ (Σ_R g + x̂ ⊙ Σ_R g ⊙ x̂)) / √(σ² + ε)

Without a mask ``w/n = 1/m`` (``m`` elements in ``R``) and this is the textbook
``dx = (g − mean_R g − x̂ ⊙ mean_R(g ⊙ x̂)) / √(σ² + ε)``. ``γ`` (``"scale"``, init 1) and
``β`` (``"offset"``, init 0) are not weight-decayed.

Dtypes. ``y`` has Conv's dtype, ``jnp.result_type(x, γ, β)``: a ``float16`` ``x`` with
``float32`` params gives ``float32`` (all three layers), ``bfloat16`` params and input give
``bfloat16``, and an integer ``x`` is normalised as its float value, in the params' float
dtype. The statistics (``μ``, ``σ²``, ``x̂``) and the backward's reductions are computed
in at least ``float32`` (``x``'s float dtype promoted with ``float32``, as flax), so a
half-precision batch whose values lie ~300 from their mean does not overflow ``σ²``;
``float32`` and ``float64`` inputs are computed in their own dtype. The backward returns
``dγ``, ``dβ`` in the params' dtypes and ``dx`` in ``x``'s dtype, or ``None`` for an
integer ``x`` (it has no gradient, as ``Embedding``'s ids).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from .._validate import (
    LayerError,
    ParamsError,
    check_input_shape,
    check_int,
    expect_cotangent,
    expect_params,
    expect_rank,
    refuse_graph,
    shape_of,
    static_bool,
)
from ..contract import Layer, input_grad, layer

__all__ = ["BatchNorm", "GroupNorm", "LayerNorm"]

_KEYS = ("scale", "offset")


# ---------------------------------------------------------------------------------------
# The shared formulas.


def _dtypes(x: jax.Array, params: dict) -> tuple[Any, Any]:
    """``(output dtype, statistics dtype)`` of a normalisation of ``x`` (module docstring).

    The output has Conv's dtype, ``jnp.result_type(x, γ, β)`` (an integer ``x`` gets the
    params' float dtype); the statistics are computed in ``x``'s float dtype (the output's
    for an integer ``x``) promoted to at least ``float32``.
    """
    out = jnp.result_type(x, params["scale"], params["offset"])
    if not jnp.issubdtype(out, jnp.inexact):
        out = jnp.result_type(float)
    base = x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else out
    return out, jnp.promote_types(base, jnp.float32)


def _at_least(v: jax.Array, like: jax.Array) -> jax.Array:
    """``v`` promoted to ``like``'s (statistics) dtype if narrower: half-precision ``dy``
    is reduced in ``float32``; a no-op for ``float32``/``float64``."""
    return v.astype(jnp.promote_types(v.dtype, like.dtype))


def _normalise(x: jax.Array, axes: tuple[int, ...], epsilon: float,
               w: jax.Array | None = None) -> tuple[jax.Array, ...]:
    r"""``(x̂, 1/√(σ²+ε), w/n, μ, σ²)`` over ``axes`` (kept as size-1 axes).

    ``w`` (broadcast to ``x``'s shape) weights the statistics: ``n = Σ w`` (at least 1, so an
    all-zero ``w`` gives ``μ = σ² = 0``), ``μ = Σ w x / n``, ``σ² = Σ w (x − μ)² / n``;
    without it ``w/n = 1/m``. ``x`` is float (the statistics' dtype); ``x̂`` has its dtype.
    """
    if w is None:
        mu = jnp.mean(x, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(x - mu), axis=axes, keepdims=True)
        c = jnp.asarray(mu.size / x.size, x.dtype)  # 1/m
    else:
        n = jnp.maximum(jnp.sum(w, axis=axes, keepdims=True), 1)
        mu = jnp.sum(w * x, axis=axes, keepdims=True) / n
        var = jnp.sum(w * jnp.square(x - mu), axis=axes, keepdims=True) / n
        c = w / n
    r = lax.rsqrt(var + epsilon)
    return ((x - mu) * r).astype(x.dtype), r, c, mu, var


def _dx(g: jax.Array, xhat: jax.Array, r: jax.Array, c: jax.Array,
        axes: tuple[int, ...]) -> jax.Array:
    r"""``dx = r ⊙ (g − c ⊙ (Σ_R g + x̂ ⊙ Σ_R g ⊙ x̂))``, ``c = w/n`` (see the module docstring)."""
    sg = jnp.sum(g, axis=axes, keepdims=True)
    sgx = jnp.sum(g * xhat, axis=axes, keepdims=True)
    return r * (g - c * (sg + xhat * sgx))


def _affine_grads(params: dict, dy: jax.Array, xhat: jax.Array, keep: int) -> dict:
    """``{"scale": Σ dy ⊙ x̂, "offset": Σ dy}`` over every axis but ``keep``, in params' dtypes."""
    axes = tuple(a for a in range(dy.ndim) if a != keep)
    dy = _at_least(dy, xhat)
    return {"scale": jnp.sum(dy * xhat, axis=axes).astype(params["scale"].dtype),
            "offset": jnp.sum(dy, axis=axes).astype(params["offset"].dtype)}


def _along(v: jax.Array, ndim: int, axis: int) -> jax.Array:
    """A ``[C]`` vector shaped to broadcast along ``axis`` of a rank-``ndim`` array."""
    return v.reshape(tuple(-1 if a == axis else 1 for a in range(ndim)))


# ---------------------------------------------------------------------------------------
# Options and params, checked.


def _name(stem: str, head: str = "", **options: tuple[Any, Any]) -> str:
    """``BatchNorm`` or ``BatchNorm(momentum=0.99)``: the options that differ from defaults."""
    parts = [head] if head else []
    parts += [f"{k}={v}" for k, (v, default) in options.items() if v != default]
    return f"{stem}({', '.join(parts)})" if parts else stem


def _number(value: Any, what: str) -> float:
    if not isinstance(value, (bool, str)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise LayerError(f"{what} must be a number, got {value!r}")


def _epsilon(stem: str, epsilon: Any) -> float:
    epsilon = _number(epsilon, f"{stem}: epsilon")
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise LayerError(f"{stem}: epsilon is added to the variance under the square root and "
                         f"must be a finite number > 0, got {epsilon}")
    return epsilon


def _vectors(name: str, what: str, tree: Any, keys: tuple[str, ...], c: int,
             x: Any) -> None:
    """``tree`` must be a dict of ``keys``, each of shape ``[c]`` (``c`` channels of ``x``)."""
    if what == "params":
        expect_params(name, tree, keys)
    elif not isinstance(tree, dict) or set(tree) != set(keys):
        got = sorted(tree) if isinstance(tree, dict) else type(tree).__name__
        raise ParamsError(f"{name}: state must be a dict with keys {sorted(keys)} (from "
                          f"init_with_state), got {got}")
    for k in keys:
        if shape_of(tree[k]) != (c,):
            raise ParamsError(f"{name}: {what}['{k}'] has shape {shape_of(tree[k])}, but the "
                              f"input of shape {shape_of(x)} has {c} channels: expects ({c},)")


def _scale_offset(c: int) -> dict:
    dtype = jnp.result_type(float)
    return {"scale": jnp.ones((c,), dtype), "offset": jnp.zeros((c,), dtype)}


# ---------------------------------------------------------------------------------------
# BatchNorm.


def BatchNorm(*, momentum: float = 0.9, epsilon: float = 1e-5, axis: int = -1) -> Layer:
    r"""Batch normalisation over every axis but the channel axis ``axis`` (docs/math.md §8.3).

    Training (``train=True``): the batch statistics ``μ``, ``σ²`` (biased: divided by the
    count ``m``, the number of rows times the spatial size) normalise ``x``,
    ``y = γ ⊙ (x − μ)/√(σ² + ε) + β``, and the running statistics are updated,
    ``mean ← momentum·mean + (1 − momentum)·μ`` and ``var ← momentum·var +
    (1 − momentum)·σ²`` with the same **biased** ``σ²`` (as flax; PyTorch stores the
    unbiased ``m σ²/(m − 1)``, undefined for one row). ``momentum`` is the weight of the
    old value (flax's convention; PyTorch's ``momentum=0.1`` is ``momentum=0.9`` here).
    Evaluation (``train=False``, the default): the running statistics normalise, the state
    comes back unchanged and the layer is affine, ``dx = γ dy / √(var + ε)``.

    With ``mask`` (the 0/1 ``[batch]`` vector of real rows that ``fit`` passes for a padded
    batch) the statistics are weighted by it: ``n = Σ mask × spatial size``, and the rows
    with mask 0 neither count in ``μ``, ``σ²`` nor in the update; they are still normalised
    (by the statistics of the real rows), and the backward is the exact derivative of that
    masked formula, for any ``dy``. A batch whose mask is all 0 has no statistics: it is
    normalised with ``μ = σ² = 0`` and leaves the state unchanged.

    A batch of one row (``[1, C]``) in training has ``σ² = 0``: then ``x̂ = 0``, ``y = β``,
    ``dx = 0`` and ``dγ = 0`` (finite, as the formula says; such a batch carries no
    information for the layer).

    Args:
      momentum: the weight of the old running statistic, in ``[0, 1)``.
      epsilon: ``ε > 0`` added to the variance.
      axis: the channel axis (default the last, channels-last images ``[B, H, W, C]``); any
        axis but the batch axis 0.

    Shapes: ``x [batch, ..., C, ...] -> y`` of the same shape; params ``{"scale", "offset"}``
    and state ``{"mean", "var"}``, each ``[C]``; state starts at ``mean = 0``, ``var = 1``,
    so an untrained model evaluates as ``γ ⊙ x / √(1 + ε) + β``. Stateful: use
    ``init_with_state`` and ``apply_with_state``. Backward (training):
    ``dβ = Σ dy``, ``dγ = Σ dy ⊙ x̂``,
    ``dx = γ/√(σ² + ε) ⊙ (dy − (w/n) ⊙ (dβ + x̂ ⊙ dγ))`` (``w/n = 1/m`` without a mask).

    >>> import jax, jax.numpy as jnp, funnet
    >>> bn = funnet.BatchNorm(momentum=0.5)
    >>> _, params, state = bn.init_with_state(jax.random.PRNGKey(0), (-1, 2))
    >>> x = jnp.array([[0.0, 1.0], [2.0, 5.0]])
    >>> y, state = bn.apply_with_state(params, state, x, train=True)
    >>> y.round(3).tolist()
    [[-1.0, -1.0], [1.0, 1.0]]
    >>> state["mean"].tolist(), state["var"].tolist()   # 0.5·(0, 1) + 0.5·(μ, σ²)
    ([0.5, 1.5], [1.0, 2.5])
    """
    momentum = _number(momentum, "BatchNorm: momentum")
    if not 0.0 <= momentum < 1.0:
        raise LayerError(f"BatchNorm: momentum is the weight of the old running statistic "
                         f"(new = momentum·old + (1 − momentum)·batch) and must be in [0, 1), "
                         f"got {momentum}")
    epsilon = _epsilon("BatchNorm", epsilon)
    if isinstance(axis, bool) or not isinstance(axis, int):
        raise LayerError(f"BatchNorm: axis must be an int (the channel axis), got {axis!r}")
    name = _name("BatchNorm", momentum=(momentum, 0.9), epsilon=(epsilon, 1e-5),
                 axis=(axis, -1))

    def channel_axis(shape: tuple[int, ...], what: str) -> int:
        rank = len(shape)
        if rank < 2:
            raise LayerError(f"{name}: the {what} of shape {shape} has rank {rank}, but batch "
                             "normalisation needs at least 2 axes, [batch, ..., C, ...] "
                             "(axis 0 is the batch)")
        if not -rank <= axis < rank or axis % rank == 0:
            raise LayerError(f"{name}: axis {axis} must be a channel axis of the {what} of "
                             f"shape {shape}, rank {rank}: one of the axes 1…{rank - 1} "
                             "(axis 0 is the batch)")
        return axis % rank

    def init(key, input_shape):
        shape = check_input_shape(name, input_shape, min_rank=2)
        c = shape[channel_axis(shape, "input")]
        dtype = jnp.result_type(float)
        return shape, _scale_offset(c), {"mean": jnp.zeros((c,), dtype),
                                         "var": jnp.ones((c,), dtype)}

    def check(params, state, x, mask) -> int:
        refuse_graph(name, x)
        ax = channel_axis(shape_of(x), "input")
        c = shape_of(x)[ax]
        _vectors(name, "params", params, _KEYS, c, x)
        _vectors(name, "state", state, ("mean", "var"), c, x)
        if mask is not None and shape_of(mask) != shape_of(x)[:1]:
            raise LayerError(f"{name}: mask has shape {shape_of(mask)}, but the input has shape "
                             f"{shape_of(x)}: the mask is one 0/1 entry per row, "
                             f"({shape_of(x)[0]},)")
        return ax

    def update(state, mu, var, mask):
        def mix(old, new):  # running ← momentum·running + (1 − momentum)·batch
            return (momentum * old + (1 - momentum) * new.reshape(-1)).astype(old.dtype)

        new = {"mean": mix(state["mean"], mu), "var": mix(state["var"], var)}
        if mask is None:
            return new
        real = jnp.sum(mask) > 0  # an all-padding batch leaves the state as it was
        return {k: jnp.where(real, new[k], state[k]) for k in new}

    def forward(params, state, x, *, train=False, mask=None):
        ax = check(params, state, x, mask)
        axes = tuple(a for a in range(x.ndim) if a != ax)
        x = jnp.asarray(x)
        out, stats = _dtypes(x, params)
        x_dtype, x = x.dtype, x.astype(stats)
        if static_bool(train, f"{name}: train"):
            w = None if mask is None else jnp.broadcast_to(
                mask.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1)), x.shape)
            xhat, r, c, mu, var = _normalise(x, axes, epsilon, w)
            state = update(state, mu, var, mask)
        else:  # evaluation: the running statistics are constants
            r = lax.rsqrt(_at_least(_along(state["var"], x.ndim, ax), x) + epsilon)
            mu = _at_least(_along(state["mean"], x.ndim, ax), x)
            xhat, c = ((x - mu) * r).astype(x.dtype), None
        gamma, beta = (_along(params[k], x.ndim, ax) for k in _KEYS)
        # y = γ x̂ + β, ordered (x − μ)(γ r) + β: reverse-mode autodiff of this order reduces
        # over the batch once for dγ and dr, not twice (benchmarks/cases/cnn.py profile)
        y = ((x - mu) * (gamma * r) + beta).astype(out)
        return y, state, (xhat, r, c, x_dtype)

    def backward(params, res, dy):
        xhat, r, c, x_dtype = res
        expect_cotangent(name, dy, xhat.shape)
        ax = axis % xhat.ndim
        g = _at_least(_along(params["scale"], dy.ndim, ax) * dy, xhat)
        if c is None:
            dx = r * g  # evaluation: dx = γ dy / √(var + ε)
        else:
            dx = _dx(g, xhat, r, c, tuple(a for a in range(dy.ndim) if a != ax))
        return _affine_grads(params, dy, xhat, ax), input_grad(dx, x_dtype)

    return layer(init, forward, backward, name=name, stateful=True)


# ---------------------------------------------------------------------------------------
# LayerNorm and GroupNorm.


def _per_sample(name: str, groups: int | None, epsilon: float, min_rank: int) -> Layer:
    """Normalise each sample: over its last axis (``groups=None``), or over its spatial axes
    and the channels of each of ``groups`` groups of the last axis."""

    def channels(shape: tuple[int, ...], what: str) -> int:
        c = shape[-1]
        if groups is not None and c % groups:
            raise LayerError(f"{name}: the {what} of shape {shape} has {c} channels, which "
                             f"{groups} groups do not divide")
        return c

    def init(key, input_shape):
        shape = check_input_shape(name, input_shape, min_rank=min_rank, features=True)
        return shape, _scale_offset(channels(shape, "input"))

    def grouped(v):  # [..., C] -> [..., G, C/G]: one group per axis -2 entry
        return v if groups is None else v.reshape(v.shape[:-1] + (groups, -1))

    def axes_of(v):  # the axes of each sample's statistics, in the grouped layout
        return (v.ndim - 1,) if groups is None else tuple(range(1, v.ndim - 2)) + (v.ndim - 1,)

    def forward(params, x):
        expect_rank(name, x, min_rank)
        c = channels(shape_of(x), "input")
        _vectors(name, "params", params, _KEYS, c, x)
        x = jnp.asarray(x)
        out, stats = _dtypes(x, params)
        xg = grouped(x.astype(stats))
        xhat, r, c, _, _ = _normalise(xg, axes_of(xg), epsilon)
        xhat = xhat.reshape(x.shape)
        gamma, beta = (_along(params[k], x.ndim, x.ndim - 1) for k in _KEYS)
        return (gamma * xhat + beta).astype(out), (xhat, r, c, x.dtype)  # y = γ x̂ + β

    def backward(params, res, dy):
        xhat, r, c, x_dtype = res
        expect_cotangent(name, dy, xhat.shape)
        g = grouped(_at_least(_along(params["scale"], dy.ndim, dy.ndim - 1) * dy, xhat))
        xg = grouped(xhat)
        dx = _dx(g, xg, r, c, axes_of(xg)).reshape(dy.shape)
        return _affine_grads(params, dy, xhat, dy.ndim - 1), input_grad(dx, x_dtype)

    return layer(init, forward, backward, name=name)


def LayerNorm(*, epsilon: float = 1e-5) -> Layer:
    r"""Layer normalisation: each sample over its last (feature) axis (docs/math.md §8.4).

    ``y = γ ⊙ (x − μ)/√(σ² + ε) + β`` with ``μ``, ``σ²`` (biased) the mean and variance of
    each row ``x[..., :]`` over its ``D`` features, as flax's default (reduction over the
    feature axis); every other axis is a row, so ``[B, T, D]`` normalises each ``(b, t)``.
    To normalise an image over ``(H, W, C)``, ``Flatten`` first or use ``GroupNorm(1)``.
    No state, no batch coupling: the same in training and evaluation.

    Args:
      epsilon: ``ε > 0`` added to the variance.

    Shapes: ``x [..., D] -> y [..., D]``; params ``{"scale", "offset"}`` of shape ``[D]``
    (init 1 and 0, not weight-decayed). Backward, per row with ``g = γ ⊙ dy``:
    ``dx = (g − mean_D g − x̂ ⊙ mean_D(g ⊙ x̂))/√(σ² + ε)``, ``dγ = Σ_rows dy ⊙ x̂``,
    ``dβ = Σ_rows dy``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> init, apply = funnet.LayerNorm()
    >>> _, params = init(jax.random.PRNGKey(0), (-1, 4))
    >>> apply(params, jnp.array([[1.0, 3.0, 1.0, 3.0]])).round(3).tolist()  # μ = 2, σ² = 1
    [[-1.0, 1.0, -1.0, 1.0]]
    """
    epsilon = _epsilon("LayerNorm", epsilon)
    return _per_sample(_name("LayerNorm", epsilon=(epsilon, 1e-5)), None, epsilon, 1)


def GroupNorm(groups: int, *, epsilon: float = 1e-5) -> Layer:
    r"""Group normalisation, channels last (docs/math.md §8.4).

    The ``C`` channels of ``x [B, ..., C]`` are split into ``groups`` consecutive groups of
    ``C/groups``; each sample is normalised over its spatial axes and the channels of each
    group: ``y = γ ⊙ (x − μ_g)/√(σ²_g + ε) + β``, with ``γ``, ``β`` per channel.
    ``GroupNorm(1)`` normalises each sample over all its axes (``LayerNorm`` over
    ``(H, W, C)``); ``GroupNorm(C)`` is instance normalisation. No state, no batch coupling.

    Args:
      groups: the number of groups; it must divide ``C`` (a :class:`LayerError` naming the
        shapes otherwise).
      epsilon: ``ε > 0`` added to the variance.

    Shapes: ``x [B, ..., C] -> y`` of the same shape; params ``{"scale", "offset"}`` of shape
    ``[C]`` (init 1 and 0, not weight-decayed). Backward: ``LayerNorm``'s, with the means
    taken over each group's ``spatial × C/groups`` elements.

    >>> import jax, jax.numpy as jnp, funnet
    >>> init, apply = funnet.GroupNorm(2)
    >>> _, params = init(jax.random.PRNGKey(0), (-1, 4))
    >>> apply(params, jnp.array([[1.0, 3.0, 10.0, 20.0]])).round(3).tolist()
    [[-1.0, 1.0, -1.0, 1.0]]
    """
    groups = check_int(groups, "GroupNorm: groups", error=LayerError)
    epsilon = _epsilon("GroupNorm", epsilon)
    name = _name("GroupNorm", str(groups), epsilon=(epsilon, 1e-5))
    return _per_sample(name, groups, epsilon, 2)
