"""Argument and shape checks shared by every module; each error names who is at fault.

One helper per kind of check, so that a layer, a loss or ``fit`` reports a bad argument
in the same words: the layer (or function) name, the argument, what was expected and
what was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

__all__ = [
    "LayerError",
    "ParamsError",
    "check_input_shape",
    "check_int",
    "expect_cotangent",
    "expect_no_params",
    "expect_params",
    "expect_rank",
    "refuse_graph",
    "shape_of",
    "static_bool",
]


class LayerError(ValueError):
    """Bad shapes for a layer; the message names the layer and the shapes involved."""


class ParamsError(TypeError):
    """Params of the wrong structure for a layer; the message names the layer."""


def check_int(value: Any, what: str, *, minimum: int = 1, allow_none: bool = False,
              error: type[Exception] = ValueError) -> int | None:
    """``value`` as an ``int`` if it is an integer ``≥ minimum`` (not a bool), else ``error``.

    ``what`` names the argument in the message, e.g. ``"Dense: out_dim"``; with
    ``allow_none`` a ``None`` passes through.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        also = " or None" if allow_none else ""
        raise error(f"{what} must be an int ≥ {minimum}{also}, got {value!r}")
    return int(value)


def static_bool(value: Any, what: str) -> bool:
    """``value`` as a Python bool; a traced value (``train`` passed through ``jax.jit``) is
    refused with the fix, since it decides which computation is traced."""
    if isinstance(value, jax.core.Tracer):
        raise TypeError(f"{what} must be a Python bool, not a traced value: it chooses the "
                        "computation. Under jax.jit mark it static, e.g. "
                        "jax.jit(fn, static_argnames='train'), or bind it with functools.partial")
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return bool(value)


def shape_of(x: Any) -> tuple[int, ...]:
    """The shape of an array-like as a tuple of ints."""
    return tuple(np.shape(x))


def check_input_shape(name: str, input_shape: Any, *, min_rank: int = 1,
                      features: bool = False) -> tuple[int, ...]:
    """``input_shape`` as a tuple of ints (``-1``: unknown batch size), or a LayerError.

    ``features``: the last axis is the layer's feature axis, so its size must be known.
    """
    try:
        shape = tuple(int(d) for d in input_shape)
    except TypeError:
        raise LayerError(f"{name}: input_shape must be a tuple of ints, got {input_shape!r}") from None
    if len(shape) < min_rank:
        raise LayerError(f"{name}: input_shape {shape} has rank {len(shape)}, needs ≥ {min_rank}")
    if any(d <= 0 for d in shape[1:]) or (shape and shape[0] == 0):
        raise LayerError(f"{name}: input_shape {shape} has an empty or negative dimension")
    if features and shape[-1] <= 0:
        raise LayerError(f"{name}: input_shape {shape}: the last (feature) dimension must be "
                         "a known positive size")
    return shape


def expect_params(name: str, params: Any, keys: Sequence[str]) -> None:
    """``params`` must be a dict with exactly ``keys``."""
    if not isinstance(params, dict) or set(params) != set(keys):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ParamsError(f"{name}: params must be a dict with keys {sorted(keys)}, got {got}")


def expect_no_params(name: str, params: Any) -> None:
    """A layer without params must be given ``()`` (or another leafless pytree)."""
    if jax.tree_util.tree_leaves(params):
        raise ParamsError(
            f"{name} has no params (expects ()), got {jax.tree_util.tree_structure(params)}"
        )


def expect_cotangent(name: str, dy: Any, out_shape: Sequence[int]) -> None:
    """``dy``, handed to ``name``'s backward, must have the shape of its forward output."""
    if shape_of(dy) != tuple(out_shape):
        raise LayerError(f"{name}: backward got dy of shape {shape_of(dy)}, but the forward "
                         f"output has shape {tuple(out_shape)}: dy = ∂L/∂y must have y's shape")


_NODEWISE = "apply the layer to every node with funnet.nodewise(layer), or "
_TO_ARRAY = ("turn the graph into an array first with funnet.Nodes (one row per node) or "
             "funnet.Readout (one row per graph)")


def refuse_graph(name: str, x: Any, what: str = "the input", *, nodewise: bool = True) -> None:
    """A :class:`LayerError` naming ``name`` if ``x`` is a :class:`funnet.graph.Graph`
    given where an array belongs: NumPy's own error (an "inhomogeneous shape" from
    ``np.ndim``, or ``None`` refused by ``jnp.asarray``) would name neither the layer nor
    the fix. ``nodewise``: suggest ``funnet.nodewise`` (for a layer on rows)."""
    from .graph import Graph  # here: funnet.graph imports this module

    if isinstance(x, Graph):
        raise LayerError(
            f"{name}: {what} {'are' if what.endswith('s') else 'is'} a funnet.graph.Graph "
            f"(nodes of shape {shape_of(x.nodes)}), "
            f"not an array: {_NODEWISE if nodewise else ''}{_TO_ARRAY}")


def expect_rank(name: str, x: Any, min_rank: int) -> None:
    """``x`` must be an array (not a graph) with at least ``min_rank`` axes."""
    refuse_graph(name, x)
    if np.ndim(x) < min_rank:
        raise LayerError(
            f"{name}: input of shape {shape_of(x)} has rank {np.ndim(x)}, needs ≥ {min_rank}"
        )


def refuse_list_input(name: str, x: Any) -> None:
    """A :class:`LayerError` naming layer ``name`` if its input ``x`` (or a part of a tuple
    ``x``) is a Python list of numbers: jax.numpy does not take lists, and its own error (or
    an AttributeError from ``x.dtype``) would name neither the layer nor ``x``."""
    for part in x if isinstance(x, tuple) else (x,):
        if isinstance(part, list) and any(isinstance(a, (list, int, float, complex))
                                          for a in part):
            raise LayerError(f"{name}: the input x is a list (a Python list); layers take "
                             "arrays (jax or NumPy): convert it with jnp.asarray(x)")
