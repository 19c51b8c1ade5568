r"""Composition: ``serial``, ``parallel``, ``fanout``, ``FanInSum``, ``FanInConcat``.

Combinators thread params, state, keys, the train mode and the row mask through their children; their
params are tuples with one entry per child, and so is their state when a child holds
state (``()`` otherwise). Backward rules (``dy = ∂L/∂y``; ``None``: no gradient)::

    serial       a(l) = layer_l(a(l-1))   the children's rules chained in reverse (δ-recursion)
    parallel     (f_i(x_i))_i             each child's rule on its own input
    fanout(n)    (x, …, x)                dx = Σ_i dy_i              (branch node)
    FanInSum     Σ_i x_i                  dx_i = dy                  (add node)
    FanInConcat  concat(x_i)              dx_i = the slice of dy

A child whose output gets no gradient (``dy is None``) contributes zero gradients to its
params and ``None`` to its input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._validate import (
    LayerError,
    ParamsError,
    check_int,
    expect_no_params,
    refuse_graph,
    shape_of,
)
from ..contract import Layer, NoBackwardRuleError, PyTree, StatefulModelError, as_layer, layer

__all__ = ["FanInConcat", "FanInSum", "fanout", "parallel", "serial"]

_NAMED_ERRORS = (LayerError, ParamsError, NoBackwardRuleError, StatefulModelError)


def _at(where: str, call: Callable, *args: Any, **kwargs: Any) -> Any:
    """Run ``call``; prefix layer errors with where they happened (``serial[2] › …``)."""
    try:
        return call(*args, **kwargs)
    except _NAMED_ERRORS as e:
        raise type(e)(f"{where} › {e}") from None


def _split_key(key: jax.Array | None, n: int) -> list:
    return list(jax.random.split(key, n)) if key is not None else [None] * n


def _expect_sequence(name: str, value: Any, n: int, what: str = "params") -> None:
    if not isinstance(value, (tuple, list)) or len(value) != n:
        got = f"{type(value).__name__} of length {len(value)}" if isinstance(
            value, (tuple, list)
        ) else type(value).__name__
        raise ParamsError(f"{name}: {what} must be a tuple with one entry per layer ({n}), got {got}")


def _zeros_like(tree: PyTree) -> PyTree:
    return jax.tree_util.tree_map(jnp.zeros_like, tree)


def _child_backward(child: Layer, where: str, params: PyTree, residuals: Any, dy: Any):
    """``child.backward(params, residuals, dy)``; zeros and ``None`` when ``dy is None``."""
    if dy is None:
        return _zeros_like(params), None
    return _at(where, child.backward, params, residuals, dy)


class _Children:
    """What ``serial`` and ``parallel`` share: the children and how state is packed."""

    def __init__(self, kind: str, layers: Sequence[Any]):
        self.kind = kind
        self.layers = tuple(as_layer(c) for c in layers)
        self.n = len(self.layers)
        self.stateful = any(c.stateful for c in self.layers)
        self.name = f"{kind}({', '.join(c.name for c in self.layers)})"

    def where(self, i: int) -> str:
        return f"{self.kind}[{i}]"

    def states(self, state: PyTree) -> Sequence[PyTree]:
        """One state per child: the tuple itself, or ``()`` each when no child has state."""
        if not self.stateful:
            return ((),) * self.n
        _expect_sequence(self.kind, state, self.n, "state")
        return state

    def pack(self, states: Sequence[PyTree]) -> PyTree:
        return tuple(states) if self.stateful else ()

    def forward_rule(self, i: int) -> Callable:
        child = self.layers[i]
        if not child.has_backward:
            raise NoBackwardRuleError(
                f"{self.where(i)} {child.name} has no hand-derived backward rule; build it with "
                "funnet.layer(init, forward, backward) or use jax.grad"
            )
        return child.forward_with_state

    def decay(self, params: PyTree) -> PyTree:
        _expect_sequence(self.kind, params, self.n)
        return tuple(_at(self.where(i), c.decay_mask, p)
                     for i, (c, p) in enumerate(zip(self.layers, params)))

    def rewire(self, build: Callable[..., Layer]) -> Callable[[str], Layer] | None:
        if all(c.rewire is None for c in self.layers):
            return None
        return lambda wiring: build(*(c.rewired(wiring) for c in self.layers))

    def make(self, init, apply, forward, backward, build, input_check=None) -> Layer:
        return Layer(init, apply, forward, backward, name=self.name, children=self.layers,
                     kind=self.kind, stateful=self.stateful, decay=self.decay,
                     rewire=self.rewire(build), input_check=input_check)


def serial(*layers: Any) -> Layer:
    r"""Compose layers in sequence: ``a(l) = layer_l(a(l-1))``.

    Params (and state, when a layer holds some) are tuples, one entry per layer. Backward
    is the δ-recursion of docs/math.md §5: the layers' backward rules chained in reverse,
    each ``dy`` being the error term that reaches that layer's output.

    Args:
        *layers: the layers (:class:`funnet.Layer`, or stax ``(init, apply)`` pairs), the
            input's first.

    >>> import jax, funnet
    >>> net = funnet.serial(funnet.Dense(4), funnet.Logistic, funnet.Dense(1))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> funnet.param_count(params)  # 2·4 + 4 + 4·1 + 1
    17
    """
    c = _Children("serial", layers)

    def init_with_state(key, input_shape):
        params, states = [], []
        for i, (child, k) in enumerate(zip(c.layers, jax.random.split(key, max(c.n, 1)))):
            input_shape, p, s = _at(c.where(i), child.init_with_state, k, input_shape)
            params.append(p)
            states.append(s)
        return input_shape, tuple(params), c.pack(states)

    def run(params, state, x, key, train, mask, rule):
        _expect_sequence("serial", params, c.n)
        states, residuals = [], []
        for i, (p, s, k) in enumerate(zip(params, c.states(state), _split_key(key, c.n))):
            out = _at(c.where(i), rule(i), p, s, x, key=k, train=train, mask=mask)
            x, s = out[0], out[1]
            states.append(s)
            residuals.append(out[2] if len(out) == 3 else None)
        return x, c.pack(states), tuple(residuals)

    def apply_with_state(params, state, x, *, key=None, train=False, mask=None):
        y, new_state, _ = run(params, state, x, key, train, mask,
                              lambda i: c.layers[i].apply_with_state)
        return y, new_state

    def forward_with_state(params, state, x, *, key=None, train=False, mask=None):
        return run(params, state, x, key, train, mask, c.forward_rule)

    def backward(params, residuals, dy):
        dparams, dx, _ = _chain_backward(c.layers, params, residuals, dy)
        return dparams, dx

    first = c.layers[0] if c.layers else None
    input_check = None if first is None or first.input_check is None else first.check_inputs
    return c.make(init_with_state, apply_with_state, forward_with_state, backward, serial,
                  input_check)


def _chain_backward(layers: Sequence[Layer], params: PyTree, residuals: Any, dy: Any, *,
                    inner: bool = False):
    """The δ-recursion over ``serial`` layers, recording what reaches each layer's output.

    Returns ``(dparams, dx, deltas)``; ``deltas[l] = ∂L/∂(output of layer l)``, which for a
    ``Dense`` layer is its error term ``δ(l) = ∂L/∂z(l)``. With ``inner``, a layer with
    :attr:`~funnet.Layer.inner_rule` (a recurrent layer) runs the backward that also
    returns the error terms inside it, and its entry is what that returns (a
    ``TimeDeltas(output, h, c)``, ``output`` being the entry above). Internal to funnet
    (used by :func:`funnet.backprop.value_and_grad` with ``return_deltas=True``).
    """
    n = len(layers)
    grads, deltas = [None] * n, [None] * n
    for i in reversed(range(n)):
        deltas[i] = dy
        where, child = f"serial[{i}]", layers[i]
        if inner and child.inner_rule is not None and dy is not None:
            grads[i], dy, deltas[i] = _at(where, child.inner_rule.backward, params[i],
                                          residuals[i], dy)
        else:
            grads[i], dy = _child_backward(child, where, params[i], residuals[i], dy)
    return tuple(grads), dy, tuple(deltas)


def parallel(*layers: Any) -> Layer:
    r"""Apply layer ``i`` to input ``i`` of a tuple; params are a tuple, one per layer.

    Args:
        *layers: one layer per input, in the order of the input tuple.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.serial(funnet.fanout(2), funnet.parallel(funnet.Dense(3), funnet.Relu),
    ...                     funnet.FanInConcat())
    >>> net.init(jax.random.PRNGKey(0), (-1, 2))[0]
    (-1, 5)
    """
    c = _Children("parallel", layers)

    def check_inputs(xs):
        if not isinstance(xs, (tuple, list)) or len(xs) != c.n:
            got = f"{len(xs)} inputs" if isinstance(xs, (tuple, list)) else "one input"
            raise LayerError(f"{c.name}: expects a tuple of {c.n} inputs, got {got}")

    def init_with_state(key, input_shapes):
        if not isinstance(input_shapes, (tuple, list)) or len(input_shapes) != c.n:
            raise LayerError(f"{c.name}: expects {c.n} input shapes, got {input_shapes!r}")
        outs = [
            _at(c.where(i), child.init_with_state, k, s)
            for i, (child, k, s) in enumerate(
                zip(c.layers, jax.random.split(key, max(c.n, 1)), input_shapes))
        ]
        return (tuple(o[0] for o in outs), tuple(o[1] for o in outs),
                c.pack([o[2] for o in outs]))

    def run(params, state, xs, key, train, mask, rule):
        _expect_sequence("parallel", params, c.n)
        check_inputs(xs)
        outs = [
            _at(c.where(i), rule(i), p, s, x, key=k, train=train, mask=mask)
            for i, (p, s, x, k) in enumerate(
                zip(params, c.states(state), xs, _split_key(key, c.n)))
        ]
        residuals = tuple(o[2] if len(o) == 3 else None for o in outs)
        return tuple(o[0] for o in outs), c.pack([o[1] for o in outs]), residuals

    def apply_with_state(params, state, xs, *, key=None, train=False, mask=None):
        ys, new_state, _ = run(params, state, xs, key, train, mask,
                               lambda i: c.layers[i].apply_with_state)
        return ys, new_state

    def forward_with_state(params, state, xs, *, key=None, train=False, mask=None):
        return run(params, state, xs, key, train, mask, c.forward_rule)

    def backward(params, residuals, dys):
        dys = (None,) * c.n if dys is None else dys
        out = [
            _child_backward(child, c.where(i), p, r, dy)
            for i, (child, p, r, dy) in enumerate(zip(c.layers, params, residuals, dys))
        ]
        return tuple(o[0] for o in out), tuple(o[1] for o in out)

    def input_check(xs, label):  # each part to its layer; a wrong structure: apply says so
        if isinstance(xs, (tuple, list)) and len(xs) == c.n:
            for i, (child, x) in enumerate(zip(c.layers, xs)):
                child.check_inputs(x, f"{label}[{i}]")

    checked = any(child.input_check is not None for child in c.layers)
    return c.make(init_with_state, apply_with_state, forward_with_state, backward, parallel,
                  input_check if checked else None)


def fanout(n: int) -> Layer:
    r"""Copy the input to ``n`` branches (a repeat node); backward sums the ``n`` gradients.

    Args:
        n: the number of branches, the length of the output tuple.

    >>> import jax.numpy as jnp, funnet
    >>> len(funnet.fanout(3).apply((), jnp.ones(2)))
    3
    """
    n = check_int(n, "fanout: n", error=LayerError)
    name = f"fanout({n})"

    def init(key, input_shape):
        shape = tuple(input_shape) if isinstance(input_shape, list) else input_shape
        return (shape,) * n, ()

    def forward(params, x):
        expect_no_params(name, params)
        return (x,) * n, None

    def backward(params, _, dys):
        given = [dy for dy in (dys or ()) if dy is not None]
        return (), sum(given[1:], given[0]) if given else None  # dx = Σ_i dy_i

    return layer(init, forward, backward, name=name)


def _fan_in_init(name: str, combine: Callable) -> Callable:
    def init(key, input_shapes):
        if not isinstance(input_shapes, (tuple, list)) or not input_shapes or not all(
            isinstance(s, (tuple, list)) for s in input_shapes
        ):
            raise LayerError(f"{name}: expects a tuple of input shapes, got {input_shapes!r}")
        return combine([tuple(s) for s in input_shapes]), ()

    return init


def _fan_in_tuple(name: str, xs: Any) -> None:
    refuse_graph(name, xs, nodewise=False)
    if not isinstance(xs, (tuple, list)) or not xs:
        raise LayerError(f"{name}: expects a tuple of inputs, got {type(xs).__name__}")
    for i, x in enumerate(xs):  # fan-ins join arrays, not graphs (docs/graph.md)
        refuse_graph(name, x, f"input {i}", nodewise=False)


def _sum_shapes(shapes):
    if any(s[1:] != shapes[0][1:] or len(s) != len(shapes[0]) for s in shapes):
        raise LayerError(f"FanInSum: input shapes differ: {shapes}")
    return shapes[0]


def _fan_in_sum() -> Layer:
    name = "FanInSum"

    def forward(params, xs):
        expect_no_params(name, params)
        _fan_in_tuple(name, xs)
        if len({shape_of(x) for x in xs}) != 1:
            raise LayerError(f"{name}: input shapes differ: {[shape_of(x) for x in xs]}")
        return sum(xs[1:], xs[0]), len(xs)  # add node

    def backward(params, n, dy):
        return (), (dy,) * n  # add node: dx_i = dy (None stays None)

    return layer(_fan_in_init(name, _sum_shapes), forward, backward, name=name)


#: Sum a tuple of inputs of one shape (the join of a residual block).
FanInSum = _fan_in_sum()


def FanInConcat(axis: int = -1) -> Layer:
    r"""Concatenate a tuple of inputs along ``axis``; backward slices ``dy`` back apart.

    Args:
        axis: the axis to concatenate along (of the inputs, batch axis included); ``-1``, the
            default, is the feature axis.

    >>> import jax.numpy as jnp, funnet
    >>> funnet.FanInConcat().apply((), (jnp.ones((1, 2)), jnp.ones((1, 3)))).shape
    (1, 5)
    """
    name = "FanInConcat" if axis == -1 else f"FanInConcat(axis={axis})"

    def combine(shapes):
        rank = len(shapes[0])
        if not -rank <= axis < rank:
            raise LayerError(f"{name}: axis {axis} is out of range for inputs of rank {rank} "
                             f"(shapes {shapes})")
        ax = axis % rank
        if any(len(s) != rank or s[:ax] + s[ax + 1 :] != shapes[0][:ax] + shapes[0][ax + 1 :]
               for s in shapes):
            raise LayerError(f"{name}: input shapes {shapes} differ off axis {axis}")
        sizes = [s[ax] for s in shapes]
        size = -1 if any(d < 0 for d in sizes) else sum(sizes)  # -1: unknown (batch) size
        return shapes[0][:ax] + (size,) + shapes[0][ax + 1 :]

    def forward(params, xs):
        expect_no_params(name, params)
        _fan_in_tuple(name, xs)
        return jnp.concatenate(xs, axis=axis), tuple(jnp.shape(x)[axis] for x in xs)

    def backward(params, sizes, dy):
        if dy is None:
            return (), (None,) * len(sizes)
        cuts = np.cumsum(sizes)[:-1].tolist()
        return (), tuple(jnp.split(dy, cuts, axis=axis))

    return layer(_fan_in_init(name, combine), forward, backward, name=name)
