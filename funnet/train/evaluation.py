r"""Scoring a trained model: :func:`evaluate` (mean loss and accuracy) and :func:`predict`.

Both run the model in evaluation mode (``train=False``: no dropout, running statistics),
jitted, in chunks of ``batch_size`` rows when given (one ``lax.scan``, bounded memory).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .._validate import check_int
from ..contract import Layer, PyTree, as_layer
from ..data import Dataset
from ..losses import Loss
from .inputs import as_inputs, as_targets, check_data, model_and_state, num_rows, take_rows, unpack
from .objective import accuracy_kind, row_correct, weighted

__all__ = ["evaluate", "predict"]

EVAL_CHUNK = 4096  # rows per evaluation chunk inside fit (bounds activation memory)


def chunks(n: int, batch_size: int | None) -> tuple[int, int]:
    """``(n_batches, batch)`` covering ``n`` rows; a single batch when ``batch_size`` is None."""
    if batch_size is None or batch_size >= n:
        return 1, n
    return -(-n // batch_size), batch_size


def padded_index(n: int, n_batches: int, batch: int, order: jax.Array | None = None):
    """``(idx [n_batches, batch], mask [n_batches, batch])``; padding repeats real rows."""
    pos = jnp.arange(n_batches * batch)
    if n_batches * batch != n:
        pos = pos % n
    idx = pos if order is None else order[pos] if n_batches * batch != n else order
    mask = (jnp.arange(n_batches * batch) < n).astype(jnp.float32)
    return idx.reshape(n_batches, batch), mask.reshape(n_batches, batch)


def eval_sums(model: Layer, loss: Callable, params: PyTree, state: PyTree, x: jax.Array,
              y: jax.Array, batch_size: int | None, *, spread: Callable | None = None,
              rows: jax.Array | None = None) -> dict:
    """``{"loss": mean loss, "accuracy": mean accuracy (when meaningful)}`` over all rows.

    ``spread``: data parallelism, a sharding constraint for each chunk's row indices; the
    rows then go in chunks of exactly ``batch_size`` (a multiple of the device count), the
    last one padded and masked, so every device scores its own share of the rows.
    ``rows``: data sharded by rows, the index of each of the ``len(rows)`` rows in ``x``
    (:func:`funnet.train.devices.row_layout`; needs ``spread``).
    """
    n = _rows(x) if rows is None else len(rows)
    nb, b = chunks(n, batch_size) if spread is None else (-(-n // batch_size), batch_size)
    kind = None

    def score(xb, yb, w):
        nonlocal kind
        out, _ = model.apply_with_state(params, state, xb)
        kind = accuracy_kind(loss, out.shape, yb.shape, yb.dtype)
        loss_value = weighted(loss, out, yb, w)
        if kind is None:
            return loss_value, jnp.zeros((), jnp.float32)
        correct = row_correct(kind, out, yb)
        # hits are counted (exact in float32 up to 2**24 rows) and divided by n once
        return loss_value, jnp.sum(correct if w is None else w[0] * correct)

    if nb == 1 and b == n and spread is None:
        loss_value, acc = score(x, y, None)
    else:
        idx, mask = padded_index(n, nb, b)

        def body(carry, batch):
            i, m = batch
            if rows is not None:
                i = rows[i]
            if spread is not None:
                i, m = spread(i), spread(m)
            lv, a = score(take_rows(x, i), y[i], (m, n))
            return (carry[0] + lv, carry[1] + a), None

        shapes = jax.eval_shape(body, (0.0, 0.0), (idx[0], mask[0]))[0]
        zeros = tuple(jnp.zeros((), s.dtype) for s in shapes)
        (loss_value, acc), _ = jax.lax.scan(body, zeros, (idx, mask))
    if kind is None:
        return {"loss": loss_value}
    return {"loss": loss_value, "accuracy": acc / n}


@functools.partial(jax.jit, static_argnames=("model", "loss", "batch_size"))
def _evaluate_jit(model, loss, params, state, x, y, batch_size):
    return eval_sums(as_layer(model), loss, params, state, x, y, batch_size)


def evaluate(
    model: Layer,
    params: PyTree,
    data: Dataset | tuple[Any, Any],
    *,
    loss: Loss | Callable[[Any, Any], Any],
    state: PyTree | None = None,
    batch_size: int | None = None,
) -> dict[str, float]:
    """Mean ``loss`` and ``accuracy`` of ``model`` on ``data = (x, y)``, in evaluation mode.

    Args:
      model: the model (a :class:`~funnet.Layer` or stax pair).
      params: its params.
      data: an ``(x, y)`` pair or :class:`funnet.data.Dataset`; checked like ``fit``'s
        (labels out of range, NaN, shapes) before anything runs.
      loss: the loss; ``accuracy`` is reported when it declares a classification task
        (``Loss.task``) or, for a plain function, for integer labels.
      state: the model's state (running statistics), required for a model holding state.
      batch_size: score the rows in chunks of this many (bounds memory); the result is the
        mean over all rows.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.Dense(2)
    >>> params = {"W": jnp.array([[1.0, -1.0]]), "b": jnp.zeros(2)}
    >>> x, y = jnp.array([[1.0], [-1.0], [2.0]]), jnp.array([0, 1, 1])
    >>> evaluate(net, params, (x, y), loss=funnet.softmax_cross_entropy)["accuracy"]
    0.6666666865348816
    """
    model, state = model_and_state(model, state, "evaluate")
    x, y = unpack(data, "data")
    x, y = jax.tree.map(jnp.asarray, as_inputs(x)), jnp.asarray(as_targets(y, "data"))
    n = num_rows(x, "data")
    if n != len(y):
        raise ValueError(f"data.x has {n} samples but data.y has {len(y)}")
    # concrete data: labels out of range would be silently dropped by one_hot under jit
    check_data(model, params, state, loss, x, y, batch=min(n, EVAL_CHUNK), name="data")
    result = _evaluate_jit(model, loss, params, state, x, y, _check_batch(batch_size))
    return {k: float(v) for k, v in jax.device_get(result).items()}


@functools.partial(jax.jit, static_argnames=("model", "batch_size"))
def _predict_jit(model, params, state, x, batch_size):
    model = as_layer(model)
    n = _rows(x)
    nb, b = chunks(n, batch_size)
    if nb == 1:
        return model.apply_with_state(params, state, x)[0]
    idx, _ = padded_index(n, nb, b)
    out = jax.lax.map(lambda i: model.apply_with_state(params, state, take_rows(x, i))[0],
                      idx)
    return out.reshape((nb * b,) + out.shape[2:])[:n]


def predict(model: Layer, params: PyTree, x: Any, *, state: PyTree | None = None,
            batch_size: int | None = None) -> jax.Array:
    """``model``'s output on ``x`` in evaluation mode, jitted; in chunks of ``batch_size``.

    Args:
      model: the model.
      params: its params.
      x: the inputs ``[N, ...]`` (or a tuple of them, as :func:`~funnet.fit` takes);
        the model's host-side input checks run on them first
        (:meth:`funnet.Layer.check_inputs`: an ``Embedding`` id out of range is a
        ValueError naming ``predict.x``, not a row of NaN).
      state: the model's state, required for a model holding state.
      batch_size: rows per chunk (bounds memory); ``None``: all rows at once.

    >>> import jax.numpy as jnp, funnet
    >>> params = {"W": jnp.ones((2, 1)), "b": jnp.zeros(1)}
    >>> predict(funnet.Dense(1), params, jnp.ones((5, 2)), batch_size=2).ravel().tolist()
    [2.0, 2.0, 2.0, 2.0, 2.0]
    """
    model, state = model_and_state(model, state, "predict")
    x = jax.tree.map(jnp.asarray, as_inputs(x))
    num_rows(x, "predict")  # one row count for a tuple of inputs, or a ValueError
    model.check_inputs(x, "predict.x")  # on the host: Embedding ids out of range, ...
    return _predict_jit(model, params, state, x, _check_batch(batch_size))


def _rows(x: Any) -> int:
    """The leading length of the (already checked) inputs ``x``."""
    return jax.tree.leaves(x)[0].shape[0]


def _check_batch(batch_size: Any) -> int | None:
    return check_int(batch_size, "batch_size", allow_none=True)
