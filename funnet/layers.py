r"""Layers: stax-style ``(init, apply)`` pairs that also carry a hand-derived backward.

Every constructor returns a :class:`funnet.Layer`::

    init, apply = funnet.Dense(4)
    out_shape, params = init(key, (-1, 2))        # params = {"W": [2, 4], "b": [4]}
    y = apply(params, x)                          # x: [batch, 2] -> y: [batch, 4]

Shapes use ``-1`` (or any int) for the batch axis. Params are plain pytrees with named
leaves; ``serial``/``parallel`` params are tuples with one entry per layer, ``()`` for
layers without params. Backward rules (math.md §5, row form, ``dy = ∂L/∂y``)::

    Dense        y = x W + b          dW = xᵀ dy,  db = Σ_rows dy,  dx = dy Wᵀ
    activation   y = f(x)             dx = dy ⊙ f'(x)
    PRelu        y = prelu(x, γ)      dγ = Σ_rows dy ⊙ (0 if x > 0 else x)
    Softmax      y = softmax(x)       dx = y ⊙ (dy - Σ_k dy_k y_k)
    LogSoftmax   y = x - logsumexp(x) dx = dy - softmax(x) Σ_k dy_k
    Flatten      reshape              dx = reshape(dy)
    Dropout      y = m ⊙ x / (1 - p)  dx = m ⊙ dy / (1 - p)
    fanout(n)    (x, …, x)            dx = Σ_i dy_i              (branch node)
    FanInSum     Σ_i x_i              dx_i = dy                  (add node)
    FanInConcat  concat(x_i)          dx_i = the slice of dy
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import activations as act
from ._types import Layer, LayerError, NoBackwardRuleError, ParamsError, PyTree, as_layer

__all__ = [
    "ActivationLayer",
    "Dense",
    "Dropout",
    "Elu",
    "FanInConcat",
    "FanInSum",
    "Flatten",
    "HardLogistic",
    "HardTanh",
    "LeakyRelu",
    "LogSoftmax",
    "Logistic",
    "PRelu",
    "Relu",
    "Sigmoid",
    "Softmax",
    "Softplus",
    "Step",
    "Tanh",
    "fanout",
    "parallel",
    "param_count",
    "serial",
    "summary",
]

# ---------------------------------------------------------------------------------------
# Checks shared by the layers: each names the layer and the shapes involved.


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x))


def _check_input_shape(name: str, input_shape: Any, *, min_rank: int = 1,
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


def _expect_params(name: str, params: Any, keys: Sequence[str]) -> None:
    if not isinstance(params, dict) or set(params) != set(keys):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ParamsError(f"{name}: params must be a dict with keys {sorted(keys)}, got {got}")


def _expect_no_params(name: str, params: Any) -> None:
    if jax.tree_util.tree_leaves(params):
        raise ParamsError(
            f"{name} has no params (expects ()), got {jax.tree_util.tree_structure(params)}"
        )


def _expect_rank(name: str, x: Any, min_rank: int) -> None:
    if np.ndim(x) < min_rank:
        raise LayerError(f"{name}: input of shape {_shape(x)} has rank {np.ndim(x)}, needs ≥ {min_rank}")


# ---------------------------------------------------------------------------------------
# Dense.


_GLOROT_NORMAL = jax.nn.initializers.glorot_normal()


def Dense(
    out_dim: int,
    *,
    W_init: Callable[..., jax.Array] = _GLOROT_NORMAL,
    b_init: Callable[..., jax.Array] = jax.nn.initializers.zeros,
) -> Layer:
    r"""Fully connected layer ``y = x W + b`` (math.md §3, row form).

    Args:
      out_dim: number of output neurons ``M_l``.
      W_init: initializer for ``W`` of shape ``[in_dim, out_dim]``; default Glorot normal
        (``jax.nn.initializers.glorot_normal()``, as stax).
      b_init: initializer for ``b`` of shape ``[out_dim]``; default zeros.

    Shapes: ``x [..., in_dim] -> y [..., out_dim]``; params ``{"W", "b"}``, with
    ``in_dim * out_dim + out_dim`` entries. Backward: ``dW = xᵀ dy``, ``db = Σ_rows dy``,
    ``dx = dy Wᵀ``.

    >>> import jax, funnet
    >>> init, apply = funnet.Dense(4)
    >>> out_shape, params = init(jax.random.PRNGKey(0), (-1, 2))
    >>> out_shape, params["W"].shape, params["b"].shape
    ((-1, 4), (2, 4), (4,))
    """
    if not isinstance(out_dim, (int, np.integer)) or isinstance(out_dim, bool) or out_dim <= 0:
        raise LayerError(f"Dense: out_dim must be a positive int, got {out_dim!r}")
    name = f"Dense({out_dim})"

    def init(key, input_shape):
        shape = _check_input_shape(name, input_shape, features=True)
        k1, k2 = jax.random.split(key)
        return shape[:-1] + (out_dim,), {
            "W": W_init(k1, (shape[-1], out_dim)),
            "b": b_init(k2, (out_dim,)),
        }

    def check(params, x):
        _expect_params(name, params, ("W", "b"))
        _expect_rank(name, x, 1)
        W, b = params["W"], params["b"]
        if np.ndim(W) != 2 or _shape(b) != (_shape(W)[1],):
            raise ParamsError(f"{name}: W {_shape(W)} and b {_shape(b)} do not fit together")
        if _shape(x)[-1] != _shape(W)[0]:
            raise LayerError(
                f"{name}: input has shape {_shape(x)}, trailing dim {_shape(x)[-1]}, "
                f"but W has shape {_shape(W)} (expects trailing dim {_shape(W)[0]})"
            )

    def apply(params, x, *, key=None):
        check(params, x)
        z = x @ params["W"]
        # explicit bias broadcast (no implicit rank promotion): z = a W + b
        return z + params["b"].reshape((1,) * (z.ndim - 1) + (-1,))

    def forward(params, x, *, key=None):
        return apply(params, x), x

    def backward(params, x, dy):
        x2 = x.reshape(-1, x.shape[-1])
        dy2 = dy.reshape(-1, dy.shape[-1])
        W, b = params["W"], params["b"]
        return {  # each gradient in the dtype of what it differentiates, as jax.grad's
            "W": (x2.T @ dy2).astype(W.dtype),  # dW = aᵀ δ
            "b": dy2.sum(axis=0).astype(b.dtype),  # db = Σ_rows δ
        }, (dy @ W.T).astype(x.dtype)  # dx = δ Wᵀ

    return Layer(init, apply, forward, backward, name=name)


# ---------------------------------------------------------------------------------------
# Elementwise activations.


def _identity_init(name: str):
    def init(key, input_shape):
        return _check_input_shape(name, input_shape, min_rank=0), ()

    return init


def _paramless(name: str, f, res_backward, *, min_rank: int = 1, init=None,
               configure=None) -> Layer:
    """A layer without params: ``y = f(x)``; ``res_backward(x, y, dy) -> dx``."""

    def apply(params, x, *, key=None):
        _expect_no_params(name, params)
        _expect_rank(name, x, min_rank)
        return f(x)

    def forward(params, x, *, key=None):
        y = apply(params, x)
        return y, (x, y)

    def backward(params, res, dy):
        x, y = res
        return (), res_backward(x, y, dy)

    def default_init(key, input_shape):
        return _check_input_shape(name, input_shape, min_rank=min_rank), ()

    return Layer(init or default_init, apply, forward, backward, name=name, configure=configure)


def ActivationLayer(activation: act.Activation, **hyper: Any) -> Layer:
    r"""Layer applying an elementwise :class:`funnet.Activation`; no params.

    Backward: ``dx = dy ⊙ f'(x)`` with the activation's hand-derived ``f'``.
    The layer is configurable: ``Elu(alpha=0.5)``, ``LeakyRelu(slope=0.1)``.

    >>> import jax.numpy as jnp, funnet
    >>> init, apply = funnet.Relu
    >>> apply((), jnp.array([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """
    h = dict(activation._hyper(hyper))  # validated now, not at the first call
    opts = ", ".join(f"{k}={v}" for k, v in sorted(hyper.items()))
    name = "".join(p.capitalize() for p in activation.name.split("_")) + (f"({opts})" if opts else "")
    return _paramless(
        name,
        lambda x: activation(x, **hyper),
        lambda x, y, dy: dy * activation.df(x, y, **h),  # dx = dy ⊙ f'(z)
        min_rank=0,
        configure=lambda **kw: ActivationLayer(activation, **{**hyper, **kw}),
    )


Logistic = ActivationLayer(act.logistic)
Sigmoid = Logistic
Tanh = ActivationLayer(act.tanh)
HardLogistic = ActivationLayer(act.hard_logistic)
HardTanh = ActivationLayer(act.hard_tanh)
Relu = ActivationLayer(act.relu)
LeakyRelu = ActivationLayer(act.leaky_relu)
Elu = ActivationLayer(act.elu)
Softplus = ActivationLayer(act.softplus)
Step = ActivationLayer(act.step)


def _prelu_layer(slope_init: float = 0.25) -> Layer:
    name = "PRelu" if slope_init == 0.25 else f"PRelu(slope_init={slope_init})"

    def init(key, input_shape):
        shape = _check_input_shape(name, input_shape, features=True)
        return shape, {"slope": jnp.full((shape[-1],), slope_init, jnp.result_type(float))}

    def check(params, x):
        _expect_params(name, params, ("slope",))
        _expect_rank(name, x, 1)
        if _shape(params["slope"]) != (_shape(x)[-1],):
            raise LayerError(
                f"{name}: input has shape {_shape(x)} but slope has shape "
                f"{_shape(params['slope'])} (one slope per neuron of the last axis)"
            )

    def apply(params, x, *, key=None):
        check(params, x)
        return act.prelu(x, params["slope"])

    def forward(params, x, *, key=None):
        return apply(params, x), x

    def backward(params, x, dy):
        slope = params["slope"]
        dslope = (dy * act.prelu.slope_derivative(x)).reshape(-1, x.shape[-1]).sum(axis=0)
        return ({"slope": dslope.astype(slope.dtype)},
                (dy * act.prelu.derivative(x, slope)).astype(x.dtype))

    return Layer(init, apply, forward, backward, name=name, configure=_prelu_layer)


PRelu = _prelu_layer()

# ---------------------------------------------------------------------------------------
# Softmax, LogSoftmax, Flatten, Dropout.


Softmax = _paramless(
    "Softmax",
    lambda x: jax.nn.softmax(x, axis=-1),  # y_k = exp(s_k) / Σ_j exp(s_j)
    lambda x, y, dy: y * (dy - jnp.sum(dy * y, axis=-1, keepdims=True)),  # dx = y ⊙ (dy - ⟨dy, y⟩)
)

LogSoftmax = _paramless(
    "LogSoftmax",
    lambda x: jax.nn.log_softmax(x, axis=-1),  # y_k = s_k - log Σ_j exp(s_j)
    lambda x, y, dy: dy - jnp.exp(y) * jnp.sum(dy, axis=-1, keepdims=True),  # dx = dy - p Σ dy
)


def _flatten_init(key, input_shape):
    shape = _check_input_shape("Flatten", input_shape, min_rank=1)
    return (shape[0], math.prod(shape[1:])), ()


Flatten = _paramless(
    "Flatten",
    lambda x: x.reshape(x.shape[0], -1),  # [batch, d1, d2, …] -> [batch, d1·d2·…]
    lambda x, y, dy: dy.reshape(x.shape),
    init=_flatten_init,
)


def Dropout(rate: float) -> Layer:
    r"""Inverted dropout: drop each unit with probability ``rate``, scale the rest by ``1/(1-rate)``.

    ``apply(params, x, key=key)`` samples the mask ``m ~ Bernoulli(1 - rate)`` from ``key``;
    without a key (evaluation) the layer is the identity. Backward: ``dx = m ⊙ dy / (1 - rate)``.

    >>> import jax, jax.numpy as jnp, funnet
    >>> init, apply = funnet.Dropout(0.5)
    >>> apply((), jnp.ones(4)).tolist()  # no key: identity
    [1.0, 1.0, 1.0, 1.0]
    """
    if not 0.0 <= float(rate) < 1.0:
        raise LayerError(f"Dropout: rate is the drop probability and must be in [0, 1), got {rate}")
    name = f"Dropout({rate})"
    keep = 1.0 - float(rate)

    def forward(params, x, *, key=None):
        _expect_no_params(name, params)
        if key is None or rate == 0:
            return x, None
        mask = jax.random.bernoulli(key, keep, jnp.shape(x))
        return jnp.where(mask, x / keep, jnp.zeros_like(x)), mask  # y = m ⊙ x / (1 - p)

    def apply(params, x, *, key=None):
        return forward(params, x, key=key)[0]

    def backward(params, mask, dy):
        if mask is None:
            return (), dy
        return (), jnp.where(mask, dy / keep, jnp.zeros_like(dy))  # dx = m ⊙ dy / (1 - p)

    return Layer(_identity_init(name), apply, forward, backward, name=name)


# ---------------------------------------------------------------------------------------
# Composition: serial, parallel, fanout, FanInSum, FanInConcat.


def _at(where: str, call, *args, **kwargs):
    """Run ``call``; prefix layer errors with where they happened (``serial[2] › …``)."""
    try:
        return call(*args, **kwargs)
    except (LayerError, ParamsError, NoBackwardRuleError) as e:
        raise type(e)(f"{where} › {e}") from None


def _split_key(key: jax.Array | None, n: int):
    return list(jax.random.split(key, n)) if key is not None else [None] * n


def _expect_sequence(name: str, params: Any, n: int, what: str = "params") -> None:
    if not isinstance(params, (tuple, list)) or len(params) != n:
        got = f"{type(params).__name__} of length {len(params)}" if isinstance(
            params, (tuple, list)
        ) else type(params).__name__
        raise ParamsError(f"{name}: {what} must be a tuple with one entry per layer ({n}), got {got}")


def _backward_of(layer: Layer, where: str):
    if layer.backward is None or layer.forward is None:
        raise NoBackwardRuleError(
            f"{where} {layer.name} has no hand-derived backward rule; build it with "
            "funnet.Layer(init, apply, forward, backward) or use jax.grad"
        )
    return layer.backward


def serial(*layers: Any) -> Layer:
    r"""Compose layers in sequence: ``a(l) = layer_l(a(l-1))``.

    Params are a tuple, one entry per layer. Backward is the δ-recursion of math.md §5:
    the layers' backward rules chained in reverse, each ``dy`` being the error term that
    reaches that layer's output.

    >>> import jax, funnet
    >>> net = funnet.serial(funnet.Dense(4), funnet.Logistic, funnet.Dense(1))
    >>> _, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    >>> funnet.param_count(params)  # 2·4 + 4 + 4·1 + 1
    17
    """
    layers = tuple(as_layer(layer) for layer in layers)
    n = len(layers)
    name = f"serial({', '.join(layer.name for layer in layers)})"

    def init(key, input_shape):
        params = []
        for i, (layer, k) in enumerate(zip(layers, jax.random.split(key, max(n, 1)))):
            input_shape, p = _at(f"serial[{i}]", layer.init, k, input_shape)
            params.append(p)
        return input_shape, tuple(params)

    def apply(params, x, *, key=None):
        _expect_sequence("serial", params, n)
        for i, (layer, p, k) in enumerate(zip(layers, params, _split_key(key, n))):
            x = _at(f"serial[{i}]", layer.apply, p, x, key=k)
        return x

    def forward(params, x, *, key=None):
        _expect_sequence("serial", params, n)
        residuals = []
        for i, (layer, p, k) in enumerate(zip(layers, params, _split_key(key, n))):
            if layer.forward is None:
                _backward_of(layer, f"serial[{i}]")
            x, r = _at(f"serial[{i}]", layer.forward, p, x, key=k)
            residuals.append(r)
        return x, tuple(residuals)

    def backward(params, residuals, dy):
        dparams, dx, _ = chain_backward(layers, params, residuals, dy)
        return dparams, dx

    return Layer(init, apply, forward, backward, name=name, children=layers, kind="serial")


def chain_backward(layers: Sequence[Layer], params: PyTree, residuals: Any, dy: Any):
    """The δ-recursion over ``serial`` layers, recording what reaches each layer's output.

    Returns ``(dparams, dx, deltas)``; ``deltas[l] = ∂L/∂(output of layer l)``, which for a
    ``Dense`` layer is its error term ``δ(l) = ∂L/∂z(l)``.
    """
    n = len(layers)
    grads, deltas = [None] * n, [None] * n
    for i in reversed(range(n)):
        deltas[i] = dy
        grads[i], dy = _backward_of(layers[i], f"serial[{i}]")(params[i], residuals[i], dy)
    return tuple(grads), dy, tuple(deltas)


def fanout(n: int) -> Layer:
    r"""Copy the input to ``n`` branches (a repeat node); backward sums the ``n`` gradients.

    >>> import jax.numpy as jnp, funnet
    >>> len(funnet.fanout(3).apply((), jnp.ones(2)))
    3
    """
    if not isinstance(n, int) or n < 1:
        raise LayerError(f"fanout: n must be a positive int, got {n!r}")
    name = f"fanout({n})"

    def init(key, input_shape):
        return (tuple(input_shape),) * n, ()

    def apply(params, x, *, key=None):
        _expect_no_params(name, params)
        return (x,) * n

    def forward(params, x, *, key=None):
        return apply(params, x), None

    def backward(params, _, dys):
        return (), sum(dys[1:], dys[0])  # dx = Σ_i dy_i

    return Layer(init, apply, forward, backward, name=name)


def parallel(*layers: Any) -> Layer:
    r"""Apply layer ``i`` to input ``i`` of a tuple; params are a tuple, one per layer.

    >>> import jax, jax.numpy as jnp, funnet
    >>> net = funnet.serial(funnet.fanout(2), funnet.parallel(funnet.Dense(3), funnet.Relu),
    ...                     funnet.FanInConcat())
    >>> net.init(jax.random.PRNGKey(0), (-1, 2))[0]
    (-1, 5)
    """
    layers = tuple(as_layer(layer) for layer in layers)
    n = len(layers)
    name = f"parallel({', '.join(layer.name for layer in layers)})"

    def check_inputs(xs, what="input"):
        if not isinstance(xs, (tuple, list)) or len(xs) != n:
            got = f"{len(xs)} inputs" if isinstance(xs, (tuple, list)) else f"one {what}"
            raise LayerError(f"{name}: expects a tuple of {n} inputs, got {got}")

    def init(key, input_shapes):
        if not isinstance(input_shapes, (tuple, list)) or len(input_shapes) != n or not all(
            isinstance(s, (tuple, list)) for s in input_shapes
        ):
            raise LayerError(f"{name}: expects {n} input shapes, got {input_shapes!r}")
        outs = [
            _at(f"parallel[{i}]", layer.init, k, s)
            for i, (layer, k, s) in enumerate(zip(layers, jax.random.split(key, n), input_shapes))
        ]
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

    def apply(params, xs, *, key=None):
        _expect_sequence("parallel", params, n)
        check_inputs(xs)
        return tuple(
            _at(f"parallel[{i}]", layer.apply, p, x, key=k)
            for i, (layer, p, x, k) in enumerate(zip(layers, params, xs, _split_key(key, n)))
        )

    def forward(params, xs, *, key=None):
        _expect_sequence("parallel", params, n)
        check_inputs(xs)
        outs = []
        for i, (layer, p, x, k) in enumerate(zip(layers, params, xs, _split_key(key, n))):
            if layer.forward is None:
                _backward_of(layer, f"parallel[{i}]")
            outs.append(_at(f"parallel[{i}]", layer.forward, p, x, key=k))
        return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

    def backward(params, residuals, dys):
        out = [
            _backward_of(layer, f"parallel[{i}]")(p, r, dy)
            for i, (layer, p, r, dy) in enumerate(zip(layers, params, residuals, dys))
        ]
        return tuple(o[0] for o in out), tuple(o[1] for o in out)

    return Layer(init, apply, forward, backward, name=name, children=layers, kind="parallel")


def _fan_in_init(name: str, combine):
    def init(key, input_shapes):
        if not isinstance(input_shapes, (tuple, list)) or not input_shapes or not all(
            isinstance(s, (tuple, list)) for s in input_shapes
        ):
            raise LayerError(f"{name}: expects a tuple of input shapes, got {input_shapes!r}")
        return combine([tuple(s) for s in input_shapes]), ()

    return init


def _sum_shapes(shapes):
    if any(s[1:] != shapes[0][1:] or len(s) != len(shapes[0]) for s in shapes):
        raise LayerError(f"FanInSum: input shapes differ: {shapes}")
    return shapes[0]


def _fan_in_tuple(name: str, xs) -> None:
    if not isinstance(xs, (tuple, list)) or not xs:
        raise LayerError(f"{name}: expects a tuple of inputs, got {type(xs).__name__}")


def _fan_in_sum() -> Layer:
    name = "FanInSum"

    def apply(params, xs, *, key=None):
        _expect_no_params(name, params)
        _fan_in_tuple(name, xs)
        if len({_shape(x) for x in xs}) != 1:
            raise LayerError(f"{name}: input shapes differ: {[_shape(x) for x in xs]}")
        return sum(xs[1:], xs[0])  # add node

    def forward(params, xs, *, key=None):
        return apply(params, xs), len(xs)

    def backward(params, n, dy):
        return (), (dy,) * n  # add node: dx_i = dy

    return Layer(_fan_in_init(name, _sum_shapes), apply, forward, backward, name=name)


FanInSum = _fan_in_sum()


def FanInConcat(axis: int = -1) -> Layer:
    r"""Concatenate a tuple of inputs along ``axis``; backward slices ``dy`` back apart.

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
        size = -1 if any(n < 0 for n in sizes) else sum(sizes)  # -1: unknown (batch) size
        return shapes[0][:ax] + (size,) + shapes[0][ax + 1 :]

    def apply(params, xs, *, key=None):
        _expect_no_params(name, params)
        _fan_in_tuple(name, xs)
        return jnp.concatenate(xs, axis=axis)

    def forward(params, xs, *, key=None):
        return apply(params, xs), tuple(jnp.shape(x)[axis] for x in xs)

    def backward(params, sizes, dy):
        cuts = np.cumsum(sizes)[:-1].tolist()
        return (), tuple(jnp.split(dy, cuts, axis=axis))

    return Layer(_fan_in_init(name, combine), apply, forward, backward, name=name)


# ---------------------------------------------------------------------------------------
# Inspection.


def param_count(params: PyTree) -> int:
    r"""Number of scalars in a params pytree: ``Σ_l M_{l-1} M_l + M_l`` for an MLP.

    >>> import jax, funnet
    >>> _, p = funnet.serial(funnet.Dense(4), funnet.Tanh, funnet.Dense(1)).init(
    ...     jax.random.PRNGKey(0), (-1, 2))
    >>> funnet.param_count(p)
    17
    """
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def summary(model: Layer, input_shape: Sequence[int], *, print_fn=print) -> str:
    r"""Print (and return) a per-layer table of output shapes and parameter counts.

    Computed from ``init`` alone with :func:`jax.eval_shape`: nothing is allocated.

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
    for i, layer in enumerate(layers):
        box = {}

        def init_params(k, layer=layer, s=shape, box=box, where=f"serial[{i}]"):
            box["shape"], p = _at(where, layer.init, k, s)
            return p

        p = jax.eval_shape(init_params, key)
        rows.append((str(i), layer.name, str(box["shape"]), str(param_count(p))))
        shape = box["shape"]
    total = sum(int(r[3]) for r in rows)
    rows.append(("", "total", "", str(total)))
    header = ("#", "layer", "output shape", "params")
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(4)]
    lines = [
        " ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in [header, *rows]
    ]
    text = "\n".join(lines)
    if print_fn is not None:
        print_fn(text)
    return text
