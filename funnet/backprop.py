r"""Hand-derived backpropagation: the δ-recursion of math.md §5, layer by layer.

:func:`value_and_grad` runs each layer's ``forward`` (keeping what its backward needs),
seeds the error with the loss's hand-derived gradient, and chains the layers' hand-written
``backward`` rules in reverse::

    δ(L)      = ∂L/∂z(L)                    (softmax + CE: (ŷ - t)/N)
    δ(l)      = f_l'(z(l)) ⊙ (δ(l+1) W(l+1)ᵀ)
    ∂L/∂W(l)  = a(l-1)ᵀ δ(l)
    ∂L/∂b(l)  = Σ_rows δ(l)

No ``jax.grad`` is involved, so it is an independent witness for it (``funnet.check``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from ._types import Layer, NoBackwardRuleError, PyTree, as_layer
from .layers import chain_backward
from .losses import Loss, l2_penalty, l2_penalty_grad

__all__ = ["backward", "value_and_grad"]


def _check_loss(loss: Any) -> Loss:
    if not isinstance(loss, Loss):
        raise TypeError(
            f"hand-derived backprop needs a funnet Loss with a hand-derived .grad "
            f"(e.g. funnet.softmax_cross_entropy), got {loss!r}"
        )
    if loss.ranking:
        raise TypeError(
            f"{loss.name} ranks two score arrays (s, s_c) and is not a loss of a model's output "
            "and a target; differentiate it with jax.grad or its .grad (see "
            "examples/max_margin.py)"
        )
    return loss


def backward(model: Layer, params: PyTree, x: Any, dy: Any, *, key: jax.Array | None = None):
    r"""Pull ``dy = ∂L/∂y`` back through ``model`` by its hand rules: ``(dparams, dx)``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.Dense(1)
    >>> _, p = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> dp, dx = funnet.backprop.backward(net, p, jnp.ones((3, 2)), jnp.ones((3, 1)))
    >>> dp["W"].tolist(), dp["b"].tolist()  # xᵀ dy, Σ dy
    ([[3.0], [3.0]], [3.0])
    """
    model = as_layer(model)
    if model.backward is None or model.forward is None:
        raise NoBackwardRuleError(f"{model.name} has no hand-derived backward rule")
    _, res = model.forward(params, x, key=key)
    return model.backward(params, res, dy)


def value_and_grad(
    model: Layer,
    loss: Loss,
    *,
    l2: float = 0.0,
    return_deltas: bool = False,
) -> Callable[..., tuple]:
    r"""``(params, x, y, *, key=None) -> (loss, grads)`` by hand-derived backprop.

    The objective is the structural risk of math.md §4,
    ``R = loss(model(x), y) + ½ λ Σ_l ||W(l)||²`` with ``λ = l2`` (weights only).
    ``grads`` has exactly the pytree structure of ``params``. The function is pure and can
    be ``jax.jit``-ed. ``key`` feeds stochastic layers (``Dropout``) as in ``apply``.

    With ``return_deltas=True`` (``model`` must be a ``serial``) it returns
    ``(loss, grads, deltas)`` where ``deltas[l] = ∂L/∂(output of layer l)``: for a ``Dense``
    layer that is its error term ``δ(l) = ∂L/∂z(l)``, to inspect vanishing gradients.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(2))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 4))
    >>> x, y = jnp.ones((5, 4)), jnp.array([0, 1, 0, 1, 1])
    >>> value, grads = funnet.backprop.value_and_grad(net, funnet.softmax_cross_entropy)(
    ...     params, x, y)
    >>> ref = jax.grad(lambda p: funnet.softmax_cross_entropy(net.apply(p, x), y))(params)
    >>> bool(jnp.allclose(grads[0]["W"], ref[0]["W"], atol=1e-6))
    True
    """
    model = as_layer(model)
    loss = _check_loss(loss)
    if model.backward is None or model.forward is None:
        raise NoBackwardRuleError(
            f"{model.name} has no hand-derived backward rule; use jax.value_and_grad"
        )
    if return_deltas and model.kind != "serial":
        raise TypeError(f"return_deltas needs a serial model, got {model.name}")

    def value_and_grad_fn(params: PyTree, x: Any, y: Any, *, key: jax.Array | None = None):
        out, residuals = model.forward(params, x, key=key)
        value = loss(out, y)
        dout = loss.grad(out, y)  # δ at the output: ∂L/∂ŷ
        if return_deltas:
            grads, _, deltas = chain_backward(model.children, params, residuals, dout)
        else:
            grads, _ = model.backward(params, residuals, dout)
        if l2:
            value = value + l2_penalty(params, l2)
            grads = jax.tree_util.tree_map(lambda g, r: g + r, grads, l2_penalty_grad(params, l2))
        return (value, grads, deltas) if return_deltas else (value, grads)

    return value_and_grad_fn
