r"""Gradient truth: the same gradient by independent witnesses, and where it goes wrong.

A model's gradient (docs/math.md §7) can be computed by

* ``"hand"``: the hand-derived δ-recursion, :func:`funnet.backprop.value_and_grad`;
* ``"formula"``: ``jax.grad`` of the model's forward *formulas*, every activation through
  its plain ``f`` (the ``"formula"`` wiring): it shares no hand-written derivative with
  anything it checks, so it is the reference;
* ``"reverse"``: ``jax.grad`` through the hand-wired ``custom_vjp`` rules;
* ``"forward"``: forward mode, :func:`forward_grad`, on :func:`funnet.forward_twin`;
* ``"numerical"``: central differences, kink-aware: coordinates whose stencil reaches
  a kink of an activation are excluded and reported.

:func:`check_model` compares them leaf by leaf (:func:`compare`, tolerances of
:func:`default_tolerances`) and adds the witnesses of :mod:`funnet.check.witnesses`:
every layer's hand backward against ``jax.vjp`` of its formula at the inputs the forward
pass gave it (naming the first wrong layer by its path), the δ-trace, and on request the
Taylor-remainder slope, a sensitivity self-test and batch consistency. One report object,
:class:`CheckResult`, prints as tables and converts to JSON. :func:`check_layer` checks one
layer alone.

>>> import jax, jax.numpy as jnp, funnet
>>> from funnet.check import check_model
>>> net = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(2))
>>> _, params = net.init(jax.random.PRNGKey(0), (-1, 4))
>>> x, y = jnp.linspace(-2.0, 2.0, 20).reshape(5, 4), jnp.array([0, 1, 0, 1, 1])
>>> result = check_model(net, params, x, y, funnet.softmax_cross_entropy)
>>> result.ok, [f"{m} vs {r}" for m, r in result.reports]
(True, ['hand vs formula', 'reverse vs formula', 'forward vs formula', 'numerical vs formula'])
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
from .visits import walk as walk
from .witnesses import taylor_slope as taylor_slope

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
    "taylor_slope",
    "walk",
]

