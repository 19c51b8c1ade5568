r"""Gradient checking: the same gradient four ways, compared leaf by leaf (docs/math.md §7).

A model's gradient can be computed by

* ``"hand"``: the hand-derived δ-recursion, :func:`funnet.backprop.value_and_grad`;
* ``"reverse"``: reverse-mode autodiff, :func:`jax.grad`;
* ``"forward"``: forward-mode autodiff, :func:`forward_grad` (one JVP per parameter);
* ``"numerical"``: central differences, :func:`numerical_grad`,
  ``∂f/∂θ_i ≈ (f(θ + Δe_i) - f(θ - Δe_i)) / (2Δ)``.

The first three are exact up to rounding; the fourth also has a truncation error ``O(Δ²)``.
:func:`check_model` computes the gradient by each, compares each against a reference with
:func:`compare`, and raises :class:`GradientCheckError` naming the first method pair and
params leaf that disagree beyond the tolerance.

The ``"forward"`` method runs on :func:`funnet.forward_twin` of the model: activations are
wired with ``jax.custom_vjp`` (their hand derivative), which JAX cannot push tangents
through; the twin wires them with ``jax.custom_jvp`` built from the *same* derivative. No
global switch is involved.

:func:`check_layer` checks one layer's hand ``backward`` against ``jax.vjp`` of its plain
formulas (activations through their formula ``f``, not their hand ``f'``).

>>> import jax, jax.numpy as jnp, funnet
>>> from funnet.check import check_model
>>> net = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(2))
>>> _, params = net.init(jax.random.PRNGKey(0), (-1, 4))
>>> x, y = jnp.linspace(-2.0, 2.0, 20).reshape(5, 4), jnp.array([0, 1, 0, 1, 1])
>>> result = check_model(net, params, x, y, funnet.softmax_cross_entropy)
>>> result.ok, [f"{m} vs {r}" for m, r in result.reports]
(True, ['hand vs reverse', 'forward vs reverse', 'numerical vs reverse'])
"""


from .comparison import GradientCheckError as GradientCheckError
from .comparison import Report as Report
from .comparison import Row as Row
from .comparison import compare as compare
from .comparison import default_tolerances as default_tolerances
from .gradients import default_eps as default_eps
from .gradients import forward_grad as forward_grad
from .gradients import numerical_grad as numerical_grad
from .layer import LayerCheck as LayerCheck
from .layer import check_layer as check_layer
from .model import METHODS as METHODS
from .model import CheckResult as CheckResult
from .model import check_model as check_model

__all__ = [
    "METHODS",
    "CheckResult",
    "GradientCheckError",
    "LayerCheck",
    "Report",
    "Row",
    "check_layer",
    "check_model",
    "compare",
    "default_eps",
    "default_tolerances",
    "forward_grad",
    "numerical_grad",
]

