r"""Inspecting a model: ``param_count`` and ``summary``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import numpy as np

from .._table import table
from ..contract import Layer, PyTree, as_layer
from .combinators import _at

__all__ = ["param_count", "summary"]


def param_count(params: PyTree) -> int:
    r"""Number of scalars in a params pytree: ``Σ_l M_{l-1} M_l + M_l`` for an MLP.

    Args:
        params: the pytree of arrays (a model's params, or any pytree of arrays).

    >>> import jax, funnet
    >>> _, p = funnet.serial(funnet.Dense(4), funnet.Tanh, funnet.Dense(1)).init(
    ...     jax.random.PRNGKey(0), (-1, 2))
    >>> funnet.param_count(p)
    17
    """
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def summary(model: Layer, input_shape: Sequence[int], *,
            print_fn: Callable[[str], None] | None = print) -> str:
    r"""Print (and return) a per-layer table of output shapes, params and state entries.

    Computed from ``init_with_state`` alone with :func:`jax.eval_shape`: nothing is
    allocated. The ``state`` column appears when the model holds state.

    Args:
        model: the :class:`funnet.Layer` to describe.
        input_shape: the input shape, batch axis included (``(-1, 784)``: any batch).
        print_fn: called with the table; ``None`` prints nothing (the table is returned).

    >>> import funnet
    >>> _ = funnet.summary(funnet.serial(funnet.Dense(4), funnet.Relu, funnet.Dense(1)), (-1, 2))
    # layer    output shape params
    0 Dense(4) (-1, 4)      12
    1 Relu     (-1, 4)      0
    2 Dense(1) (-1, 1)      5
      total                 17
    """
    model = as_layer(model)
    key = jax.random.PRNGKey(0)
    layers = model.children if model.kind == "serial" else (model,)
    rows, shape = [], tuple(input_shape)
    for i, child in enumerate(layers):
        box = {}

        def init(k, child=child, s=shape, box=box, where=f"serial[{i}]"):
            box["shape"], p, st = _at(where, child.init_with_state, k, s)
            return p, st

        p, st = jax.eval_shape(init, key)
        rows.append([str(i), child.name, str(box["shape"]), str(param_count(p)),
                     str(param_count(st))])
        shape = box["shape"]
    rows.append(["", "total", "", str(sum(int(r[3]) for r in rows)),
                 str(sum(int(r[4]) for r in rows))])
    header = ["#", "layer", "output shape", "params", "state"]
    if not model.stateful:
        header, rows = header[:4], [r[:4] for r in rows]
    text = table(header, rows, sep=" ")
    if print_fn is not None:
        print_fn(text)
    return text
