r"""Losses with hand-derived gradients (docs/math.md §4).

Each loss is a :class:`Loss`: calling it gives the value (plain ``jax.numpy``, so
``jax.grad`` differentiates it independently), and ``loss.grad(...)`` gives the
hand-derived gradient with respect to its first argument(s).

Reduction: every loss is a *mean over samples* (the leading axis, or all axes but the
class axis for cross-entropy) and a *sum over everything else*, as in docs/math.md §4.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ._validate import refuse_graph
from .contract import PyTree, as_layer

__all__ = [
    "Loss",
    "accuracy",
    "binary_cross_entropy",
    "l2_penalty",
    "l2_penalty_grad",
    "max_margin",
    "mse",
    "softmax_cross_entropy",
]

#: What a :class:`Loss` declares its predictions to be (see ``Loss.task``).
TASKS = ("regression", "multiclass", "binary")


@dataclasses.dataclass(frozen=True, eq=False)
class Loss:
    """A loss ``value(pred, target) -> scalar`` with its hand-derived ``grad``.

    Calling the loss calls ``value``.

    Attributes:
      name: the loss's name, in its ``repr`` and in error messages.
      value: ``value(pred, target) -> scalar``, the formula in plain ``jax.numpy`` (so
        ``jax.grad`` differentiates it independently of ``grad``).
      grad: ``grad(pred, target) -> ∂C/∂pred``, the hand-derived gradient with respect to
        the first argument (a ranking loss: the pair of gradients of both score arrays).
      doc: the loss's own docstring, set as ``loss.__doc__`` (``help(loss)``, the API
        pages); the default ``""`` sets none.
      ranking: ``True`` marks a loss of two score arrays ``(s, s_c)`` (``max_margin``),
        whose ``grad`` returns a pair: it is not a loss of a model's output and a target,
        and hand-derived backprop refuses it. Default ``False``.
      task: what the outputs mean, so that training reports an accuracy for a
        classification loss, a user's own included: ``"multiclass"`` (outputs are class
        scores ``[N, K]``; a row is correct when its arg-max is the integer or one-hot
        label), ``"binary"`` (outputs are logits; correct when ``ŷ > 0`` agrees with the
        0/1 target), or ``"regression"`` (the default: no accuracy); anything else raises
        ``ValueError``.
      per_row: optional ``per_row(pred, target) -> ℓ [N]``, each row's loss alone
        (``ℓ_i = value(pred[i:i+1], target[i:i+1])``); declaring it states that ``value``
        is the mean ``1/N Σ_i ℓ_i`` over the leading axis, so that the gradient of row
        ``i``'s loss alone is ``N · grad(pred, target)[i]``. Training weights the rows of a
        padded or masked batch with it (and with ``N · grad``) instead of evaluating the
        loss once per row under ``jax.vmap``. Default ``None``: the per-row evaluation.
    """

    name: str
    value: Callable[..., jax.Array]
    grad: Callable[..., Any]
    doc: str = ""
    ranking: bool = False
    task: str = "regression"
    per_row: Callable[..., jax.Array] | None = None

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"Loss {self.name!r}: task must be one of {TASKS}, "
                             f"got {self.task!r}")
        object.__setattr__(self, "__doc__", self.doc or None)

    def __call__(self, *args: Any, **kwargs: Any) -> jax.Array:
        if args:  # a graph model's output is a Graph until Nodes or Readout
            refuse_graph(self.name, args[0], "the predictions", nodewise=False)
        return self.value(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<loss {self.name}>"


def _same_shape(name: str, a: jax.Array, b: jax.Array, what=("predictions", "targets")) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name}: {what[0]} have shape {a.shape} but {what[1]} {b.shape}")


def _n_samples(x: jax.Array) -> int:
    return x.shape[0] if x.ndim else 1


def _row_sums(x: jax.Array) -> jax.Array:
    """``Σ_j x_ij`` over every axis but the leading one: ``[N]``."""
    return jnp.sum(x.reshape(x.shape[0], -1), axis=1)


def _float(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


# --- squared error ----------------------------------------------------------------------


def _mse(pred, target):
    pred, target = _float(pred), jnp.asarray(target, _float(pred).dtype)
    _same_shape("mse", pred, target)
    return jnp.sum(jnp.square(pred - target)) / (2 * _n_samples(pred))  # 1/(2n) Σ (ŷ - y)²


def _mse_grad(pred, target):
    pred, target = _float(pred), jnp.asarray(target, _float(pred).dtype)
    _same_shape("mse", pred, target)
    return (pred - target) / _n_samples(pred)  # ∂C/∂ŷ = (ŷ - y) / n


def _mse_rows(pred, target):
    pred, target = _float(pred), jnp.asarray(target, _float(pred).dtype)
    _same_shape("mse", pred, target)
    return _row_sums(jnp.square(pred - target)) / 2  # ℓ_i = ½ Σ_j (ŷ_ij - y_ij)²


mse = Loss("mse", _mse, _mse_grad, per_row=_mse_rows, doc=r"""
Squared error ``C = 1/(2n) Σ (ŷ - y)²``; ``n`` = batch size (leading axis), the sum runs
over every entry. Hand gradient: ``∂C/∂ŷ = (ŷ - y)/n``.

>>> import jax.numpy as jnp
>>> float(mse(jnp.array([[1.0], [3.0]]), jnp.array([[0.0], [1.0]])))
1.25
""")

# --- softmax cross-entropy -------------------------------------------------------------


def _targets(name: str, logits: jax.Array, labels: ArrayLike) -> jax.Array:
    """One-hot (or probability) targets ``t`` of ``logits``' shape from int or one-hot labels."""
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer) and labels.shape == logits.shape[:-1]:
        k = logits.shape[-1]
        if not isinstance(labels, jax.core.Tracer):  # checkable when concrete (in numpy:
            lab = np.asarray(labels)                 # jnp ops would be staged under jit)
            bad = np.unique(lab[(lab < 0) | (lab >= k)])
            if bad.size:
                raise ValueError(f"{name}: integer labels must lie in [0, {k}) for {k} classes, "
                                 f"got {bad[:5].tolist()}")
        return jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if labels.shape == logits.shape:
        return labels.astype(logits.dtype)
    raise ValueError(
        f"{name}: labels of shape {labels.shape} ({labels.dtype}) fit neither integer labels "
        f"{logits.shape[:-1]} nor one-hot {logits.shape} for logits of shape {logits.shape}"
    )


def _softmax_ce(logits, labels):
    logits = _float(logits)
    t = _targets("softmax_cross_entropy", logits, labels)
    n = math.prod(logits.shape[:-1])
    logp = jax.nn.log_softmax(logits, axis=-1)
    # -1/N Σ_n Σ_k t log y, with 0 · log 0 = 0: a masked logit of -inf (log y = -inf) with
    # t = 0 adds nothing, as in optax and torch (0 · -inf would be NaN)
    return -jnp.sum(jnp.where(t == 0, jnp.zeros_like(logp), t * logp)) / n


def _softmax_ce_grad(logits, labels):
    logits = _float(logits)
    t = _targets("softmax_cross_entropy", logits, labels)
    n = math.prod(logits.shape[:-1])
    total = jnp.sum(t, axis=-1, keepdims=True)  # Σ_k t_nk: 1 for one-hot or probability rows
    return (jax.nn.softmax(logits, axis=-1) * total - t) / n  # ∂L/∂s = (y Σ_k t_k - t) / N


def _softmax_ce_rows(logits, labels):
    logits = _float(logits)
    t = _targets("softmax_cross_entropy", logits, labels)
    logp = jax.nn.log_softmax(logits, axis=-1)
    per = math.prod(logits.shape[1:-1])  # the positions of one row ([T] of a [N, T, K])
    return -_row_sums(jnp.where(t == 0, jnp.zeros_like(logp), t * logp)) / per


softmax_cross_entropy = Loss("softmax_cross_entropy", _softmax_ce, _softmax_ce_grad,
                             task="multiclass", per_row=_softmax_ce_rows, doc=r"""
Softmax cross-entropy on logits ``s [N, K]``: ``L = -1/N Σ_n Σ_k t_nk log softmax(s_n)_k``.

``labels``: integer classes ``[N]`` or one-hot / probability targets ``[N, K]``.
Stable for logits of ±1e4 (``log_softmax``). Hand gradient:
``∂L/∂s_n = (softmax(s_n) Σ_k t_nk - t_n)/N``, which is ``(softmax(s) - t)/N`` for one-hot or
probability targets; a target row of zeros (a row left out of the loss) gets 0.

>>> import jax.numpy as jnp
>>> round(float(softmax_cross_entropy(jnp.zeros((2, 4)), jnp.array([0, 3]))), 6)  # log 4
1.386294
""")

# --- binary cross-entropy -------------------------------------------------------------


def _bce(logits, labels):
    logits = _float(logits)
    labels = jnp.asarray(labels, logits.dtype)
    _same_shape("binary_cross_entropy", logits, labels, ("logits", "labels"))
    # -[y log σ(z) + (1 - y) log(1 - σ(z))] = softplus(z) - y z
    return jnp.sum(jnp.logaddexp(logits, 0) - labels * logits) / _n_samples(logits)


def _bce_grad(logits, labels):
    logits = _float(logits)
    labels = jnp.asarray(labels, logits.dtype)
    _same_shape("binary_cross_entropy", logits, labels, ("logits", "labels"))
    return (jax.nn.sigmoid(logits) - labels) / _n_samples(logits)  # (σ(z) - y) / N


def _bce_rows(logits, labels):
    logits = _float(logits)
    labels = jnp.asarray(labels, logits.dtype)
    _same_shape("binary_cross_entropy", logits, labels, ("logits", "labels"))
    return _row_sums(jnp.logaddexp(logits, 0) - labels * logits)


binary_cross_entropy = Loss("binary_cross_entropy", _bce, _bce_grad, task="binary",
                            per_row=_bce_rows, doc=r"""
Binary cross-entropy on logits: ``L = 1/N Σ [softplus(z) - y z]``
(``= -[y log σ(z) + (1-y) log(1-σ(z))]``), mean over the leading axis. Stable for ±1e4.
Hand gradient: ``∂L/∂z = (σ(z) - y)/N``.

>>> import jax.numpy as jnp
>>> round(float(binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))), 6)  # log 2
0.693147
""")

# --- max-margin ------------------------------------------------------------------------


def _margin_args(s, s_c):
    s, s_c = _float(s), _float(s_c)
    _same_shape("max_margin", s, s_c, ("true scores s", "corrupted scores s_c"))
    return s, s_c


def _max_margin(s, s_c, *, margin=1.0):
    s, s_c = _margin_args(s, s_c)
    m = margin + s_c - s
    # max(0, Δ + s_c - s), written with a strict `where` so that jax.grad also gives (0, 0)
    # at the kink m = 0, as the hand gradient does (jnp.maximum would split it 0.5/0.5).
    return jnp.sum(jnp.where(m > 0, m, 0)) / _n_samples(s)


def _max_margin_grad(s, s_c, *, margin=1.0):
    s, s_c = _margin_args(s, s_c)
    violated = (margin + s_c - s > 0).astype(s.dtype) / _n_samples(s)
    return -violated, violated  # ∂J/∂s = -1, ∂J/∂s_c = 1 while violated, else 0


max_margin = Loss("max_margin", _max_margin, _max_margin_grad, ranking=True, doc=r"""
Max-margin ranking loss ``J = max(0, Δ + s_c - s)`` (``margin=Δ``, default 1), mean over
the leading axis. ``s``: scores of true examples, ``s_c``: of corrupted ones.
Hand gradient ``grad(s, s_c) -> (∂J/∂s, ∂J/∂s_c) = (-1, 1)/N`` while the margin is violated
(``Δ + s_c - s > 0``), else ``(0, 0)``; at exactly 0, ``(0, 0)``.

>>> float(max_margin(2.0, 0.5)), float(max_margin(1.0, 0.5))
(0.0, 0.5)
""")

# --- structural risk -------------------------------------------------------------------


def _decay_mask(params: PyTree, model: Any, mask: Any, what: str) -> PyTree:
    """The bool pytree of decayed leaves: ``mask`` as given, or ``model.decay_mask(params)``."""
    if (model is None) == (mask is None):
        raise TypeError(f"{what}: give exactly one of model= (a funnet Layer, whose layers "
                        "declare their decayed params) or mask= (a bool pytree like params)")
    if model is not None:
        mask = as_layer(model).decay_mask(params)
    if jax.tree_util.tree_structure(mask) != jax.tree_util.tree_structure(params):
        raise ValueError(f"{what}: mask has structure {jax.tree_util.tree_structure(mask)} but "
                         f"params {jax.tree_util.tree_structure(params)}")
    return mask


def l2_penalty(params: PyTree, lam: float, *, model: Any = None, mask: PyTree = None) -> jax.Array:
    r"""``½ λ Σ_l ||W(l)||_F²`` over the leaves the model declares weight-decayed.

    Each layer declares its decayed params (``Dense``: ``W``; biases and PReLU slopes are
    not penalised, docs/math.md §4). Give the ``model`` whose params these are, or a bool
    ``mask`` pytree like ``params``. A stax layer with params declares nothing: asking for
    its mask raises ``TypeError`` naming it.

    Args:
        params: the model's params.
        lam: the factor λ.
        model: the :class:`funnet.Layer` the params belong to (its layers declare the decayed
            leaves); give it or ``mask``.
        mask: a bool pytree like ``params``, ``True`` where a leaf is decayed.

    >>> import jax.numpy as jnp, funnet
    >>> params = {"W": jnp.ones((2, 2)), "b": jnp.ones(2)}
    >>> float(l2_penalty(params, 0.5, model=funnet.Dense(2)))
    1.0
    """
    if isinstance(lam, (int, float)) and lam == 0:
        return jnp.zeros(())
    mask = _decay_mask(params, model, mask, "l2_penalty")
    leaves = [
        jnp.sum(jnp.square(leaf))
        for leaf, decayed in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(mask))
        if decayed
    ]
    return 0.5 * lam * sum(leaves, jnp.zeros(()))


def l2_penalty_grad(params: PyTree, lam: float, *, model: Any = None,
                    mask: PyTree = None) -> PyTree:
    r"""Hand gradient of :func:`l2_penalty`: ``λ W`` for decayed leaves, ``0`` elsewhere.

    Args:
        params: the model's params.
        lam: the factor λ.
        model: the :class:`funnet.Layer` the params belong to; give it or ``mask``.
        mask: a bool pytree like ``params``, ``True`` where a leaf is decayed.

    >>> import jax.numpy as jnp, funnet
    >>> params = {"W": jnp.ones((1, 2)), "b": jnp.ones(2)}
    >>> l2_penalty_grad(params, 0.5, model=funnet.Dense(2))["b"].tolist()
    [0.0, 0.0]
    """
    mask = _decay_mask(params, model, mask, "l2_penalty_grad")
    return jax.tree_util.tree_map(
        lambda leaf, decayed: lam * leaf if decayed else jnp.zeros_like(leaf), params, mask
    )


def accuracy(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
    """Fraction of rows whose arg-max matches the integer (or one-hot) label.

    Args:
        logits: the scores ``[N, C]`` (or probabilities: only the arg-max counts).
        labels: the integer labels ``[N]`` or one-hot rows ``[N, C]``.

    >>> import jax.numpy as jnp
    >>> float(accuracy(jnp.array([[2.0, 1.0], [0.0, 3.0]]), jnp.array([0, 0])))
    0.5
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if labels.shape == logits.shape:
        labels = jnp.argmax(labels, axis=-1)
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


__test__ = {
    loss.name: loss.__doc__
    for loss in (mse, softmax_cross_entropy, binary_cross_entropy, max_margin)
}
