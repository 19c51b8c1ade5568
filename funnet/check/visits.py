r"""Walking a model's layer tree: what each layer saw in the forward pass.

``serial`` and ``parallel`` are the only combinators with children; every other layer is
a leaf. :func:`walk` runs a stateless model exactly as its ``apply`` does (the same key
splits, the same train mode) and records, for every leaf, its path
(``serial[3] › parallel[0] › Tanh``), params, input and key. Gradient checks use it to
check each layer at its own inputs, to probe each layer's output, and to find the
pre-activations a finite-difference stencil must not straddle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax

from ..contract import Layer, PyTree
from ..layers.combinators import _split_key

__all__ = ["Visit", "walk"]


@dataclasses.dataclass(frozen=True)
class Visit:
    """One leaf layer as the forward pass met it."""

    path: str
    layer: Layer
    params: PyTree
    x: Any
    key: jax.Array | None
    y: Any


def _join(prefix: str, part: str) -> str:
    return f"{prefix} › {part}" if prefix else part


def walk(model: Layer, params: PyTree, x: Any, *, key: jax.Array | None = None,
         train: bool = False, probe: Callable[[str, Any], Any] | None = None,
         inside: Mapping[str, Any] | None = None, prefix: str = "") -> tuple[Any, list[Visit]]:
    """``(y, visits)``: the output of the stateless ``model`` and every leaf it ran.

    ``visits`` lists a :class:`Visit` per leaf layer, in the order they ran.

    Args:
      model: a stateless :class:`~funnet.Layer` (its leaves run with empty state).
      params: its params.
      x: its input.
      key: the PRNG key, split among ``serial`` and ``parallel`` children as ``apply``
        splits it; ``None`` (the default): no key, as in ``apply``.
      train: the training mode every leaf runs in (``Dropout`` drops, ...).
      probe: ``probe(path, y) -> y'``, which may replace a top-level ``serial`` child's
        output (the δ-trace adds zero probes there); ``path`` is the child's path
        (``serial[3]``). ``None`` (the default): outputs are kept.
      inside: ``{path: probes}``: each top-level ``serial`` child named runs by its
        :attr:`~funnet.Layer.inner_deltas` ``probed`` forward with those probes (the
        δ-trace's probes inside a recurrent layer), recorded as one visit. ``None`` (the
        default): every child runs by its ``apply``.
      prefix: the path of ``model`` itself, prepended to every visit's path (``" › "``
        between the parts); the default ``""``: ``model`` is the root.
    """
    visits: list[Visit] = []
    if model.kind == "serial":
        for i, (child, p, k) in enumerate(zip(model.children, params,
                                              _split_key(key, len(model.children)))):
            path = _join(prefix, f"serial[{i}]")
            if inside is not None and path in inside:
                y = child.inner_rule.probed(p, x, inside[path])
                x, inner = y, [Visit(_join(path, child.name), child, p, x, k, y)]
            else:
                x, inner = walk(child, p, x, key=k, train=train, prefix=path)
            if probe is not None:
                x = probe(path, x)
            visits += inner
        return x, visits
    if model.kind == "parallel":
        ys = []
        for i, (child, p, xi, k) in enumerate(zip(model.children, params, x,
                                                  _split_key(key, len(model.children)))):
            y, inner = walk(child, p, xi, key=k, train=train,
                            prefix=_join(prefix, f"parallel[{i}]"))
            ys.append(y)
            visits += inner
        return tuple(ys), visits
    y = model.apply_with_state(params, (), x, key=key, train=train)[0]
    where = _join(prefix, model.name)
    return y, [Visit(where, model, params, x, key, y)]
