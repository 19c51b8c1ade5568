r"""Elementwise layers: activations (docs/math.md §2), PReLU, Softmax and LogSoftmax.

Backward rules (``dy = ∂L/∂y``)::

    activation   y = f(x)             dx = dy ⊙ f'(x)
    PRelu        y = prelu(x, γ)      dγ = Σ_rows dy ⊙ (0 if x > 0 else x),  dx = dy ⊙ ∂f/∂x
    Softmax      y = softmax(x)       dx = y ⊙ (dy - Σ_k dy_k y_k)
    LogSoftmax   y = x - logsumexp(x) dx = dy - softmax(x) Σ_k dy_k
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from .. import activations as act
from .._validate import LayerError, check_input_shape, expect_params, expect_rank, shape_of
from ..contract import Layer, layer
from ._paramless import paramless

__all__ = [
    "ActivationLayer",
    "Elu",
    "Exp",
    "Gelu",
    "HardLogistic",
    "HardTanh",
    "LeakyRelu",
    "LogSoftmax",
    "Logistic",
    "PRelu",
    "Relu",
    "Selu",
    "Sigmoid",
    "Silu",
    "Softmax",
    "Softplus",
    "Step",
    "Swish",
    "Tanh",
]


def ActivationLayer(activation: act.Activation, **hyper: Any) -> Layer:
    r"""Layer applying an elementwise :class:`funnet.Activation`; no params.

    Backward: ``dx = dy ⊙ f'(x)`` with the activation's hand-derived ``f'``.
    The layer is configurable: ``Elu(alpha=0.5)``, ``LeakyRelu(slope=0.1)``,
    ``Gelu(approximate=True)``. Its twins
    (:meth:`funnet.Layer.rewired`) apply ``activation.jvp_twin`` / ``activation.formula``.

    Args:
        activation: the :class:`funnet.Activation` (``funnet.relu``, one of your own).
        **hyper: its keyword hyperparameters (``slope=0.1``), fixed for this layer.

    >>> import jax.numpy as jnp, funnet
    >>> init, apply = funnet.Relu
    >>> apply((), jnp.array([-1.0, 2.0])).tolist()
    [0.0, 2.0]
    """
    h = dict(activation._hyper(hyper))  # validated now, not at the first call
    # options at their defaults are left out of the name: LeakyRelu(slope=0.01) is LeakyRelu
    opts = ", ".join(f"{k}={v}" for k, v in sorted(hyper.items())
                     if v != activation.defaults[k])
    name = "".join(p.capitalize() for p in activation.name.split("_")) + (f"({opts})" if opts else "")
    return paramless(
        name,
        lambda x: activation(x, **hyper),
        lambda x, y, dy: dy * activation.df(x, y, **h),  # dx = dy ⊙ f'(z)
        min_rank=0,
        configure=lambda **kw: ActivationLayer(activation, **{**hyper, **kw}),
        rewire=lambda wiring: ActivationLayer(activation.rewired(wiring), **hyper),
        kinks=activation.kinks,
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
#: GELU, exact erf form; ``Gelu(approximate=True)`` for the tanh form (jax.nn.gelu's default).
Gelu = ActivationLayer(act.gelu)
Selu = ActivationLayer(act.selu)
Swish = ActivationLayer(act.swish)
Silu = Swish
Exp = ActivationLayer(act.exp)


def _prelu_layer(slope_init: float = 0.25, *, fn: Any = act.prelu) -> Layer:
    name = "PRelu" if slope_init == 0.25 else f"PRelu(slope_init={slope_init})"

    def init(key, input_shape):
        shape = check_input_shape(name, input_shape, features=True)
        return shape, {"slope": jnp.full((shape[-1],), slope_init, jnp.result_type(float))}

    def check(params, x):
        expect_params(name, params, ("slope",))
        expect_rank(name, x, 1)
        if shape_of(params["slope"]) != (shape_of(x)[-1],):
            raise LayerError(
                f"{name}: input has shape {shape_of(x)} but slope has shape "
                f"{shape_of(params['slope'])} (one slope per neuron of the last axis)"
            )

    def apply(params, x):
        check(params, x)
        return fn(x, params["slope"])

    def forward(params, x):
        return apply(params, x), x

    def backward(params, x, dy):
        slope = params["slope"]
        dslope = (dy * act.prelu.slope_derivative(x)).reshape(-1, x.shape[-1]).sum(axis=0)
        return ({"slope": dslope.astype(slope.dtype)},
                (dy * act.prelu.derivative(x, slope)).astype(x.dtype))

    return layer(init, forward, backward, apply=apply, name=name,
                 configure=lambda slope_init=0.25: _prelu_layer(slope_init, fn=fn),
                 rewire=lambda wiring: _prelu_layer(slope_init, fn=fn.rewired(wiring)),
                 kinks=fn.kinks)


#: PReLU with a learnable slope per neuron (init 0.25, not weight-decayed);
#: ``PRelu(slope_init=0.1)`` for another initial slope.
PRelu = _prelu_layer()


Softmax = paramless(
    "Softmax",
    lambda x: jax.nn.softmax(x, axis=-1),  # y_k = exp(s_k) / Σ_j exp(s_j)
    lambda x, y, dy: y * (dy - jnp.sum(dy * y, axis=-1, keepdims=True)),  # dx = y ⊙ (dy - ⟨dy, y⟩)
)

LogSoftmax = paramless(
    "LogSoftmax",
    lambda x: jax.nn.log_softmax(x, axis=-1),  # y_k = s_k - log Σ_j exp(s_j)
    lambda x, y, dy: dy - jnp.exp(y) * jnp.sum(dy, axis=-1, keepdims=True),  # dx = dy - p Σ dy
)
