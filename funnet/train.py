r"""Training: a pure jitted step, and ``fit`` that runs each epoch as one compiled ``lax.scan``.

The loop is the stochastic gradient descent of docs/math.md §5 with an optax optimiser
(docs/math.md §6)::

    repeat for each epoch
        shuffle the training set                     (key hashed from the state's, on device)
        for each mini-batch (one lax.scan):
            forward, backward                        (jax.grad, or the hand δ-recursion)
            params ← optimiser(params, ∇ [loss + ½ λ Σ ||W||²])
    until the validation error stops falling for `patience` epochs    (early stopping)

Padding and masking. Every sample takes part in every epoch: the shuffled index vector is
padded up to ``n_batches · batch_size`` with repeats of real rows, and a 0/1 mask marks the
padding. With mask ``m`` the batch objective is ``Σ_i w_i ℓ_i + ½ λ Σ ||W||²`` with
``w_i = m_i / Σ_j m_j`` and ``ℓ_i`` the loss of row ``i`` alone (``loss`` on a batch of one).
For a loss that is a mean over samples (all funnet losses) this *is* the loss of the real rows
only, and so is its gradient: padded rows get weight 0 in the loss (``jax.grad``) and in the
output error ``δ(L)_i = w_i ∂ℓ_i/∂ŷ_i`` (hand backprop), so they add exact zeros to
``dW = aᵀ δ`` and ``db = Σ_rows δ``. When ``batch_size`` divides the number of samples no mask
is used at all.

Speed. The data stay on device; each epoch is one call of one compiled function (shuffle
and mini-batch gathers on device, the state donated, all metrics fetched as one vector),
compiled once per ``fit`` configuration (and reused by a later ``fit`` with the same model,
loss, optimizer and shapes). Non-finite values cost nothing per step: the epoch checks its
summed loss and final state, and only an epoch that failed is replayed with a per-step check
that freezes the state at the first bad step (see :func:`fit`).
"""

from __future__ import annotations

import collections
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import checkpoint as ckpt
from ._table import table
from ._validate import check_int
from .backprop import value_and_grad as hand_value_and_grad
from .contract import Layer, PyTree, StatefulModelError, as_layer
from .data import Dataset, check_arrays
from .losses import Loss, binary_cross_entropy, l2_penalty, softmax_cross_entropy

__all__ = [
    "History",
    "NonFiniteLossError",
    "TrainState",
    "evaluate",
    "fit",
    "make_step",
    "predict",
    "shuffle",
]

GRADS = ("reverse", "hand")


def _stateless(model: Any, what: str) -> Layer:
    """``model`` as a Layer; a model holding state is refused before any work is done."""
    model = as_layer(model)
    if model.stateful:
        raise StatefulModelError(
            f"{what}: {model.stateful_path()} holds state, and {what} does not carry model state "
            "yet (it arrives with training v2). Until then train it with your own jitted step "
            "around funnet.backprop.value_and_grad(model, loss, has_state=True) or "
            "model.apply_with_state(params, state, x, key=key, train=True)"
        )
    return model


def _check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    """``optimizer`` if it is an optax transformation (``init`` and ``update``), else a
    TypeError naming the argument."""
    if not (callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer must be an optax GradientTransformation, e.g. "
                        f"optax.adam(1e-3), got {optimizer!r}")
    return optimizer


def _check_grad(grad: Any) -> str:
    """``grad`` as one of :data:`GRADS`; the old name ``"autodiff"`` still means ``"reverse"``."""
    if grad == "autodiff":
        warnings.warn('grad="autodiff" is now called grad="reverse" (reverse-mode autodiff, '
                      'the name funnet.check uses too)', DeprecationWarning, stacklevel=3)
        return "reverse"
    if grad not in GRADS:
        raise ValueError(f"grad must be one of {GRADS}, got {grad!r}")
    return grad
_EVAL_CHUNK = 4096  # rows per evaluation chunk inside fit (bounds activation memory)


# ----------------------------------------------------------------------------- state


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree.

    Attributes:
      params: the model's params.
      opt_state: the optax optimiser state.
      step: int32 scalar, the number of updates applied.
      key: raw ``uint32`` PRNG key; each step splits it in two (by hashing, see
        ``_hash_keys``): the next ``key`` and the key fed to the model (``Dropout``).
    """

    params: PyTree
    opt_state: PyTree
    step: jax.Array
    key: jax.Array

    @classmethod
    def create(
        cls, params: PyTree, optimizer: optax.GradientTransformation, key: Any
    ) -> TrainState:
        """``TrainState(params, optimizer.init(params), 0, key)``.

        >>> import jax, jax.numpy as jnp, optax
        >>> state = TrainState.create({"W": jnp.ones(2)}, optax.sgd(0.1), jax.random.PRNGKey(0))
        >>> int(state.step), state.key.dtype
        (0, dtype('uint32'))
        """
        optimizer = _check_optimizer(optimizer)
        return cls(params, optimizer.init(params), jnp.zeros((), jnp.int32), _raw_key(key))


def _raw_key(key: Any) -> jax.Array:
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    if key.dtype != jnp.uint32 or key.ndim != 1:
        raise TypeError(
            f"key must be a PRNG key (jax.random.PRNGKey(seed) or jax.random.key(seed)), "
            f"got an array of dtype {key.dtype} and shape {key.shape}"
        )
    return key


class NonFiniteLossError(FloatingPointError):
    """The loss, a gradient or the updated params became NaN/inf during :func:`fit`.

    Attributes:
      epoch: the epoch (1-based, as in the history) in which it happened.
      step: the mini-batch index within that epoch (0-based).
      global_step: the number of updates applied before it.
      last_good_state: the :class:`TrainState` just before the failing update.
      last_good_params: ``last_good_state.params``.
      history: the :class:`History` of the completed epochs.
      path: where the last good state was saved (``fit(checkpoint=...)``), else ``None``.
      best_params, best_epoch: the params of the epoch with the best validation error so
        far and its number (what ``fit(patience=...)`` would have returned), or ``None``
        without validation data or before the first epoch completed.
    """

    def __init__(self, message: str, *, epoch: int, step: int, global_step: int,
                 last_good_state: TrainState, history: History, path: Path | None = None,
                 best_params: PyTree | None = None, best_epoch: int | None = None):
        super().__init__(message)
        self.epoch, self.step, self.global_step = epoch, step, global_step
        self.last_good_state = last_good_state
        self.last_good_params = last_good_state.params
        self.history = history
        self.path = path
        self.best_params, self.best_epoch = best_params, best_epoch


# ---------------------------------------------------------------------- loss and grads


def _per_row(loss: Callable, out: jax.Array, y: Any) -> jax.Array:
    """``ℓ_i = loss(out[i:i+1], y[i:i+1])`` for every row: ``[batch]``."""
    return jax.vmap(lambda o, t: loss(o[None], t[None]))(out, y)


def _weights(w: tuple[jax.Array, Any], dtype: Any) -> jax.Array:
    """Row weights ``m_i / total`` in ``dtype`` from ``w = (mask m, total)``."""
    mask, total = w
    return mask.astype(dtype) / jnp.asarray(total).astype(dtype)


def _weighted(loss: Callable, out: jax.Array, y: Any, w: tuple | None) -> jax.Array:
    """``loss(out, y)``, or ``Σ_i m_i ℓ_i / total`` when ``w = (mask m, total)`` is given."""
    if w is None:
        return loss(out, y)
    rows = _per_row(loss, out, y)
    return jnp.sum(_weights(w, rows.dtype) * rows)


def _masked_loss(loss: Loss) -> Loss:
    """A :class:`Loss` of ``(out, (y, w))``: ``Σ_i w_i ℓ_i``, hand grad ``w_i ∂ℓ_i/∂ŷ_i``
    (``w_i = m_i / total`` for ``w = (mask m, total)``)."""

    def value(out, yw):
        return _weighted(loss, out, yw[0], yw[1])

    def grad(out, yw):
        y, w = yw
        g = jax.vmap(lambda o, t: loss.grad(o[None], t[None])[0])(out, y)  # ∂ℓ_i/∂ŷ_i
        wt = _weights(w, g.dtype)
        return g * wt.reshape(wt.shape + (1,) * (g.ndim - 1))  # δ(L)_i = w_i ∂ℓ_i/∂ŷ_i

    return Loss(f"masked({loss.name})", value, grad)


def _loss_and_grads(model: Layer, loss: Callable, *, l2: float, grad: str) -> Callable:
    """``(params, x, y, w, key) -> (data_loss, out, grads)``; ``w``: ``(mask, total)`` or None.

    ``grads`` is the gradient of ``data_loss + ½ λ Σ ||W||²``; ``data_loss`` excludes the
    penalty.
    """
    if grad == "hand":
        plain = hand_value_and_grad(model, loss, l2=l2)
        masked = hand_value_and_grad(model, _masked_loss(loss), l2=l2)

        def hand(params, x, y, w, key):
            if w is None:
                _, grads = plain(params, x, y, key=key, train=True)
            else:
                _, grads = masked(params, x, (y, w), key=key, train=True)
            # same ops as the forward pass: XLA CSEs it
            out = model.apply(params, x, key=key, train=True)
            return _weighted(loss, out, y, w), out, grads

        return hand

    def reverse(params, x, y, w, key):
        def objective(p):
            out = model.apply(p, x, key=key, train=True)
            data = _weighted(loss, out, y, w)
            if not l2:
                return data, (data, out)
            return data + l2_penalty(p, l2, mask=model.decay_mask(p)), (data, out)

        (_, (data, out)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        return data, out, grads

    return reverse


def _apply_grads(optimizer: optax.GradientTransformation, state: TrainState,
                 grads: PyTree) -> TrainState:
    """``state`` after one optimiser update with ``grads`` (``state.key`` unchanged)."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1)


# -------------------------------------------------------------------------- accuracy


def _accuracy_kind(loss: Any, out_shape: Sequence[int], y_shape: Sequence[int],
                   y_dtype: Any) -> str | None:
    """How to score a row, or None when accuracy means nothing for this loss and target.

    ``"labels"``: integer targets ``[N, ...]`` for outputs ``[N, ..., K]`` (arg-max);
    ``"onehot"``: one-hot targets with softmax cross-entropy; ``"binary"``: 0/1 targets
    with binary cross-entropy on logits (``ŷ > 0``).
    """
    out_shape, y_shape = tuple(out_shape), tuple(y_shape)
    if jnp.issubdtype(y_dtype, jnp.integer) and len(out_shape) >= 2 and y_shape == out_shape[:-1]:
        return "labels"
    if y_shape == out_shape and loss is softmax_cross_entropy:
        return "onehot"
    if y_shape == out_shape and loss is binary_cross_entropy:
        return "binary"
    return None


def _row_correct(kind: str, out: jax.Array, y: jax.Array) -> jax.Array:
    """Per-row fraction of correct predictions, ``[batch]``."""
    if kind == "labels":
        hit = jnp.argmax(out, axis=-1) == y
    elif kind == "onehot":
        hit = jnp.argmax(out, axis=-1) == jnp.argmax(y, axis=-1)
    else:
        hit = (out > 0) == (y > 0.5)
    hit = hit.astype(jnp.float32)
    return hit.reshape(hit.shape[0], -1).mean(axis=1)


# ------------------------------------------------------------------------- make_step


def make_step(
    model: Layer,
    loss: Loss | Callable[[Any, Any], Any],
    optimizer: optax.GradientTransformation,
    *,
    l2: float = 0.0,
    grad: str = "reverse",
    donate: bool = False,
) -> Callable[[TrainState, tuple], tuple[TrainState, dict]]:
    r"""A pure, jitted training step ``step(state, batch) -> (state, metrics)``.

    The step minimises ``R = loss(model(x), y) + ½ λ Σ_l ||W(l)||²`` (``λ = l2``, weights
    only): it splits ``state.key`` in two (one half feeds ``Dropout``), computes ``∇R``,
    applies the optax ``optimizer`` and increments ``state.step``.

    Args:
      model: a funnet :class:`~funnet.Layer` (or stax pair; ``grad="hand"`` needs a Layer).
      loss: ``loss(pred, target) -> scalar``, a mean over samples.
      optimizer: any optax ``GradientTransformation``.
      l2: ``λ`` of the L2 penalty on the weights (:func:`funnet.l2_penalty`).
      grad: ``"reverse"`` (reverse-mode autodiff, ``jax.value_and_grad``) or ``"hand"``
        (:func:`funnet.backprop.value_and_grad`: the hand-derived δ-recursion).
      donate: donate ``state``'s buffers to the step (do not reuse the old state then).

    ``batch`` is ``(x, y)`` or ``(x, y, mask)``; with a 0/1 ``mask [batch]`` the rows with
    mask 0 do not count (see the module docstring). ``metrics``: ``loss`` (the data loss of
    the batch before the update, without the L2 term) and ``accuracy`` (only for class
    labels, or one-hot targets with softmax / binary cross-entropy).

    >>> import jax, jax.numpy as jnp, optax, funnet
    >>> net = funnet.serial(funnet.Dense(8), funnet.Relu, funnet.Dense(3))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 4))
    >>> tx = optax.sgd(0.1)
    >>> step = make_step(net, funnet.softmax_cross_entropy, tx)
    >>> state = TrainState.create(params, tx, jax.random.PRNGKey(1))
    >>> x, y = jnp.ones((5, 4)), jnp.array([0, 1, 2, 1, 0])
    >>> state, metrics = step(state, (x, y))
    >>> int(state.step), sorted(metrics)
    (1, ['accuracy', 'loss'])
    """
    model = _stateless(model, "make_step")
    optimizer = _check_optimizer(optimizer)
    loss_and_grads = _loss_and_grads(model, loss, l2=_check_l2(l2), grad=_check_grad(grad))

    def step(state: TrainState, batch: tuple) -> tuple[TrainState, dict]:
        if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
            raise TypeError("batch must be (x, y) or (x, y, mask)")
        x, y = batch[0], batch[1]
        w = None
        if len(batch) == 3:
            mask = jnp.asarray(batch[2])
            w = (mask, jnp.maximum(jnp.sum(mask.astype(jnp.float32)), 1.0))
        key, sub = _hash_keys(state.key, jnp.arange(2, dtype=jnp.uint32))
        data, out, grads = loss_and_grads(state.params, x, y, w, sub)
        new = _apply_grads(optimizer, state, grads)._replace(key=key)
        metrics = {"loss": data}
        kind = _accuracy_kind(loss, out.shape, jnp.shape(y), jnp.asarray(y).dtype)
        if kind is not None:
            correct = _row_correct(kind, out, y)
            metrics["accuracy"] = (jnp.mean(correct) if w is None
                                   else jnp.sum(_weights(w, correct.dtype) * correct))
        return new, metrics

    return jax.jit(step, donate_argnums=0 if donate else ())


def _check_l2(l2: Any) -> float:
    try:
        value = float(l2)
    except (TypeError, ValueError):
        raise TypeError(f"l2 must be a number, got {l2!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"l2 must be a finite number ≥ 0, got {l2!r}")
    return value


# ------------------------------------------------------------------- evaluate/predict


def _chunks(n: int, batch_size: int | None) -> tuple[int, int]:
    """``(n_batches, batch)`` covering ``n`` rows; a single batch when ``batch_size`` is None."""
    if batch_size is None or batch_size >= n:
        return 1, n
    return -(-n // batch_size), batch_size


def _padded_index(n: int, n_batches: int, batch: int, order: jax.Array | None = None):
    """``(idx [n_batches, batch], mask [n_batches, batch])``; padding repeats real rows."""
    pos = jnp.arange(n_batches * batch)
    if n_batches * batch != n:
        pos = pos % n
    idx = pos if order is None else order[pos] if n_batches * batch != n else order
    mask = (jnp.arange(n_batches * batch) < n).astype(jnp.float32)
    return idx.reshape(n_batches, batch), mask.reshape(n_batches, batch)


def _eval_sums(model: Layer, loss: Callable, params: PyTree, x: jax.Array, y: jax.Array,
               batch_size: int | None, *, spread: Callable | None = None) -> dict:
    """``{"loss": mean loss, "accuracy": mean accuracy (when meaningful)}`` over all rows.

    ``spread``: data parallelism, a sharding constraint for each chunk's row indices; the
    rows then go in chunks of exactly ``batch_size`` (a multiple of the device count), the
    last one padded and masked, so every device scores its own share of the rows.
    """
    n = x.shape[0]
    nb, b = _chunks(n, batch_size) if spread is None else (-(-n // batch_size), batch_size)
    kind = None

    def score(xb, yb, w):
        nonlocal kind
        out = model.apply(params, xb)
        kind = _accuracy_kind(loss, out.shape, yb.shape, yb.dtype)
        loss_value = _weighted(loss, out, yb, w)
        if kind is None:
            return loss_value, jnp.zeros((), jnp.float32)
        correct = _row_correct(kind, out, yb)
        # hits are counted (exact in float32 up to 2**24 rows) and divided by n once
        return loss_value, jnp.sum(correct if w is None else w[0] * correct)

    if nb == 1 and b == n and spread is None:
        loss_value, acc = score(x, y, None)
    else:
        idx, mask = _padded_index(n, nb, b)

        def body(carry, batch):
            i, m = batch
            if spread is not None:
                i, m = spread(i), spread(m)
            lv, a = score(x[i], y[i], (m, n))
            return (carry[0] + lv, carry[1] + a), None

        shapes = jax.eval_shape(body, (0.0, 0.0), (idx[0], mask[0]))[0]
        zeros = tuple(jnp.zeros((), s.dtype) for s in shapes)
        (loss_value, acc), _ = jax.lax.scan(body, zeros, (idx, mask))
    if kind is None:
        return {"loss": loss_value}
    return {"loss": loss_value, "accuracy": acc / n}


@functools.partial(jax.jit, static_argnames=("model", "loss", "batch_size"))
def _evaluate_jit(model, loss, params, x, y, batch_size):
    return _eval_sums(as_layer(model), loss, params, x, y, batch_size)


def evaluate(
    model: Layer,
    params: PyTree,
    data: Dataset | tuple[Any, Any],
    *,
    loss: Loss | Callable[[Any, Any], Any],
    batch_size: int | None = None,
) -> dict[str, float]:
    """Mean ``loss`` and ``accuracy`` of ``model`` on ``data = (x, y)``, without dropout.

    ``accuracy`` is present only when it means something (class labels, or one-hot targets
    with softmax / binary cross-entropy). With ``batch_size`` the rows are scored in chunks
    (one jitted ``lax.scan``), which bounds memory; the result is the mean over all rows.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.Dense(2)
    >>> params = {"W": jnp.array([[1.0, -1.0]]), "b": jnp.zeros(2)}
    >>> x, y = jnp.array([[1.0], [-1.0], [2.0]]), jnp.array([0, 1, 1])
    >>> evaluate(net, params, (x, y), loss=funnet.softmax_cross_entropy)["accuracy"]
    0.6666666865348816
    """
    _stateless(model, "evaluate")
    x, y = _unpack(data, "data")
    x, y = jnp.asarray(x), jnp.asarray(_as_targets(y, "data"))
    if len(x) != len(y):
        raise ValueError(f"data.x has {len(x)} samples but data.y has {len(y)}")
    # concrete data: labels out of range would be silently dropped by one_hot under jit
    _check_data(as_layer(model), params, loss, x, y, batch=min(len(x), _EVAL_CHUNK), name="data")
    result = _evaluate_jit(model, loss, params, x, y, _check_eval_batch(batch_size))
    return {k: float(v) for k, v in jax.device_get(result).items()}


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def _predict_jit(model, params, x, batch_size):
    model = as_layer(model)
    n = x.shape[0]
    nb, b = _chunks(n, batch_size)
    if nb == 1:
        return model.apply(params, x)
    idx, _ = _padded_index(n, nb, b)
    out = jax.lax.map(lambda i: model.apply(params, x[i]), idx)
    return out.reshape((nb * b,) + out.shape[2:])[:n]


def predict(model: Layer, params: PyTree, x: Any, *, batch_size: int | None = None) -> jax.Array:
    """``model.apply(params, x)`` jitted, without dropout; in chunks of ``batch_size`` rows.

    >>> import jax.numpy as jnp, funnet
    >>> params = {"W": jnp.ones((2, 1)), "b": jnp.zeros(1)}
    >>> predict(funnet.Dense(1), params, jnp.ones((5, 2)), batch_size=2).ravel().tolist()
    [2.0, 2.0, 2.0, 2.0, 2.0]
    """
    _stateless(model, "predict")
    return _predict_jit(model, params, jnp.asarray(x), _check_eval_batch(batch_size))


def _check_eval_batch(batch_size: Any) -> int | None:
    return check_int(batch_size, "batch_size", allow_none=True)


# --------------------------------------------------------------------------- History


_COLUMNS = (
    ("epoch", "epoch", "{:d}"),
    ("train_loss", "train loss", "{:.4f}"),
    ("train_accuracy", "train acc", "{:.4f}"),
    ("valid_loss", "valid loss", "{:.4f}"),
    ("valid_accuracy", "valid acc", "{:.4f}"),
    ("learning_rate", "lr", "{:.3g}"),
    ("seconds", "seconds", "{:.3f}"),
)


class History(list):
    """Per-epoch records of :func:`fit`: a list of dicts with keys ``epoch`` (1-based),
    ``train_loss``, ``train_accuracy``, ``valid_loss``, ``valid_accuracy``,
    ``learning_rate`` and ``seconds`` (``None`` where not available).

    Attributes:
      best_epoch: the epoch with the lowest validation error (None without validation data).
      stopped_early: whether early stopping ended the run.

    >>> h = History([{"epoch": 1, "train_loss": 0.5, "train_accuracy": None,
    ...               "valid_loss": None, "valid_accuracy": None, "learning_rate": None,
    ...               "seconds": 0.01}])
    >>> print(h.table())
    epoch  train loss  seconds
        1      0.5000    0.010
    """

    def __init__(self, records: Sequence[dict] = (), *, best_epoch: int | None = None,
                 stopped_early: bool = False):
        super().__init__(dict(r) for r in records)
        self.best_epoch = best_epoch
        self.stopped_early = stopped_early

    def column(self, name: str) -> list:
        """The values of one key over the epochs, e.g. ``history.column("valid_loss")``."""
        return [record.get(name) for record in self]

    def table(self) -> str:
        """The history as an aligned text table; ``*`` marks the best epoch."""
        cols = [(k, title, fmt) for k, title, fmt in _COLUMNS
                if k == "epoch" or any(r.get(k) is not None for r in self)]
        rows = []
        for r in self:
            cells = []
            for k, _, fmt in cols:
                v = r.get(k)
                cells.append("-" if v is None else fmt.format(v))
            if r.get("epoch") == self.best_epoch:
                cells[0] += "*"
            rows.append(cells)
        text = table([title for _, title, _ in cols], rows, align="right")
        if self.stopped_early:
            text += f"\nstopped early; best epoch {self.best_epoch}"
        return text

    def plot(self, path: str | Path) -> Path:
        """Save learning curves (loss, and accuracy when known, per epoch) as an image.

        Needs matplotlib (``pip install 'funnet[plot]'``). Returns ``path``.
        """
        try:
            from matplotlib.figure import Figure
        except ImportError:
            raise ImportError(
                "History.plot needs matplotlib; install it with pip install 'funnet[plot]'"
            ) from None
        epochs = self.column("epoch")
        has_acc = any(v is not None for k in ("train_accuracy", "valid_accuracy")
                      for v in self.column(k))
        fig = Figure(figsize=(10 if has_acc else 5, 4))
        axes = fig.subplots(1, 2 if has_acc else 1, squeeze=False)[0]
        panels = [("loss", "train_loss", "valid_loss")]
        if has_acc:
            panels.append(("accuracy", "train_accuracy", "valid_accuracy"))
        for ax, (what, train_key, valid_key) in zip(axes, panels):
            for key, label in ((train_key, "train"), (valid_key, "valid")):
                pts = [(e, v) for e, v in zip(epochs, self.column(key)) if v is not None]
                if pts:
                    ax.plot(*zip(*pts), marker=".", label=label)
            if self.best_epoch is not None:
                ax.axvline(self.best_epoch, color="grey", linestyle=":", label="best epoch")
            ax.set_xlabel("epoch")
            ax.set_ylabel(what)
            ax.legend()
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path)
        return path


# ---------------------------------------------------------------------------- fit


def _unpack(data: Any, name: str) -> tuple[Any, Any]:
    try:
        x, y = data
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be an (x, y) pair or a funnet.data.Dataset") from None
    return x, y


def _strong(a: Any) -> np.ndarray | jax.Array:
    """``a`` as a numpy or strongly typed jax array (a weak type would retrace the epoch)."""
    if not isinstance(a, jax.Array):
        return np.asarray(a)
    return jnp.array(a, dtype=a.dtype) if a.weak_type else a


def _as_inputs(x: Any) -> np.ndarray | jax.Array:
    x = _strong(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def _as_targets(y: Any, name: str = "train") -> np.ndarray | jax.Array:
    """Integer labels as int32; labels that int32 cannot hold are refused, not wrapped (an
    int64 label of 2**32 would otherwise train as class 0)."""
    y = _strong(y)
    if jnp.issubdtype(y.dtype, jnp.integer) and y.dtype != np.int32:
        info = np.iinfo(np.int32)
        values = np.asarray(y)
        if values.size and (values.max() > info.max or values.min() < info.min):
            bad = values[(values > info.max) | (values < info.min)]
            raise ValueError(f"{name}.y: label {int(bad.flat[0])} does not fit in int32; "
                             "labels are class indices in [0, number of classes)")
        y = y.astype(np.int32)
    return y


def _check_data(model: Layer, params: PyTree, loss: Callable, x, y, *, batch: int,
                name: str) -> str | None:
    """Check ``(x, y)`` and that ``model``'s output fits ``y`` and ``loss``, by shape only.

    Returns the accuracy kind. Raises ValueError naming ``name.x`` / ``name.y``.
    """
    if np.ndim(x) == 0 or len(x) == 0 or np.ndim(y) == 0 or len(y) != len(x):
        check_arrays(x, y, name=name)  # raises, naming the array
    x_spec = jax.ShapeDtypeStruct((batch,) + tuple(np.shape(x)[1:]), x.dtype)
    y_spec = jax.ShapeDtypeStruct((batch,) + tuple(np.shape(y)[1:]), y.dtype)
    try:
        out = jax.eval_shape(lambda p, xb: model.apply(p, xb), params, x_spec)
    except (ValueError, TypeError) as e:
        raise type(e)(
            f"{name}.x of shape {np.shape(x)} does not fit the model {model.name}: {e}"
        ) from None
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"the model {model.name} must return one array, got {out}")
    kind = _accuracy_kind(loss, out.shape, y_spec.shape, y_spec.dtype)
    num_classes = out.shape[-1] if kind == "labels" else None
    check_arrays(np.asarray(x), np.asarray(y), num_classes=num_classes, name=name)
    if kind != "labels" and tuple(out.shape) != tuple(y_spec.shape):
        raise ValueError(
            f"{name}.y has shape {np.shape(y)} ({y.dtype}) but the model's output for a "
            f"batch of {batch} has shape {tuple(out.shape)}: expected integer labels "
            f"{tuple(out.shape[:-1])[1:] or '[N]'} per sample or targets of shape "
            f"{tuple(out.shape)[1:]} per sample"
        )
    try:
        value = jax.eval_shape(loss, out, y_spec)
    except (ValueError, TypeError) as e:
        raise ValueError(f"loss {loss!r} rejects the model output {out.shape} and "
                         f"{name}.y {y_spec.shape}: {e}") from None
    if getattr(value, "shape", None) != ():
        # a per-row loss would be averaged over padded rows of the last batch too (and
        # jax.grad of a vector is no gradient): require the mean over the batch
        raise ValueError(f"loss {loss!r} must return a scalar (the mean over the batch), "
                         f"got shape {getattr(value, 'shape', type(value).__name__)} for a "
                         f"batch of {batch}")
    return kind


def _mesh(devices: Any, batch_size: int) -> tuple[Mesh, str] | None:
    """A 1-D mesh for data parallelism, or None for the default single device."""
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        if devices.devices.ndim != 1:
            raise ValueError(f"devices: need a 1-D mesh, got axes {devices.axis_names} of "
                             f"shape {devices.devices.shape}")
        mesh, axis = devices, devices.axis_names[0]
    else:
        devs = list(devices)
        if not devs:
            raise ValueError("devices is empty")
        mesh, axis = Mesh(np.array(devs), ("batch",)), "batch"
    if batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of "
                         f"devices ({mesh.size}) for data parallelism")
    return mesh, axis


def _start(optimizer: optax.GradientTransformation, params: PyTree,
           key: jax.Array) -> TrainState:
    """``TrainState.create(params, optimizer, key)``, traced inside one jitted program.

    On a cold start that is one small compilation (see :func:`_start_function`) instead of
    one per eager op (zeros, copies). Every leaf is an own copy (never the caller's buffers:
    the state gets donated) and strongly typed (no weak types, so the compiled epoch never
    retraces).
    """
    state = TrainState.create(params, optimizer, key)
    return jax.tree.map(lambda a: jnp.array(a, dtype=a.dtype, copy=True), state)


_START_CACHE: collections.OrderedDict = collections.OrderedDict()


def _start_function(optimizer: optax.GradientTransformation, sharding: Any) -> Callable:
    """:func:`_start` jitted, its outputs placed on ``sharding``; cached per optimizer."""
    return _cached(_START_CACHE, (optimizer, sharding), lambda: jax.jit(
        functools.partial(_start, optimizer), out_shardings=sharding))


def _cached(cache: collections.OrderedDict, key: tuple, make: Callable[[], Callable]
            ) -> Callable:
    """``cache[key]``, made by ``make()`` on a miss; an LRU of ``_CACHE_SIZE`` entries.
    An unhashable key (e.g. an unhashable optimizer) is never cached."""
    try:
        hash(key)
    except TypeError:
        return make()
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = fn = make()
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return fn


def _learning_rate(opt_state: PyTree) -> jax.Array | None:
    """The current learning rate from an ``optax.inject_hyperparams`` state, else None."""
    def is_scalar(path, value):
        return isinstance(value, jax.Array) and value.ndim == 0  # not a schedule's state

    try:
        lr = optax.tree_utils.tree_get(opt_state, "learning_rate", filtering=is_scalar)
    except (KeyError, ValueError):  # several learning rates (chained optimisers): none shown
        return None
    return lr if isinstance(lr, jax.Array) and lr.ndim == 0 else None


def _tree_finite(tree: PyTree) -> jax.Array:
    """Whether every float in ``tree`` is finite, as one fused reduction.

    ``Σ 0·a`` over all leaves is 0 when every entry is finite and NaN otherwise; XLA fuses
    the concatenation into the reduction (one kernel, whatever the number of leaves).
    """
    leaves = [jnp.ravel(a) for a in jax.tree.leaves(tree) if jnp.issubdtype(a.dtype, jnp.inexact)]
    if not leaves:
        return jnp.array(True)
    flat = jnp.concatenate([a.astype(jnp.result_type(*leaves)) for a in leaves])
    return jnp.isfinite(jnp.sum(flat * 0))


def _mix32(v: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash (Wellons' "lowbias32")."""
    v = (v ^ (v >> 16)) * jnp.uint32(0x7FEB352D)
    v = (v ^ (v >> 15)) * jnp.uint32(0x846CA68B)
    return v ^ (v >> 16)


def _hash_keys(key: jax.Array, salt: jax.Array) -> jax.Array:
    """Raw keys ``[..., 2]`` hashed from a raw key and uint32 ``salt`` (one per key).

    Cheap on CPU where threefry ``split`` is not (it runs as a loop); the keys only seed
    threefry streams (``Dropout``), which do the heavy mixing.
    """
    a = _mix32(key[0] ^ _mix32(salt * jnp.uint32(0x9E3779B9) + jnp.uint32(0x632BE5AB)))
    b = _mix32(key[1] ^ a ^ jnp.uint32(0x85EBCA77))
    return jnp.stack([a, b], axis=-1)


def shuffle(key: jax.Array, n: int) -> jax.Array:
    """A pseudo-random permutation of ``range(n)`` (int32), computed on device.

    Each round sorts the 32-bit words ``h_i << b | i`` (``b = bit_length(n - 1)``), where
    ``h_i = mix(mix(i ⊕ s₁) + s₂)`` hashes the row index with two seeds taken from the raw
    ``key`` (``mix``: a bijective 32-bit hash). One single-operand sort and a few integer
    ops per row: several times faster on CPU than ``jax.random.permutation`` (key-value
    sorts of threefry bits). Rows whose top ``32 - b`` hash bits tie keep their order in
    that round, so there are ``ceil((2 log2 n - 1) / (32 - b))`` rounds: the expected number
    of pairs left in order by every round is below 1. Above ``2**24`` rows it uses
    ``jax.random.permutation``.

    >>> import jax
    >>> p = shuffle(jax.random.PRNGKey(0), 10)
    >>> sorted(p.tolist()) == list(range(10))
    True
    """
    key = _raw_key(key)
    index_bits = max(1, (n - 1).bit_length())
    if index_bits > 24:
        return jax.random.permutation(key, n).astype(jnp.int32)
    random_bits = 32 - index_bits
    rounds = max(1, math.ceil((2 * math.log2(max(n, 2)) - 1) / random_bits))
    low = jnp.uint32((1 << index_bits) - 1)
    order = jnp.arange(n, dtype=jnp.uint32)
    for r in range(rounds):
        s1, s2 = _hash_keys(key, jnp.uint32(r))
        h = _mix32(_mix32(order ^ s1) + s2)
        order = jnp.sort((h << index_bits) | order) & low
    return order.astype(jnp.int32)


def _make_epoch(loss_and_grads: Callable, optimizer: optax.GradientTransformation,
                loss: Callable, *, n: int, batch_size: int, acc_kind: str | None,
                valid_kind: str | None, model: Layer, placement: tuple[Mesh, str] | None,
                eval_chunk: int | None, guarded: bool = False) -> Callable:
    """The jitted epoch: shuffle, one ``lax.scan`` over the mini-batches, validation.

    ``epoch(state, x, y, vx, vy) -> (start, state, metrics)``: ``start``
    is the epoch's input state (its donated buffers pass straight to it: no copy), ``state``
    the state after the epoch, ``metrics`` a dict of floats (computed on device as one
    vector: a single transfer per epoch).
    ``state.key`` gives, by hashing, the epoch's shuffling key, one dropout key per step
    and the next epoch's key: the whole run follows from the key the state starts with.

    Non-finite values cost nothing per step: ``metrics["finite"]`` says whether the summed
    loss and the final state are finite. When they are not, :func:`fit` replays the epoch
    from ``start`` with ``guarded=True``: every step then checks its loss, gradients and
    updated state, and from the first non-finite one on no update is applied
    (``metrics["bad_step"]`` is its index), which leaves the last good state.
    """
    nb = -(-n // batch_size)
    masked = nb * batch_size != n
    axis = placement[1] if placement else None

    def shard(a, spec):
        if placement is None or a is None:
            return a
        return jax.lax.with_sharding_constraint(a, NamedSharding(placement[0], spec))

    def epoch(state, x, y, vx, vy):
        start = state
        keys = _hash_keys(state.key, jnp.arange(nb + 2, dtype=jnp.uint32))  # [nb + 2, 2]
        state = state._replace(key=keys[0])
        order = shuffle(keys[1], n)
        idx, mask = _padded_index(n, nb, batch_size, order)
        idx = shard(idx, PartitionSpec(None, axis))
        mask = shard(mask, PartitionSpec(None, axis)) if masked else None
        zero = jnp.zeros((), jnp.float32)

        def body(carry, batch):
            state, ok, bad, i, loss_sum, correct_sum, seen = carry
            ib, mb, kb = batch
            xb = shard(x.at[ib].get(mode="promise_in_bounds"), PartitionSpec(axis))
            yb = shard(y.at[ib].get(mode="promise_in_bounds"), PartitionSpec(axis))
            count = jnp.sum(mb) if masked else float(batch_size)
            data, out, grads = loss_and_grads(state.params, xb, yb,
                                              (mb, count) if masked else None, kb)
            new = _apply_grads(optimizer, state, grads)
            loss_i = data.astype(jnp.float32) * count
            correct = zero
            if acc_kind is not None:
                hits = _row_correct(acc_kind, out, yb)
                correct = jnp.sum(mb * hits) if masked else jnp.sum(hits)
            if guarded:  # slow path: check every step, freeze from the first bad one on
                finite = jnp.isfinite(data) & _tree_finite((grads, new.params, new.opt_state))
                good = ok & finite
                new = jax.tree.map(lambda a, b: jnp.where(good, a, b), new, state)
                bad = jnp.where(ok & ~good, i, bad)
                loss_i, correct, count = (jnp.where(good, v, 0.0) for v in (loss_i, correct,
                                                                             count))
                ok = good
            return (new, ok, bad, i + 1, loss_sum + loss_i, correct_sum + correct,
                    seen + count), None

        carry = (state, jnp.array(True), jnp.array(-1, jnp.int32), jnp.array(0, jnp.int32),
                 zero, zero, zero)
        (state, ok, bad, _, loss_sum, correct_sum, seen), _ = jax.lax.scan(
            body, carry, (idx, mask, keys[2:]))
        if not guarded:
            ok = jnp.isfinite(loss_sum) & _tree_finite((state.params, state.opt_state))
        seen = jnp.maximum(seen, 1.0)
        metrics = {"finite": ok, "bad_step": bad, "train_loss": loss_sum / seen}
        if acc_kind is not None:
            metrics["train_accuracy"] = correct_sum / seen
        lr = _learning_rate(state.opt_state)
        if lr is not None:
            metrics["learning_rate"] = lr
        if vx is not None:
            spread = (None if placement is None else
                      lambda a: shard(a, PartitionSpec(axis)))  # each device its rows
            scores = _eval_sums(model, loss, state.params, vx, vy, eval_chunk, spread=spread)
            metrics["valid_loss"] = scores["loss"]
            if valid_kind is not None:
                metrics["valid_accuracy"] = scores["accuracy"]
        layout[:] = list(metrics)  # one vector, one transfer per epoch
        packed = jnp.stack([jnp.asarray(v).astype(jnp.result_type(float)) for v in
                            metrics.values()])
        return start, state, packed

    layout: list[str] = []
    options: dict[str, Any] = {}
    if placement is not None:
        options["out_shardings"] = NamedSharding(placement[0], PartitionSpec())
    jitted = jax.jit(epoch, **options) if guarded else jax.jit(epoch, donate_argnums=0, **options)

    def run(state, *args):
        start, state, packed = jitted(state, *args)
        return start, state, dict(zip(layout, np.asarray(packed).tolist()))

    return run


def _signature(tree: PyTree) -> tuple:
    """Hashable structure, shapes and dtypes of ``tree``'s leaves."""
    leaves, treedef = jax.tree.flatten(tree)
    return treedef, tuple((tuple(np.shape(a)), str(getattr(a, "dtype", type(a).__name__)))
                          for a in leaves)


_EPOCH_CACHE: collections.OrderedDict = collections.OrderedDict()
_CACHE_SIZE = 8


def _epoch_function(model: Layer, loss: Callable, optimizer: optax.GradientTransformation, *,
                    l2: float, grad: str, guarded: bool, signature: tuple,
                    **options: Any) -> Callable:
    """:func:`_make_epoch`, compiled once per configuration and argument signature.

    Calling :func:`fit` again with the same model, loss and optimizer objects and data of
    the same shapes reuses the compiled epoch (an LRU of the last few configurations).
    """
    key = (model, loss, optimizer, l2, grad, guarded, signature, tuple(sorted(options.items())))
    return _cached(_EPOCH_CACHE, key, lambda: _make_epoch(
        _loss_and_grads(model, loss, l2=l2, grad=grad), optimizer, loss, model=model,
        guarded=guarded, **options))


class _Progress:
    """A tqdm bar over epochs on a TTY (a plain line per epoch without tqdm); else nothing."""

    def __init__(self, enabled: bool, total: int, initial: int):
        self.bar, self.plain = None, False
        if not (enabled and sys.stderr.isatty()):
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self.plain = True
            return
        self.bar = tqdm(total=total, initial=initial, unit="epoch", file=sys.stderr,
                        dynamic_ncols=True, leave=True)

    def update(self, record: dict, total: int) -> None:
        shown = {k: record[k] for k in ("train_loss", "train_accuracy", "valid_loss",
                                        "valid_accuracy") if record.get(k) is not None}
        if self.bar is not None:
            self.bar.set_postfix({k.replace("_accuracy", "_acc"): f"{v:.4f}"
                                  for k, v in shown.items()}, refresh=False)
            self.bar.update(1)
        elif self.plain:
            text = "  ".join(f"{k} {v:.4f}" for k, v in shown.items())
            print(f"epoch {record['epoch']}/{total}  {text}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _jsonable(record: dict) -> dict:
    return {k: (None if v is None else (int(v) if k == "epoch" else float(v)))
            for k, v in record.items()}


def fit(
    model: Layer,
    params: PyTree,
    train: Dataset | tuple[Any, Any],
    *,
    loss: Loss | Callable[[Any, Any], Any],
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: Any,
    valid: Dataset | tuple[Any, Any] | None = None,
    l2: float = 0.0,
    patience: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    devices: Sequence[Any] | Mesh | None = None,
    grad: str = "reverse",
    keep: int = 3,
) -> tuple[PyTree, History]:
    r"""Train ``model`` on ``train`` with mini-batch SGD and an optax ``optimizer``.

    The objective is the structural risk of docs/math.md §4,
    ``R = 1/N Σ_n loss(model(x_n), y_n) + ½ λ Σ_l ||W(l)||²`` (``λ = l2``, over the params
    the layers declare weight-decayed). The model runs in training mode (``train=True``:
    ``Dropout`` drops); validation in evaluation mode.

    Each epoch is one call of one compiled function (traced once per configuration; a later
    ``fit`` with the same model, loss and optimizer objects and data shapes reuses it): on device it permutes the rows (:func:`shuffle`,
    with a key hashed from the train state's), runs a ``lax.scan`` over the
    ``ceil(N / batch_size)`` mini-batches, each gathered from the device-resident data by
    index (the last one padded and masked, see the module docstring: every sample is used
    once per epoch), and evaluates ``valid``. The train state is donated to the call; its
    buffers come back as the epoch's start state (no copy), kept until the epoch is known to
    be finite. The metrics reach the host as one vector per epoch.

    Args:
      model: a funnet :class:`~funnet.Layer`; ``params``: its initial params (not modified).
      train: an ``(x, y)`` pair or :class:`funnet.data.Dataset`. Checked first with
        :func:`funnet.data.check_arrays` (NaN/inf, label range, lengths) and, by shape only
        (``jax.eval_shape``), against the model's output and ``loss``.
      valid: validation data, of the same kind and checked the same way as ``train``.
      loss: ``loss(pred, target) -> scalar``, a mean over samples (any funnet loss).
      optimizer: an optax transformation (``optax.inject_hyperparams`` makes the learning
        rate show in the history).
      epochs: total number of epochs (also when resuming). ``batch_size``: rows per step.
      key: PRNG key of the train state: each epoch hashes from it its shuffling key, one
        dropout key per step and the next epoch's key (so a resumed run continues exactly).
      l2: ``λ``. ``grad``: ``"reverse"`` or ``"hand"`` (see :func:`make_step`).
      patience: early stopping (docs/math.md §5, needs ``valid``): stop once the validation
        error — ``1 - accuracy`` when accuracy is defined, else the validation loss — has
        not improved (strictly) for ``patience`` epochs, and return the params of the best
        epoch. Without ``patience`` all epochs run and the last params are returned.
      progress: a tqdm bar (one line per epoch without tqdm) when stderr is a terminal.
      checkpoint: a directory; after every epoch the train state, the early-stopping
        bookkeeping, the shuffling key and the history are saved there with
        :func:`funnet.checkpoint.save_step` (the newest ``keep`` kept). It must hold no
        checkpoints unless ``resume=True``.
      resume: continue from the latest checkpoint in ``checkpoint`` (start afresh if there is
        none). The stored key is used, so the result is bitwise that of an uninterrupted run.
      devices: a list of devices or a 1-D ``jax.sharding.Mesh``: data parallelism, the batch
        axis sharded over the devices, params and optimiser state replicated;
        ``batch_size`` must be divisible by the number of devices.

    Returns:
      ``(params, history)``; see :class:`History`.

    Raises:
      ValueError: bad data or arguments (naming the array or argument).
      NonFiniteLossError: the loss, a gradient or the updated state became NaN/inf. The
        epoch's summed loss and final state are checked after every epoch; if they are not
        finite, the epoch is replayed from its start with a flag carried through the
        ``lax.scan``: from the first step whose loss, gradients or updated params/optimiser
        state are not finite on, no update is applied and the step index is recorded. The
        error names the epoch and step and carries that last good state; with
        ``checkpoint`` it is also saved to ``checkpoint/last_good.funnet``.

    >>> import jax, jax.numpy as jnp, optax, funnet
    >>> net = funnet.serial(funnet.Dense(16), funnet.Tanh, funnet.Dense(2))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> x = jax.random.normal(jax.random.PRNGKey(1), (100, 2))
    >>> y = (x[:, 0] + x[:, 1] > 0).astype(jnp.int32)
    >>> params, history = fit(net, params, (x, y), loss=funnet.softmax_cross_entropy,
    ...                       optimizer=optax.adam(0.05), epochs=10, batch_size=32,
    ...                       key=jax.random.PRNGKey(2), progress=False)
    >>> len(history), history[-1]["train_accuracy"] > 0.9
    (10, True)
    """
    model = _stateless(model, "fit")
    optimizer = _check_optimizer(optimizer)
    epochs = check_int(epochs, "epochs", minimum=0)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    keep = check_int(keep, "keep", minimum=1)
    l2 = _check_l2(l2)
    grad = _check_grad(grad)
    if l2:
        model.decay_mask(params)  # a layer that declares no decayed params: refuse it now
    if patience is not None:
        patience = check_int(patience, "patience", minimum=1)
        if valid is None:
            raise ValueError("patience (early stopping) needs validation data: pass valid=")
    if resume and checkpoint is None:
        raise ValueError("resume=True needs checkpoint=DIR")
    x, y = _unpack(train, "train")
    x, y = _as_inputs(x), _as_targets(y, "train")
    if np.ndim(x) and batch_size > len(x):  # padding every epoch up to batch_size rows
        warnings.warn(f"batch_size {batch_size} is larger than the {len(x)} training rows; "
                      f"using batch_size={len(x)}", stacklevel=2)
        batch_size = len(x)
    placement = _mesh(devices, batch_size)
    acc_kind = _check_data(model, params, loss, x, y, batch=batch_size, name="train")
    vx = vy = valid_kind = None
    if valid is not None:
        vx, vy = _unpack(valid, "valid")
        vx, vy = _as_inputs(vx), _as_targets(vy, "valid")
        valid_kind = _check_data(model, params, loss, vx, vy,
                                 batch=min(len(vx), _EVAL_CHUNK), name="valid")

    if placement is None:
        device = jax.devices()[0]
        data_sharding = state_sharding = jax.sharding.SingleDeviceSharding(device)
    else:
        state_sharding = data_sharding = NamedSharding(placement[0], PartitionSpec())
    x, y = jax.device_put(x, data_sharding), jax.device_put(y, data_sharding)
    if vx is not None:
        vx, vy = jax.device_put(vx, data_sharding), jax.device_put(vy, data_sharding)

    state = _start_function(optimizer, state_sharding)(params, _raw_key(key))
    history = History()
    track = valid is not None
    best = {"error": math.inf, "epoch": None, "bad": 0, "params": None}
    start = 0
    config = {"n_train": len(x), "batch_size": batch_size, "grad": grad, "l2": l2,
              "patience": patience, "valid": track}

    directory = Path(checkpoint) if checkpoint is not None else None
    if directory is not None:
        if directory.exists() and not directory.is_dir():
            raise ValueError(f"checkpoint={str(directory)!r} exists and is not a directory")
        latest = ckpt.latest_step(directory)
        if latest is not None and not resume:
            raise ValueError(
                f"checkpoint directory {str(directory)!r} already holds checkpoints (latest "
                f"epoch {latest}); pass resume=True (funnet train --resume) to continue, or "
                "use an empty directory")
        if latest is not None:
            like = {"state": state}
            if track:
                like["best_params"] = state.params
            tree, meta = ckpt.load_step(directory, latest, like=like)
            saved = meta.get("config", {})
            diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
            if diff:
                raise ValueError(
                    f"checkpoint {str(directory)!r} was written by a different fit: "
                    + ", ".join(f"{k}={a!r} there, {b!r} here" for k, (a, b) in diff.items()))
            state = tree["state"]
            start = int(meta["epoch"])
            history = History(meta["history"], best_epoch=meta.get("best_epoch"),
                              stopped_early=bool(meta.get("stopped_early")))
            best.update(error=float(meta.get("best_error", math.inf)),
                        epoch=meta.get("best_epoch"), bad=int(meta.get("bad_epochs", 0)))
            if track and best["epoch"] is not None:
                best["params"] = tree["best_params"]

    def result() -> tuple[PyTree, History]:
        history.best_epoch = best["epoch"]
        if patience is not None and best["params"] is not None:
            return best["params"], history
        return state.params, history

    if start > epochs:
        raise ValueError(
            f"checkpoint directory {str(directory)!r} is at epoch {start}, past epochs={epochs}: "
            f"resume with epochs ≥ {start} (the total number of epochs, not the ones to add)")
    if history.stopped_early or start == epochs:
        return result()

    eval_chunk = _EVAL_CHUNK if vx is not None and len(vx) > _EVAL_CHUNK else None
    if vx is not None and placement is not None:  # chunks that split evenly over devices
        d = placement[0].size
        eval_chunk = -(-min(len(vx), _EVAL_CHUNK) // d) * d
    epoch_options = {"l2": l2, "grad": grad, "n": len(x), "batch_size": batch_size,
                     "acc_kind": acc_kind, "valid_kind": valid_kind, "placement": placement,
                     "eval_chunk": eval_chunk,
                     "signature": _signature((state, x, y, vx, vy))}
    run_epoch = _epoch_function(model, loss, optimizer, guarded=False, **epoch_options)
    bar = _Progress(progress, epochs, start)
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            args = (x, y, vx, vy)
            backup, state, m = run_epoch(state, *args)
            number = epoch + 1
            if not m["finite"]:  # replay the epoch, checking every step, to find the bad one
                replay = _epoch_function(model, loss, optimizer, guarded=True, **epoch_options)
                _, state, m = replay(backup, *args)
                if not m["finite"]:
                    _raise_non_finite(state, history, number, int(m["bad_step"]),
                                      int(state.step), directory, best)
            del backup
            seconds = time.perf_counter() - t0
            record = {
                "epoch": number,
                "train_loss": float(m["train_loss"]),
                "train_accuracy": _opt_float(m.get("train_accuracy")),
                "valid_loss": _opt_float(m.get("valid_loss")),
                "valid_accuracy": _opt_float(m.get("valid_accuracy")),
                "learning_rate": _opt_float(m.get("learning_rate")),
                "seconds": seconds,
            }
            history.append(record)
            if track:
                error = (1.0 - record["valid_accuracy"] if record["valid_accuracy"] is not None
                         else record["valid_loss"])
                if error < best["error"]:  # NaN never improves
                    best.update(error=error, epoch=number, bad=0)
                    best["params"] = jax.tree.map(lambda a: jnp.array(a, copy=True),
                                                  state.params)
                else:
                    best["bad"] += 1
                history.best_epoch = best["epoch"]
                if patience is not None and best["bad"] >= patience:
                    history.stopped_early = True
            if directory is not None:
                tree = {"state": state}
                if track:
                    tree["best_params"] = (best["params"] if best["params"] is not None
                                           else state.params)
                meta = {"epoch": number, "config": config,
                        "history": [_jsonable(r) for r in history],
                        "best_error": best["error"], "best_epoch": best["epoch"],
                        "bad_epochs": best["bad"], "stopped_early": history.stopped_early}
                ckpt.save_step(directory, number, tree, metadata=meta, keep=keep)
            bar.update(record, epochs)
            if history.stopped_early:
                break
    finally:
        bar.close()
    return result()


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


def _raise_non_finite(state: TrainState, history: History, epoch: int, step: int,
                      global_step: int, directory: Path | None, best: dict) -> None:
    path = None
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        path = ckpt.save(directory / "last_good.funnet", state,
                         metadata={"epoch": epoch, "step": step, "global_step": global_step})
    where = f"; the last good state is saved in {str(path)!r}" if path else ""
    raise NonFiniteLossError(
        f"non-finite loss or gradient at epoch {epoch}, step {step} (global step "
        f"{global_step}); the update was not applied, training stopped{where}. Try a lower "
        f"learning rate, gradient clipping (optax.clip_by_global_norm) or check the data.",
        epoch=epoch, step=step, global_step=global_step, last_good_state=state,
        history=history, path=path, best_params=best["params"], best_epoch=best["epoch"],
    )
