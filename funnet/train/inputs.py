r"""Checks of what a user hands to training: data, arguments, the model and its state.

Everything here runs on concrete values before anything is compiled, so that a mistake is
reported by name (``train.y``, ``batch_size``, the layer) before work is wasted.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..contract import Layer, PyTree, StatefulModelError, as_layer
from ..data import check_arrays, check_finite
from ..graph import Graph
from .objective import accuracy_kind

__all__ = ["as_inputs", "as_targets", "check_data", "check_l2", "input_leaves", "model_and_state",
           "num_rows", "take_rows", "unpack"]


def model_and_state(model: Any, state: PyTree | None, what: str) -> tuple[Layer, PyTree]:
    """``(model as a Layer, its state)``; a model holding state needs ``state=``."""
    model = as_layer(model)
    if model.stateful and (state is None or _is_empty(state)):
        raise StatefulModelError(
            f"{what}: {model.stateful_path()} holds state: pass its state, e.g. "
            f"_, params, state = model.init_with_state(key, input_shape); "
            f"{what}(..., state=state)")
    if not model.stateful and state is not None and jax.tree.leaves(state):
        raise StatefulModelError(
            f"{what}: state= was given, but {model.name} holds no state (its state is ()); "
            "leave state out, or pass the model the state belongs to")
    return model, (() if state is None else state)


def _is_empty(state: PyTree) -> bool:
    """``state == ()``, for any state: ``array == ()`` would compare elementwise."""
    return isinstance(state, tuple) and not state


def check_l2(l2: Any) -> float:
    try:
        value = float(l2)
    except (TypeError, ValueError):
        raise TypeError(f"l2 must be a number, got {l2!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"l2 must be a finite number ≥ 0, got {l2!r}")
    return value


def unpack(data: Any, name: str) -> tuple[Any, Any]:
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


def as_inputs(x: Any) -> Any:
    """``x`` as a strongly typed array: floats and integers as they are (integer ids feed an
    ``Embedding``, which refuses floats), anything else (bool) as JAX's default float.

    A tuple (a sequence layer's ``(x, mask)`` or ``(x, mask, h0)``, a NamedTuple) is
    several inputs, each converted so; ``None`` entries stay. A list is one array."""
    if isinstance(x, tuple):
        parts = [None if a is None else as_inputs(a) for a in x]
        return type(x)(*parts) if hasattr(x, "_fields") else tuple(parts)
    x = _strong(x)
    if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
        x = x.astype(jnp.result_type(float))
    return x


def input_leaves(x: Any, name: str) -> list[tuple[str, Any]]:
    """``[(label, array)]`` of the inputs ``x``: ``[("train.x", x)]`` for one array,
    ``[("train.x[0]", ids), ("train.x[1]", mask)]`` for a tuple."""
    if not isinstance(x, tuple):
        return [(f"{name}.x", x)]
    return [(f"{name}.x{jax.tree_util.keystr(path)}", a)
            for path, a in jax.tree_util.tree_flatten_with_path(x)[0]]


def _refuse_graph(x: Any, label: str) -> None:
    """A TypeError naming ``label`` if ``x`` is (or its tuple holds) a graph."""
    if isinstance(x, Graph):
        raise TypeError(
            f"{label} is a funnet.graph.Graph (nodes {np.shape(x.nodes)}, senders "
            f"{np.shape(x.senders)}): fit, evaluate and predict shuffle and batch the rows of "
            "x as samples, but a graph's nodes and edges are not samples (taking the same "
            "rows of each would scramble the graph); train a graph model with "
            "funnet.make_step in a loop of your own and score it with model.apply "
            "(docs/graph.md)")
    if isinstance(x, tuple):
        for i, part in enumerate(x):
            _refuse_graph(part, f"{label}[{i}]")


def num_rows(x: Any, name: str) -> int:
    """The number of rows (samples) of the inputs ``x``: its leading length, which every
    array of a tuple ``x`` shares (else a ValueError naming the arrays and shapes).

    A :class:`~funnet.graph.Graph` is refused: its node and edge arrays are not rows of
    samples, and taking the same rows of each (even when there are as many edges as
    nodes) would scramble the graph."""
    _refuse_graph(x, f"{name}.x")
    leaves = input_leaves(x, name)
    if not leaves:
        raise ValueError(f"{name}.x holds no arrays")
    for label, a in leaves:
        if np.ndim(a) == 0:
            raise ValueError(f"{label} is a scalar (shape {np.shape(a)}): inputs are [N, ...]")
    first_label, first = leaves[0]
    for label, a in leaves[1:]:
        if len(a) != len(first):
            raise ValueError(f"{label} has {len(a)} rows but {first_label} has {len(first)} "
                             f"(shapes {np.shape(a)} and {np.shape(first)}): every input "
                             "array holds one row per sample")
    return len(first)


def take_rows(x: Any, i: Any) -> Any:
    """The rows ``i`` of every input array of ``x`` (an array or a tuple of them)."""
    return jax.tree.map(lambda a: a.at[i].get(mode="promise_in_bounds"), x)


def as_targets(y: Any, name: str = "train") -> np.ndarray | jax.Array:
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


def check_data(model: Layer, params: PyTree, state: PyTree, loss: Any, x, y, *, batch: int,
               name: str) -> str | None:
    """Check ``(x, y)`` and that ``model``'s output fits ``y`` and ``loss``, by shape only.

    Returns the accuracy kind. Raises ValueError naming ``name.x`` / ``name.y``; the
    model's own host-side checks of its inputs (:meth:`funnet.Layer.check_inputs`:
    ``Embedding`` ids in range) run on the concrete ``x`` too.
    """
    leaves = input_leaves(x, name)
    n = num_rows(x, name)
    first = leaves[0][1]
    if n == 0 or np.ndim(y) == 0 or len(y) != n:
        check_arrays(first, y, name=name)  # raises, naming the array
    for label, a in leaves if len(leaves) > 1 else ():  # one array: check_arrays names it
        check_finite(np.asarray(a), label)
    x_spec = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((batch,) + tuple(np.shape(a)[1:]), a.dtype), x)
    y_spec = jax.ShapeDtypeStruct((batch,) + tuple(np.shape(y)[1:]), y.dtype)
    try:
        out = jax.eval_shape(lambda p, s, xb: model.apply_with_state(p, s, xb)[0],
                             params, state, x_spec)
    except (ValueError, TypeError) as e:
        shapes = jax.tree.map(np.shape, x) if len(leaves) > 1 else np.shape(x)
        raise type(e)(
            f"{name}.x of shape {shapes} does not fit the model {model.name}: {e}"
        ) from None
    if not isinstance(out, jax.ShapeDtypeStruct):
        raise TypeError(f"the model {model.name} must return one array, got {out}")
    model.check_inputs(x, f"{name}.x")  # e.g. Embedding ids, which jit makes NaN rows
    kind = accuracy_kind(loss, out.shape, y_spec.shape, y_spec.dtype)
    labels = (jnp.issubdtype(y_spec.dtype, jnp.integer) and len(out.shape) >= 2
              and tuple(y_spec.shape) == tuple(out.shape[:-1]))  # class indices, any loss
    num_classes = out.shape[-1] if labels else None
    check_arrays(np.asarray(first), np.asarray(y), num_classes=num_classes, name=name)
    if not labels and tuple(out.shape) != tuple(y_spec.shape):
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
