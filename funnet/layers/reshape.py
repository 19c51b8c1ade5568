r"""Layers that only move entries around: ``Identity``, ``Flatten``, ``Reshape``.

Backward rules: ``Identity`` ``dx = dy``; ``Flatten``/``Reshape`` ``dx = reshape(dy)``
to the input's shape.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .._validate import LayerError, check_input_shape, expect_no_params
from ..contract import Layer, layer
from ._paramless import paramless

__all__ = ["Flatten", "Identity", "Reshape"]


def _identity() -> Layer:
    def init(key, input_shape):
        return input_shape, ()

    def forward(params, x):
        expect_no_params("Identity", params)
        return x, None

    def backward(params, _, dy):
        return (), dy  # dx = dy

    return layer(init, forward, backward, name="Identity")


#: ``y = x`` for any input, a pytree too (the skip branch of a residual block).
Identity = _identity()


def _flatten_init(key, input_shape):
    shape = check_input_shape("Flatten", input_shape, min_rank=1)
    return (shape[0], math.prod(shape[1:])), ()


#: ``[batch, d1, d2, …] -> [batch, d1·d2·…]``.
Flatten = paramless(
    "Flatten",
    lambda x: x.reshape(x.shape[0], -1),  # [batch, d1, d2, …] -> [batch, d1·d2·…]
    lambda x, y, dy: dy.reshape(x.shape),
    init=_flatten_init,
)


def Reshape(shape: Sequence[int]) -> Layer:
    r"""Reshape every sample: ``[batch, *in] -> [batch, *shape]``; one entry may be ``-1``.

    Args:
        shape: the shape of one output sample, at most one entry ``-1`` (inferred).

    >>> import jax, jax.numpy as jnp, funnet
    >>> funnet.Reshape((8, 8, 1)).init(jax.random.PRNGKey(0), (-1, 64))[0]
    (-1, 8, 8, 1)
    """
    try:
        target = tuple(int(d) for d in shape)
    except (TypeError, ValueError):
        raise LayerError(f"Reshape: shape must be a tuple of ints, got {shape!r}") from None
    name = f"Reshape({target})"
    if sum(d == -1 for d in target) > 1 or any(d == 0 or d < -1 for d in target):
        raise LayerError(f"{name}: sizes must be positive, with at most one -1")

    def resolve(sample_shape: tuple[int, ...]) -> tuple[int, ...]:
        size, known = math.prod(sample_shape), math.prod(d for d in target if d != -1)
        if -1 in target and size % known == 0:
            return tuple(size // known if d == -1 else d for d in target)
        if known != size:
            raise LayerError(f"{name}: a sample of shape {sample_shape} ({size} entries) cannot "
                             f"be reshaped to {target}")
        return target

    def init(key, input_shape):
        in_shape = check_input_shape(name, input_shape, min_rank=1)
        return (in_shape[0], *resolve(in_shape[1:])), ()

    def forward(params, x):
        expect_no_params(name, params)
        if x.ndim < 1:
            raise LayerError(f"{name}: input of shape {x.shape} has no batch axis")
        return x.reshape((x.shape[0], *resolve(x.shape[1:]))), x.shape

    def backward(params, in_shape, dy):
        return (), dy.reshape(in_shape)  # dx = reshape(dy)

    return layer(init, forward, backward, name=name)
