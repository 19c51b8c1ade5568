"""The shape of every layer without params: ``y = f(x)`` and ``dx = g(x, y, dy)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._validate import check_input_shape, expect_no_params, expect_rank
from ..contract import Layer, layer


def identity_init(name: str, *, min_rank: int = 0) -> Callable[..., tuple[Any, tuple]]:
    """``init`` of a layer that keeps its input's shape and has no params."""

    def init(key, input_shape):
        return check_input_shape(name, input_shape, min_rank=min_rank), ()

    return init


def paramless(name: str, f: Callable[[Any], Any], res_backward: Callable[[Any, Any, Any], Any],
              *, min_rank: int = 1, init: Callable | None = None,
              configure: Callable[..., Layer] | None = None,
              rewire: Callable[[str], Layer] | None = None,
              kinks: tuple[float, ...] = ()) -> Layer:
    """A layer without params: ``y = f(x)``; backward ``dx = res_backward(x, y, dy)``."""

    def apply(params, x):
        expect_no_params(name, params)
        expect_rank(name, x, min_rank)
        return f(x)

    def forward(params, x):
        y = apply(params, x)
        return y, (x, y)

    def backward(params, res, dy):
        x, y = res
        return (), res_backward(x, y, dy)

    return layer(init or identity_init(name, min_rank=min_rank), forward, backward, apply=apply,
                 name=name, configure=configure, rewire=rewire, kinks=kinks)
