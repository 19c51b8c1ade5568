r"""Inverted dropout, active in training mode only."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._validate import LayerError, expect_no_params, refuse_graph, static_bool
from ..contract import Layer, layer
from ._paramless import identity_init

__all__ = ["Dropout"]


def Dropout(rate: float) -> Layer:
    r"""Inverted dropout: drop each unit with probability ``rate``, scale the rest by ``1/(1-rate)``.

    With ``train=True`` the mask ``m ~ Bernoulli(1 - rate)`` is drawn from ``key`` (required
    then); with ``train=False`` (evaluation, the default) the layer is the identity.
    Backward: ``dx = m ⊙ dy / (1 - rate)``.

    Args:
        rate: the drop probability, in ``[0, 1)``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> init, apply = funnet.Dropout(0.5)
    >>> apply((), jnp.ones(4)).tolist()  # evaluation: identity
    [1.0, 1.0, 1.0, 1.0]
    >>> y = apply((), jnp.ones(4), key=jax.random.PRNGKey(0), train=True)
    >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    """
    try:
        rate = float(rate)
    except (TypeError, ValueError):
        raise LayerError(f"Dropout: rate must be a number in [0, 1), got {rate!r}") from None
    if not 0.0 <= rate < 1.0:
        raise LayerError(f"Dropout: rate is the drop probability and must be in [0, 1), got {rate}")
    name = f"Dropout({rate})"
    keep = 1.0 - rate

    def forward(params, x, *, key=None, train=False):
        expect_no_params(name, params)
        refuse_graph(name, x)  # a graph's nodes: nodewise(Dropout(rate))
        if not static_bool(train, f"{name}: train") or rate == 0:
            return x, None
        if key is None:
            raise LayerError(f"{name}: train=True needs a PRNG key to draw the mask "
                             "(apply(..., key=key, train=True))")
        mask = jax.random.bernoulli(key, keep, jnp.shape(x))
        return jnp.where(mask, x / keep, jnp.zeros_like(x)), mask  # y = m ⊙ x / (1 - p)

    def backward(params, mask, dy):
        if mask is None:
            return (), dy
        return (), jnp.where(mask, dy / keep, jnp.zeros_like(dy))  # dx = m ⊙ dy / (1 - p)

    return layer(identity_init(name), forward, backward, name=name)
