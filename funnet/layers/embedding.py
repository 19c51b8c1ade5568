r"""The lookup table ``y[…, :] = E[ids[…], :]`` (docs/math.md §9.1)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import (
    LayerError,
    ParamsError,
    check_input_shape,
    check_int,
    expect_params,
    shape_of,
)
from ..contract import Layer, layer

__all__ = ["Embedding"]

_NORMAL = jax.nn.initializers.normal(stddev=1.0)


def Embedding(
    vocab_size: int,
    dim: int,
    *,
    init: Callable[..., jax.Array] = _NORMAL,
) -> Layer:
    r"""Map integer ids to learned vectors: ``y[n, t, :] = E[ids[n, t], :]`` (docs/math.md §9.1).

    The layer is a ``Dense`` layer without bias applied to one-hot rows, computed as a
    lookup: ``y = one_hot(ids) E``. Backward is a scatter-add into the table,
    ``dE[ids[n, t], :] += dy[n, t, :]`` (repeated ids accumulate; ``= one_hot(ids)ᵀ dy``);
    the ids are integers and get no gradient (``dx = None``).

    Args:
      vocab_size: the number of ids ``V``; valid ids are ``0 … V-1``.
      dim: the vector size ``D``.
      init: initializer of the table ``E [V, D]``; default ``N(0, 1)`` (as PyTorch's
        ``nn.Embedding``).

    Shapes: ``ids [...] (any integer dtype) -> y [..., D]``; params ``{"table": [V, D]}``;
    weight decay applies to ``table`` (it is the weight matrix of that ``Dense``). The ids
    are one JAX or NumPy array (a Python list or int is refused: ``jnp.asarray`` it); a
    sequence's ``(ids, mask)`` goes through ``parallel(Embedding(V, D), Identity)``, which
    passes the mask on.

    Out-of-range ids: on concrete ids (eager calls) an id outside ``0 … V-1`` is a
    :class:`funnet.LayerError` naming the layer and the offending ids, raised before any
    compute. Under ``jax.jit`` the ids are not known while tracing: an out-of-range id then
    gives a row of NaN (never a silently clamped or wrapped row), and its gradient is
    dropped.

    >>> import jax, jax.numpy as jnp, funnet
    >>> emb = funnet.Embedding(10, 3)
    >>> out_shape, params = emb.init(jax.random.PRNGKey(0), (-1, 5))
    >>> out_shape, params["table"].shape
    ((-1, 5, 3), (10, 3))
    >>> ids = jnp.array([[1, 2, 1]])
    >>> bool(jnp.all(emb.apply(params, ids)[0, 0] == params["table"][1]))
    True
    >>> dparams, dx = funnet.backprop.backward(emb, params, ids, jnp.ones((1, 3, 3)))
    >>> dparams["table"][:3].tolist(), dx  # id 1 occurs twice: its rows accumulate
    ([[0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [1.0, 1.0, 1.0]], None)
    """
    vocab_size = check_int(vocab_size, "Embedding: vocab_size", error=LayerError)
    dim = check_int(dim, "Embedding: dim", error=LayerError)
    name = f"Embedding({vocab_size}, {dim})"
    table_init = init

    def init_fn(key, input_shape):
        shape = check_input_shape(name, input_shape, min_rank=1)
        return shape + (dim,), {"table": table_init(key, (vocab_size, dim))}

    def check(params, ids):
        if isinstance(ids, tuple):  # (ids, mask): structure, so also under jit
            raise LayerError(f"{name}: ids must be one integer array, got a tuple of "
                             f"{len(ids)} (shapes {[shape_of(a) for a in ids]}); for a "
                             f"sequence's (ids, mask) map it over the pair: "
                             f"parallel({name}, Identity)")
        if not isinstance(ids, (jax.Array, np.ndarray, np.generic)):
            given = (f"the Python {type(ids).__name__} {ids!r}" if isinstance(ids, (int, float))
                     else f"a {type(ids).__name__}")
            raise LayerError(f"{name}: ids must be an integer array, got {given}; pass "
                             "jnp.asarray(ids) (e.g. [batch, time] ids)")
        expect_params(name, params, ("table",))
        if shape_of(params["table"]) != (vocab_size, dim):
            raise ParamsError(f"{name}: table has shape {shape_of(params['table'])}, expected "
                              f"{(vocab_size, dim)}")
        kind = jnp.result_type(ids)
        if not jnp.issubdtype(kind, jnp.integer):
            raise LayerError(f"{name}: ids must be integers, got {kind} of shape {shape_of(ids)}")
        if not isinstance(ids, jax.core.Tracer):  # concrete ids: check their range now
            found = _out_of_range(np.asarray(ids), vocab_size)
            if found is not None:
                _, where, shown, count, size, shape = found
                raise LayerError(f"{name}: ids must be in 0 … {vocab_size - 1}; got {shown} "
                                 f"({count} of {size} ids, the first at index {where} of ids "
                                 f"of shape {shape})")

    def input_check(ids, label):  # fit's data, on the host: what jit would make NaN rows
        if isinstance(ids, (tuple, list)) or not jnp.issubdtype(jnp.result_type(ids),
                                                                 jnp.integer):
            return  # not ids: apply refuses them, naming the layer
        found = _out_of_range(np.asarray(ids), vocab_size)
        if found is not None:
            first, where, shown, count, size, _ = found
            raise ValueError(f"{label}: id {first} at index {where} is out of range for {name} "
                             f"(ids 0 … {vocab_size - 1}); {count} of {size} ids are out of "
                             f"range: {shown}. Padding ids under a sequence mask index the "
                             "table too: pad with a valid id (e.g. 0)")

    def valid(ids):
        return (ids >= 0) & (ids < vocab_size)

    def apply(params, ids):
        check(params, ids)
        table, ok = params["table"], valid(ids)
        rows = jnp.take(table, jnp.where(ok, ids, 0), axis=0)  # y = E[ids]
        return jnp.where(ok[..., None], rows, jnp.asarray(jnp.nan, table.dtype))

    def forward(params, ids):
        return apply(params, ids), ids

    def backward(params, ids, dy):
        table = params["table"]
        slot = jnp.where(valid(ids), ids, vocab_size)  # out of range: dropped below
        d_table = jnp.zeros_like(table).at[slot].add(dy.astype(table.dtype), mode="drop")
        return {"table": d_table}, None  # dE[ids] += dy; the ids have no gradient

    return layer(init_fn, forward, backward, apply=apply, name=name, decay=("table",),
                 input_check=input_check)


def _out_of_range(values: np.ndarray, vocab_size: int):
    """``(first id, its index, the distinct ids shown, count, size, shape)`` of the ids
    outside ``0 … vocab_size - 1``, or ``None`` when there are none."""
    bad = (values < 0) | (values >= vocab_size)
    if not bad.any():
        return None
    where = tuple(int(i) for i in np.unravel_index(np.argmax(bad), bad.shape))
    offending = np.unique(values[bad])
    shown = ", ".join(str(v) for v in offending[:8]) + (", …" if offending.size > 8 else "")
    return (values[where].item(), where, shown, int(bad.sum()), values.size, values.shape)
