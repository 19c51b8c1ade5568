r"""Hand-derived backpropagation: the δ-recursion of docs/math.md §5, layer by layer.

:func:`value_and_grad` runs each layer's ``forward`` (keeping what its backward needs),
seeds the error with the loss's hand-derived gradient, and chains the layers' hand-written
``backward`` rules in reverse::

    δ(L)      = ∂L/∂z(L)                    (softmax + CE: (ŷ - t)/N)
    δ(l)      = f_l'(z(l)) ⊙ (δ(l+1) W(l+1)ᵀ)
    ∂L/∂W(l)  = a(l-1)ᵀ δ(l)
    ∂L/∂b(l)  = Σ_rows δ(l)

No ``jax.grad`` is involved, so it is an independent witness for it (``funnet.check``).
Inputs without a gradient (integer ids, a graph's structure) get ``None`` from their
layer's backward; model state (running statistics) is carried along, never differentiated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from .contract import Layer, NoBackwardRuleError, PyTree, StatefulModelError, as_layer
from .layers.combinators import _chain_backward
from .layers.sequence import TimeDeltas
from .losses import Loss, l2_penalty, l2_penalty_grad

__all__ = ["TimeDeltas", "backward", "value_and_grad"]


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


def _rule(model: Layer) -> Layer:
    model = as_layer(model)
    if not model.has_backward:
        raise NoBackwardRuleError(
            f"{model.name} has no hand-derived backward rule; use jax.value_and_grad"
        )
    return model


def backward(model: Layer, params: PyTree, x: Any, dy: Any, *, key: jax.Array | None = None,
             train: bool = False, state: PyTree = ()) -> tuple[PyTree, Any]:
    r"""Pull ``dy = ∂L/∂y`` back through ``model`` by its hand rules: ``(dparams, dx)``.

    ``dx`` is ``None`` for an input without a gradient. ``key``, ``train`` and ``state``
    are passed to the forward pass as in ``apply_with_state``.

    Args:
        model: the :class:`funnet.Layer` whose hand backward rules are applied.
        params: its params.
        x: the input the forward pass is run at.
        dy: the gradient of the loss at the model's output, shaped like the output.
        key: the PRNG key of the forward pass (``Dropout`` with ``train=True``).
        train: the forward pass's training mode.
        state: the model's state (``BatchNorm``), ``()`` for a model without.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.Dense(1)
    >>> _, p = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> dp, dx = funnet.backprop.backward(net, p, jnp.ones((3, 2)), jnp.ones((3, 1)))
    >>> dp["W"].tolist(), dp["b"].tolist()  # xᵀ dy, Σ dy
    ([[3.0], [3.0]], [3.0])
    """
    model = _rule(model)
    _, _, res = model.forward_with_state(params, state, x, key=key, train=train)
    return model.backward(params, res, dy)


def value_and_grad(
    model: Layer,
    loss: Loss,
    *,
    l2: float = 0.0,
    return_deltas: bool = False,
    has_state: bool = False,
) -> Callable[..., tuple]:
    r"""The loss and its gradient by hand-derived backprop, as a pure (jit-able) function.

    Without state: ``(params, x, y, *, key=None, train=False) -> (loss, grads)``.
    With ``has_state=True`` (required for a model holding state):
    ``(params, state, x, y, *, key=None, train=False) -> ((loss, new_state), grads)``,
    the shape of ``jax.value_and_grad(..., has_aux=True)``.

    The objective is the structural risk of docs/math.md §4,
    ``R = loss(model(x), y) + ½ λ Σ_l ||W(l)||²`` with ``λ = l2`` over the params each
    layer declares weight-decayed. ``grads`` has exactly the pytree structure of ``params``.
    ``key``, ``train`` and ``mask`` feed the forward pass (``Dropout`` drops when
    ``train=True``; ``mask``, the 0/1 vector of real rows, keeps padding rows out of batch
    statistics — the loss must weight those rows by 0 itself).
    ``x`` may be a tuple whose parts have no gradient (ids, a graph), as the layers allow.

    With ``return_deltas=True`` (``model`` must be a ``serial``) a third element
    ``deltas`` is returned, ``deltas[l] = ∂L/∂(output of layer l)``: for a ``Dense`` layer
    that is its error term ``δ(l) = ∂L/∂z(l)``, to inspect vanishing gradients. For a
    recurrent layer (``RNN``, ``LSTM``, ``GRU`` at the top level of the ``serial``) the
    entry is a :class:`TimeDeltas` ``(output, h, c)``: ``output`` is that same gradient,
    ``h = ∂L/∂h_t`` ``[B, T, H]`` the gradient through time at every step's state (and
    ``c = ∂L/∂c_t`` for the LSTM), carried by the layer's own backward scan: vanishing
    gradients through time (docs/recurrent.md, which also says what ``h`` is at padding
    steps).

    Args:
        model: the :class:`funnet.Layer` (every layer in it has a backward rule).
        loss: the :class:`funnet.Loss`; its hand gradient seeds the recursion.
        l2: the weight-decay factor λ of the objective (``0``: none).
        return_deltas: also return each layer's output gradient (``model`` a ``serial``).
        has_state: the returned function takes and returns the model's state.

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
    model = _rule(model)
    loss = _check_loss(loss)
    if return_deltas and model.kind != "serial":
        raise TypeError(f"return_deltas needs a serial model, got {model.name}")
    if model.stateful and not has_state:
        raise StatefulModelError(
            f"{model.stateful_path()} holds state: use value_and_grad(..., has_state=True), "
            "whose function takes (params, state, x, y) and returns ((loss, state), grads)"
        )

    run = _hand_pass(model, loss, l2=l2, return_deltas=return_deltas)

    if has_state:
        def value_and_grad_with_state(params, state, x, y, *, key=None, train=False,
                                      mask=None):
            value, _, _, new_state, grads, deltas = run(params, state, x, y, key, train, mask)
            out = ((value, new_state), grads)
            return (*out, deltas) if return_deltas else out

        return value_and_grad_with_state

    def value_and_grad_fn(params: PyTree, x: Any, y: Any, *, key: jax.Array | None = None,
                          train: bool = False, mask: Any = None):
        value, _, _, _, grads, deltas = run(params, (), x, y, key, train, mask)
        return (value, grads, deltas) if return_deltas else (value, grads)

    return value_and_grad_fn


def _hand_pass(model: Layer, loss: Loss, *, l2: float, return_deltas: bool) -> Callable:
    """One forward and one hand backward pass: ``(params, state, x, y, key, train, mask) ->
    (objective, data_loss, out, new_state, grads, deltas)``, the objective being
    ``data_loss + ½ λ Σ ||W||²``; training (``funnet.train``) uses ``data_loss`` and ``out``
    (for accuracy) from this same pass rather than running the model again."""
    model, loss = _rule(model), _check_loss(loss)

    def run(params, state, x, y, key, train, mask):
        out, new_state, residuals = model.forward_with_state(params, state, x, key=key,
                                                             train=train, mask=mask)
        data = loss(out, y)
        dout = loss.grad(out, y)  # δ at the output: ∂L/∂ŷ
        if return_deltas:
            grads, _, deltas = _chain_backward(model.children, params, residuals, dout,
                                               inner=True)
        else:
            (grads, _), deltas = model.backward(params, residuals, dout), None
        value = data
        if l2:
            decay = model.decay_mask(params)
            value = data + l2_penalty(params, l2, mask=decay)
            grads = jax.tree_util.tree_map(lambda g, r: g + r, grads,
                                           l2_penalty_grad(params, l2, mask=decay))
        return value, data, out, new_state, grads, deltas

    return run
