r"""The training objective: the loss of the real rows, its gradient, and accuracy.

Padding and masking. Every sample takes part in every epoch: the shuffled index vector is
padded up to ``n_batches · batch_size`` with repeats of real rows, and a 0/1 mask marks the
padding. With mask ``m`` the batch objective is ``Σ_i w_i ℓ_i + ½ λ Σ ||W||²`` with
``w_i = m_i / Σ_j m_j`` and ``ℓ_i`` the loss of row ``i`` alone (``loss`` on a batch of one).
For a loss that is a mean over samples (all funnet losses) this *is* the loss of the real rows
only, and so is its gradient: padded rows get weight 0 in the loss (``jax.grad``) and in the
output error ``δ(L)_i = w_i ∂ℓ_i/∂ŷ_i`` (hand backprop), so they add exact zeros to
``dW = aᵀ δ`` and ``db = Σ_rows δ``. The model gets the mask too (``mask=`` of the layer
contract), so batch statistics (``BatchNorm``) leave the padding rows out. When
``batch_size`` divides the number of samples no mask is used at all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from .._validate import refuse_graph
from ..backprop import _hand_pass as hand_pass
from ..contract import Layer
from ..losses import Loss, l2_penalty

__all__ = ["GRADS", "accuracy_kind", "check_grad", "loss_and_grads", "row_correct", "weighted"]

GRADS = ("reverse", "hand")


def check_grad(grad: Any) -> str:
    """``grad`` as one of :data:`GRADS`; the old name ``"autodiff"`` still means ``"reverse"``."""
    if grad == "autodiff":
        warnings.warn('grad="autodiff" is now called grad="reverse" (reverse-mode autodiff, '
                      'the name funnet.check uses too)', DeprecationWarning, stacklevel=3)
        return "reverse"
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {GRADS}, got {grad!r}")
    return grad


def _declared_rows(loss: Any) -> Callable | None:
    """The loss's own per-row form (:attr:`Loss.per_row`), if it declares one."""
    return loss.per_row if isinstance(loss, Loss) else None


def _per_row(loss: Callable, out: jax.Array, y: Any) -> jax.Array:
    """``ℓ_i = loss(out[i:i+1], y[i:i+1])`` for every row: ``[batch]`` (the loss's declared
    ``per_row`` form, else the loss on each row under ``jax.vmap``)."""
    rows = _declared_rows(loss)
    if rows is not None:
        return rows(out, y)
    return jax.vmap(lambda o, t: loss(o[None], t[None]))(out, y)


def _per_row_grad(loss: Loss, out: jax.Array, y: Any) -> jax.Array:
    """``∂ℓ_i/∂ŷ_i`` for every row: ``N · ∂L/∂ŷ`` for a loss that declares itself a mean
    of per-row losses (``per_row``), else the hand gradient of each row alone."""
    if _declared_rows(loss) is not None:
        g = loss.grad(out, y)
        return g * jnp.asarray(out.shape[0], g.dtype)
    return jax.vmap(lambda o, t: loss.grad(o[None], t[None])[0])(out, y)


def _weights(w: tuple[jax.Array, Any], dtype: Any) -> jax.Array:
    """Row weights ``m_i / total`` in ``dtype`` from ``w = (mask m, total)``."""
    mask, total = w
    return mask.astype(dtype) / jnp.asarray(total).astype(dtype)


def weighted(loss: Callable, out: jax.Array, y: Any, w: tuple | None) -> jax.Array:
    """``loss(out, y)``, or ``Σ_i m_i ℓ_i / total`` when ``w = (mask m, total)`` is given."""
    if w is None:
        return loss(out, y)
    refuse_graph(getattr(loss, "name", "the loss"), out, "the predictions", nodewise=False)
    rows = _per_row(loss, out, y)
    return jnp.sum(_weights(w, rows.dtype) * rows)


def _masked_loss(loss: Loss) -> Loss:
    """A :class:`Loss` of ``(out, (y, w))``: ``Σ_i w_i ℓ_i``, hand grad ``w_i ∂ℓ_i/∂ŷ_i``
    (``w_i = m_i / total`` for ``w = (mask m, total)``)."""

    def value(out, yw):
        return weighted(loss, out, yw[0], yw[1])

    def grad(out, yw):
        y, w = yw
        g = _per_row_grad(loss, out, y)  # ∂ℓ_i/∂ŷ_i
        wt = _weights(w, g.dtype)
        return g * wt.reshape(wt.shape + (1,) * (g.ndim - 1))  # δ(L)_i = w_i ∂ℓ_i/∂ŷ_i

    return Loss(f"masked({loss.name})", value, grad)


def loss_and_grads(model: Layer, loss: Callable, *, l2: float, grad: str) -> Callable:
    """``(params, model_state, x, y, w, key) -> (data_loss, out, new_model_state, grads)``.

    ``w``: ``(mask, total)`` or None. ``grads`` is the gradient of
    ``data_loss + ½ λ Σ ||W||²``; ``data_loss`` excludes the penalty. The model runs in
    training mode and gets the row mask.
    """
    if grad == "hand":
        plain = hand_pass(model, loss, l2=l2, return_deltas=False)
        masked = hand_pass(model, _masked_loss(loss), l2=l2, return_deltas=False)

        def hand(params, state, x, y, w, key):
            if w is None:
                _, data, out, new_state, grads, _ = plain(params, state, x, y, key, True, None)
            else:
                _, data, out, new_state, grads, _ = masked(params, state, x, (y, w), key,
                                                           True, w[0])
            return data, out, new_state, grads

        return hand

    def reverse(params, state, x, y, w, key):
        def objective(p):
            out, new_state = model.apply_with_state(p, state, x, key=key, train=True,
                                                    mask=None if w is None else w[0])
            data = weighted(loss, out, y, w)
            total = data + l2_penalty(p, l2, mask=model.decay_mask(p)) if l2 else data
            return total, (data, out, new_state)

        (_, (data, out, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(
            params)
        return data, out, new_state, grads

    return reverse


# -------------------------------------------------------------------------- accuracy


def accuracy_kind(loss: Any, out_shape: Sequence[int], y_shape: Sequence[int],
                  y_dtype: Any) -> str | None:
    """How to score a row, or None when accuracy means nothing for this loss and target.

    Chosen from the task a :class:`~funnet.Loss` declares (``Loss.task``):
    ``"labels"``: integer targets ``[N, ...]`` for outputs ``[N, ..., K]`` (arg-max);
    ``"onehot"``: targets of the outputs' shape for a multiclass loss (arg-max of both);
    ``"binary"``: 0/1 targets for a binary loss on logits (``ŷ > 0``). A plain function
    (not a ``Loss``) declares nothing: integer targets then still mean class labels.
    """
    out_shape, y_shape = tuple(out_shape), tuple(y_shape)
    task = loss.task if isinstance(loss, Loss) else None
    labels = (jnp.issubdtype(y_dtype, jnp.integer) and len(out_shape) >= 2
              and y_shape == out_shape[:-1])
    if task == "multiclass":
        return "labels" if labels else "onehot" if y_shape == out_shape else None
    if task == "binary":
        return "binary" if y_shape == out_shape else None
    if task is None and labels:
        return "labels"
    return None


def row_correct(kind: str, out: jax.Array, y: jax.Array) -> jax.Array:
    """Per-row fraction of correct predictions, ``[batch]``."""
    if kind == "labels":
        hit = jnp.argmax(out, axis=-1) == y
    elif kind == "onehot":
        hit = jnp.argmax(out, axis=-1) == jnp.argmax(y, axis=-1)
    else:
        hit = (out > 0) == (y > 0.5)
    hit = hit.astype(jnp.float32)
    return hit.reshape(hit.shape[0], -1).mean(axis=1)
