r"""The fully connected layer ``y = x W + b`` (docs/math.md §3, row form)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from .._validate import (
    LayerError,
    ParamsError,
    check_input_shape,
    check_int,
    expect_params,
    expect_rank,
    shape_of,
)
from ..contract import Layer, layer

__all__ = ["Dense"]

_GLOROT_NORMAL = jax.nn.initializers.glorot_normal()


def Dense(
    out_dim: int,
    *,
    W_init: Callable[..., jax.Array] = _GLOROT_NORMAL,
    b_init: Callable[..., jax.Array] = jax.nn.initializers.zeros,
) -> Layer:
    r"""Fully connected layer ``y = x W + b`` (docs/math.md §3, row form).

    Args:
      out_dim: number of output neurons ``M_l``.
      W_init: initializer for ``W`` of shape ``[in_dim, out_dim]``; default Glorot normal
        (``jax.nn.initializers.glorot_normal()``, as stax).
      b_init: initializer for ``b`` of shape ``[out_dim]``; default zeros.

    Shapes: ``x [..., in_dim] -> y [..., out_dim]``; params ``{"W", "b"}``, with
    ``in_dim * out_dim + out_dim`` entries; weight decay applies to ``W``. Backward:
    ``dW = xᵀ dy``, ``db = Σ_rows dy``, ``dx = dy Wᵀ``.

    >>> import jax, funnet
    >>> init, apply = funnet.Dense(4)
    >>> out_shape, params = init(jax.random.PRNGKey(0), (-1, 2))
    >>> out_shape, params["W"].shape, params["b"].shape
    ((-1, 4), (2, 4), (4,))
    """
    out_dim = check_int(out_dim, "Dense: out_dim", error=LayerError)
    name = f"Dense({out_dim})"

    def init(key, input_shape):
        shape = check_input_shape(name, input_shape, features=True)
        k1, k2 = jax.random.split(key)
        return shape[:-1] + (out_dim,), {
            "W": W_init(k1, (shape[-1], out_dim)),
            "b": b_init(k2, (out_dim,)),
        }

    def check(params, x):
        expect_params(name, params, ("W", "b"))
        expect_rank(name, x, 1)
        W, b = params["W"], params["b"]
        if np.ndim(W) != 2 or shape_of(b) != (shape_of(W)[1],):
            raise ParamsError(f"{name}: W {shape_of(W)} and b {shape_of(b)} do not fit together")
        if shape_of(W)[1] != out_dim:
            raise ParamsError(f"{name}: W has shape {shape_of(W)}, {shape_of(W)[1]} outputs, "
                              f"but the layer has out_dim {out_dim}")
        if shape_of(x)[-1] != shape_of(W)[0]:
            raise LayerError(
                f"{name}: input has shape {shape_of(x)}, trailing dim {shape_of(x)[-1]}, "
                f"but W has shape {shape_of(W)} (expects trailing dim {shape_of(W)[0]})"
            )

    def apply(params, x):
        check(params, x)
        z = x @ params["W"]
        # explicit bias broadcast (no implicit rank promotion): z = a W + b
        return z + params["b"].reshape((1,) * (z.ndim - 1) + (-1,))

    def forward(params, x):
        return apply(params, x), x

    def backward(params, x, dy):
        x2 = x.reshape(-1, x.shape[-1])
        dy2 = dy.reshape(-1, dy.shape[-1])
        W, b = params["W"], params["b"]
        return {  # each gradient in the dtype of what it differentiates, as jax.grad's
            "W": (x2.T @ dy2).astype(W.dtype),  # dW = aᵀ δ
            "b": dy2.sum(axis=0).astype(b.dtype),  # db = Σ_rows δ
        }, (dy @ W.T).astype(x.dtype)  # dx = δ Wᵀ

    return layer(init, forward, backward, apply=apply, name=name, decay=("W",))
