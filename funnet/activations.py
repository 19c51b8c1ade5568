r"""Activations with hand-derived derivatives (docs/math.md §2).

Every activation is an :class:`Activation`: the forward formula ``f`` and the derivative
``f'`` written out by hand, side by side. Calling it evaluates ``f``; its reverse-mode
derivative (``jax.grad``, ``jax.vjp``) is the hand-written ``f'``, wired in with
:func:`jax.custom_vjp` — it never differentiates the forward formula.

One way to get ``f'(x)`` for any activation: ``act.derivative(x)``.

The formulas are written with strict ``where``s, so that JAX's autodiff of a formula (the
``formula`` wiring) also gives these values at the kinks: the formula witness holds at
kinks too.

Kink convention (one rule for all): at a kink the derivative is the value of the
``else`` branch of the table in docs/math.md §2, i.e. the inequalities are strict::

    relu'(0) = 0        leaky_relu'(0) = slope     prelu'(0) = slope
    hard_tanh'(±1) = 0  hard_logistic'(±2) = 0     elu'(0) = alpha
    step'(x) = 0 everywhere (step(0) = 0)         selu'(0) = λα

Each value is a valid subgradient, matches the table literally, and agrees with PyTorch for
``relu`` and ``hard_tanh`` (jax.nn gives 1 at ±1 for ``hard_tanh`` and 1 at 0 for
``leaky_relu``; its ``elu'(0) = α`` and ``selu'(0) = λα`` agree with ours).

Three wirings, one derivative. JAX refuses ``jax.jvp``/``jax.jacfwd`` on a custom_vjp
function (``jax.grad`` and ``jax.hessian`` — reverse-over-reverse and forward-over-reverse
— work, since the hand ``f'`` is then plain code). Each activation therefore has twins,
plain values that change nothing global:

* ``act`` itself: ``jax.custom_vjp`` with the hand ``f'`` (reverse mode);
* ``act.jvp_twin``: ``jax.custom_jvp`` built from the *same* ``f'`` (forward and reverse
  mode); :func:`funnet.forward_twin` rewires a whole model this way;
* ``act.formula``: the plain formula ``f`` with no custom rule, so that JAX differentiates
  ``f`` itself — the witness independent of the hand ``f'`` that ``funnet.check`` uses.

NaN in gives NaN out, for values and derivatives; ``±inf`` give the limits. Values and
derivatives are finite wherever the true ones are, in float32 and float64; only ``exp``
overflows, to ``inf`` exactly where ``e^x`` exceeds the dtype's largest number (as
``jnp.exp``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "define_activation",
    "elu",
    "exp",
    "gelu",
    "hard_logistic",
    "hard_tanh",
    "leaky_relu",
    "logistic",
    "prelu",
    "relu",
    "selu",
    "sigmoid",
    "silu",
    "softplus",
    "step",
    "swish",
    "tanh",
]

_JVP_HELP = (
    "activation {name} is wired with jax.custom_vjp (its hand derivative, for reverse mode), "
    "which JAX cannot differentiate in forward mode (jax.jvp, jax.jacfwd). Use its forward "
    "twin, built from the same hand-derived derivative: the activation's .jvp_twin (e.g. "
    "funnet.relu.jvp_twin), or funnet.forward_twin(model) for a model. A custom layer that "
    "calls an activation itself must say how to rewire it: funnet.layer(..., "
    "rewire=lambda wiring: MyLayer(act.rewired(wiring)))."
)


# ---------------------------------------------------------------------------------------
# Small helpers shared by the formulas.


def _keep_nan(x: jax.Array, v: jax.Array) -> jax.Array:
    """``v`` where ``x`` is a number, NaN where ``x`` is NaN (piecewise formulas drop NaN)."""
    return jnp.where(jnp.isnan(x), x, v)


def _piecewise(cond: jax.Array, a: ArrayLike, b: ArrayLike, like: jax.Array) -> jax.Array:
    """``a`` where ``cond`` else ``b``, in ``like``'s dtype, NaN where ``like`` is NaN."""
    dtype = like.dtype
    return _keep_nan(like, jnp.where(cond, jnp.asarray(a, dtype), jnp.asarray(b, dtype)))


def _sech2_from_exp(e: jax.Array) -> jax.Array:
    """``e / (1 + e)^2``: with ``e = exp(-|x|)`` this is ``σ(x)(1 - σ(x))`` without cancellation."""
    return e / jnp.square(1 + e)


def _as_float(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


# ---------------------------------------------------------------------------------------
# The Activation type: a forward formula and its hand derivative, two wirings.


class _Twins:
    """The two twins of an activation, by :meth:`rewired` (defined by each subclass)."""

    def rewired(self, wiring: str) -> Any:
        raise NotImplementedError

    @property
    def jvp_twin(self) -> Any:
        """The twin wired with ``jax.custom_jvp`` from the same hand ``f'``: forward mode works."""
        return self.rewired("jvp")

    @property
    def formula(self) -> Any:
        """The plain formula ``f``, no custom rule: JAX differentiates ``f`` itself."""
        return self.rewired("formula")


@dataclasses.dataclass(frozen=True, eq=False)
class Activation(_Twins):
    r"""An elementwise activation ``f`` with its hand-derived derivative ``f'``.

    Attributes:
      name: the name used in layer names and error messages.
      f: ``f(x, **hyper) -> y``, the forward formula.
      df: ``df(x, y, **hyper) -> f'(x)``, the hand-derived derivative; ``y = f(x)`` is
        passed so formulas such as ``σ' = σ(1 - σ)`` can reuse it.
      defaults: the keyword hyperparameters and their defaults (e.g. ``{"slope": 0.01}``;
        the default ``{}``: none); one whose default is ``True``/``False`` (``gelu``'s
        ``approximate``) takes only those.
      doc: the activation's own docstring, set as ``act.__doc__`` (``help(act)``, the API
        pages); the default ``""`` sets none.
      kinks: the points where ``f'`` jumps (``relu``: ``(0.0,)``; the default ``()``: smooth):
        a central difference whose stencil reaches one mixes two slopes, so
        :func:`funnet.check_model` excludes it.
      wiring: how ``f'`` reaches JAX: ``"vjp"`` (``jax.custom_vjp``, the default),
        ``"jvp"`` (``jax.custom_jvp``: :attr:`jvp_twin`) or ``"formula"`` (none: JAX
        differentiates ``f``; :attr:`formula`); any other raises ``ValueError``.

    ``act(x, **hyper)`` evaluates ``f``; ``act.derivative(x, **hyper)`` evaluates ``f'``.
    Hyperparameters are static Python numbers (``nondiff_argnums``).
    """

    name: str
    f: Callable[..., jax.Array]
    df: Callable[..., jax.Array]
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)
    doc: str = ""
    wiring: str = "vjp"
    kinks: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.wiring not in ("vjp", "jvp", "formula"):
            raise ValueError(f"{self.name}: wiring must be 'vjp', 'jvp' or 'formula', "
                             f"got {self.wiring!r}")
        object.__setattr__(self, "__doc__", self.doc or None)
        wire = {"vjp": _wire_vjp, "jvp": _wire_jvp, "formula": _wire_formula}[self.wiring]
        object.__setattr__(self, "_fn", wire(self.f, self.df))
        object.__setattr__(self, "_twins", {self.wiring: self})

    def rewired(self, wiring: str) -> Activation:
        """This activation with ``f'`` wired as ``wiring``; the same object for the same one."""
        if wiring not in self._twins:
            twin = dataclasses.replace(self, wiring=wiring)
            object.__setattr__(twin, "_twins", self._twins)  # one table for all the twins
            self._twins[wiring] = twin
        return self._twins[wiring]

    def _hyper(self, hyper: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise TypeError(
                f"{self.name}() got unexpected keyword(s) {sorted(unknown)}; "
                f"it takes {sorted(self.defaults) or 'none'}"
            )
        merged = {**self.defaults, **hyper}
        for k, v in merged.items():
            if isinstance(self.defaults[k], bool) and not isinstance(v, bool):
                raise TypeError(f"{self.name}(): hyperparameter {k}={v!r} must be True or False")
            if isinstance(v, jax.core.Tracer) or not isinstance(v, (int, float)):
                raise TypeError(
                    f"{self.name}(): hyperparameter {k}={v!r} must be a Python number "
                    "(use prelu for a learnable slope)"
                )
        return tuple(sorted(merged.items()))

    def __call__(self, x: ArrayLike, **hyper: Any) -> jax.Array:
        return _call(self.name, self.wiring, self._fn, _as_float(x), self._hyper(hyper))

    def derivative(self, x: ArrayLike, **hyper: Any) -> jax.Array:
        """The hand-derived ``f'(x)``, elementwise."""
        x = _as_float(x)
        h = dict(self._hyper(hyper))
        return self.df(x, self.f(x, **h), **h)

    def __repr__(self) -> str:
        suffix = "" if self.wiring == "vjp" else f" ({self.wiring})"
        return f"<activation {self.name}{suffix}>"


def _call(name: str, wiring: str, fn: Callable, *args: Any) -> jax.Array:
    """``fn(*args)``; a custom_vjp wiring's forward-mode refusal gets the hint to the twin."""
    if wiring != "vjp":
        return fn(*args)
    try:
        return fn(*args)
    except TypeError as e:
        if "forward-mode" in str(e):
            raise TypeError(_JVP_HELP.format(name=name)) from e
        raise


def _wire_formula(f: Callable[..., jax.Array], df: Callable[..., jax.Array]):
    def act(x, hyper):
        return f(x, **dict(hyper))  # no custom rule: autodiff differentiates f

    return act


def _wire_vjp(f: Callable[..., jax.Array], df: Callable[..., jax.Array]):
    @functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
    def act(x, hyper):
        return f(x, **dict(hyper))

    def fwd(x, hyper):
        y = f(x, **dict(hyper))
        # f'(x) is computed here, next to f, and kept as the only residual: one array
        # instead of (x, y), and the backward pass (a reverse scan in a recurrent layer)
        # only multiplies
        return y, df(x, y, **dict(hyper))

    def bwd(hyper, slope, dy):
        return (dy * slope,)  # dx = dy ⊙ f'(x)

    act.defvjp(fwd, bwd)
    return act


def _wire_jvp(f: Callable[..., jax.Array], df: Callable[..., jax.Array]):
    @functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
    def act(x, hyper):
        return f(x, **dict(hyper))

    @act.defjvp
    def act_jvp(hyper, primals, tangents):
        (x,), (t,) = primals, tangents
        y = f(x, **dict(hyper))
        return y, df(x, y, **dict(hyper)) * t  # dy = f'(x) · dx

    return act


def define_activation(
    name: str,
    f: Callable[..., jax.Array],
    df: Callable[..., jax.Array],
    *,
    kinks: tuple[float, ...] = (),
    **defaults: Any,
) -> Activation:
    r"""Make a new activation from its formula and its hand-derived derivative.

    Args:
      name: used in layer names and errors.
      f: ``f(x, **hyper)``.
      df: ``df(x, y, **hyper)`` with ``y = f(x)``; must not differentiate ``f``.
      kinks: the points where ``f'`` jumps (see :class:`Activation`).
      **defaults: keyword hyperparameters and their default values.

    The result works everywhere a built-in activation does: ``jax.grad`` uses ``df``
    (custom_vjp), ``act.jvp_twin`` is the custom_jvp twin for forward mode,
    :func:`funnet.layers.ActivationLayer` and :func:`funnet.check` accept it.

    Example: mish, ``f(x) = x tanh(s(x))`` with ``s(x) = softplus(x)``, so
    ``f'(x) = tanh(s) + x σ(x)(1 - tanh(s)²)`` (``s' = σ``).

    >>> import jax, jax.numpy as jnp, funnet
    >>> def dmish(x, y):
    ...     t = jnp.tanh(jax.nn.softplus(x))
    ...     return t + x * jax.nn.sigmoid(x) * (1 - t**2)
    >>> mish = funnet.define_activation(
    ...     "mish", lambda x: x * jnp.tanh(jax.nn.softplus(x)), dmish)
    >>> round(float(jax.grad(mish)(1.0)), 6)
    1.049036
    """
    return Activation(name=name, f=f, df=df, defaults=dict(defaults),
                      kinks=tuple(float(k) for k in kinks))


# ---------------------------------------------------------------------------------------
# The activations of docs/math.md §2: formula, derivative, wiring, side by side.


def _logistic(x):
    return jax.nn.sigmoid(x)  # σ(x) = 1 / (1 + exp(-x))


def _dlogistic(x, y):
    # σ'(x) = σ(x)(1 - σ(x)); evaluated as e/(1+e)² with e = exp(-|x|): exact in both tails.
    return _sech2_from_exp(jnp.exp(-jnp.abs(x)))


logistic = Activation("logistic", _logistic, _dlogistic, doc=r"""
Logistic sigmoid :math:`\sigma(x) = 1 / (1 + e^{-x})`;
:math:`\sigma'(x) = \sigma(x)(1 - \sigma(x)) \le 0.25`.

Smooth, no kink. :math:`\sigma'` is evaluated as :math:`e/(1+e)^2`, :math:`e = \exp(-|x|)`.

>>> float(logistic(0.0)), float(logistic.derivative(0.0))
(0.5, 0.25)
""")
sigmoid = logistic


def _tanh(x):
    return jnp.tanh(x)  # (e^x - e^-x) / (e^x + e^-x)


def _dtanh(x, y):
    # tanh'(x) = 1 - tanh(x)²; evaluated as 4e/(1+e)² with e = exp(-2|x|): no cancellation.
    return 4 * _sech2_from_exp(jnp.exp(-2 * jnp.abs(x)))


tanh = Activation("tanh", _tanh, _dtanh, doc=r"""
Hyperbolic tangent :math:`\tanh(x) = 2\sigma(2x) - 1`; :math:`\tanh'(x) = 1 - \tanh^2(x)`.

Smooth, no kink. :math:`\tanh'` is evaluated as :math:`4e/(1+e)^2`, :math:`e = \exp(-2|x|)`.

>>> float(tanh.derivative(0.0))
1.0
""")


def _clip_strict(x, lo, hi, y):
    """``y`` on ``lo < x < hi``, the constant ends outside; NaN stays NaN. Written with
    strict ``where``s so that autodiff of the formula gives the documented kink value 0 at
    ``lo`` and ``hi`` (``jnp.clip`` would give ½ there)."""
    ends = jnp.where(x >= hi, jnp.asarray(y(hi), x.dtype), jnp.asarray(y(lo), x.dtype))
    return _keep_nan(x, jnp.where((x > lo) & (x < hi), y(x), ends))


def _hard_logistic(x):
    return _clip_strict(x, -2.0, 2.0, lambda v: 0.25 * v + 0.5)  # max(min(0.25x + 0.5, 1), 0)


def _dhard_logistic(x, y):
    return _piecewise((x > -2) & (x < 2), 0.25, 0, x)  # 0.25 on (-2, 2), else 0


hard_logistic = Activation("hard_logistic", _hard_logistic, _dhard_logistic, kinks=(-2.0, 2.0), doc=r"""
Hard logistic :math:`\max(\min(0.25x + 0.5, 1), 0)` (σ's first-order Taylor at 0, clipped).

:math:`f'(x) = 0.25` on :math:`(-2, 2)`, else :math:`0`; kink convention: :math:`f'(\pm 2) = 0`.
Not ``jax.nn.hard_sigmoid`` (slope 1/6).

>>> hard_logistic.derivative(jnp.array([-2.0, 0.0, 2.0])).tolist()
[0.0, 0.25, 0.0]
""")


def _hard_tanh(x):
    return _clip_strict(x, -1.0, 1.0, lambda v: v)  # max(min(x, 1), -1)


def _dhard_tanh(x, y):
    return _piecewise((x > -1) & (x < 1), 1, 0, x)  # 1 on (-1, 1), else 0


hard_tanh = Activation("hard_tanh", _hard_tanh, _dhard_tanh, kinks=(-1.0, 1.0), doc=r"""
Hard tanh :math:`\max(\min(x, 1), -1)` (tanh's first-order Taylor at 0, clipped).

:math:`f'(x) = 1` on :math:`(-1, 1)`, else :math:`0`; kink convention: :math:`f'(\pm 1) = 0`.

>>> hard_tanh.derivative(jnp.array([-1.0, 0.5, 1.0])).tolist()
[0.0, 1.0, 0.0]
""")


def _relu(x):
    # max(0, x), as a strict where: autodiff of the formula gives relu'(0) = 0, the convention
    return _keep_nan(x, jnp.where(x > 0, x, jnp.zeros_like(x)))


def _drelu(x, y):
    return _piecewise(x > 0, 1, 0, x)  # 1 if x > 0 else 0


relu = Activation("relu", _relu, _drelu, kinks=(0.0,), doc=r"""
Rectified linear unit :math:`\max(0, x)`; :math:`f'(x) = 1` if :math:`x > 0`, else :math:`0`;
:math:`f'(0) = 0`.

>>> relu.derivative(jnp.array([-1.0, 0.0, 2.0])).tolist()
[0.0, 0.0, 1.0]
""")


def _leaky_relu(x, slope):
    neg = slope * x if slope else jnp.zeros_like(x)  # γx (0 for γ = 0, also at x = -inf)
    return _keep_nan(x, jnp.where(x > 0, x, neg))  # x if x > 0 else γx


def _dleaky_relu(x, y, slope):
    return _piecewise(x > 0, 1, slope, x)  # 1 if x > 0 else γ


leaky_relu = Activation("leaky_relu", _leaky_relu, _dleaky_relu, {"slope": 0.01}, kinks=(0.0,), doc=r"""
Leaky ReLU :math:`x` if :math:`x > 0`, else :math:`\gamma x` (``slope=γ``, default 0.01).

:math:`f'(x) = 1` if :math:`x > 0`, else :math:`\gamma`; kink convention: :math:`f'(0) = \gamma`.

>>> leaky_relu.derivative(jnp.array([-1.0, 0.0, 2.0]), slope=0.5).tolist()
[0.5, 0.5, 1.0]
""")


def _elu(x, alpha):
    # expm1 only sees x ≤ 0: no overflow, no NaN from where; a strict where (not minimum) so
    # that autodiff of the formula gives elu'(0) = α, the convention
    safe = jnp.where(x > 0, jnp.zeros_like(x), x)
    return jnp.where(x > 0, x, alpha * jnp.expm1(safe))  # x if x > 0 else γ(e^x - 1)


def _delu(x, y, alpha):
    # 1 if x > 0 else γ e^x (= ELU(x) + γ; computed as γ e^x so that e.g. elu'(-40) is exact)
    return _keep_nan(x, jnp.where(x > 0, jnp.ones_like(x), alpha * jnp.exp(jnp.minimum(x, 0))))


elu = Activation("elu", _elu, _delu, {"alpha": 1.0}, kinks=(0.0,), doc=r"""
Exponential linear unit :math:`x` if :math:`x > 0`, else :math:`\alpha(e^x - 1)` (``alpha=α``,
default 1).

:math:`f'(x) = 1` if :math:`x > 0`, else :math:`\alpha e^x` (:math:`= f(x) + \alpha`); kink
convention: :math:`f'(0) = \alpha`.

>>> float(elu.derivative(0.0, alpha=0.5))
0.5
""")


def _softplus(x):
    return jnp.logaddexp(x, 0)  # log(1 + e^x), stable at ±1e4


def _dsoftplus(x, y):
    return jax.nn.sigmoid(x)  # softplus'(x) = σ(x)


softplus = Activation("softplus", _softplus, _dsoftplus, doc=r"""
Softplus :math:`\log(1 + e^x)`, a smooth ReLU; :math:`f'(x) = \sigma(x)`.

>>> float(softplus.derivative(0.0))
0.5
""")


def _step(x):
    return _piecewise(x > 0, 1, 0, x)  # 1 if x > 0 else 0


def _dstep(x, y):
    return _keep_nan(x, jnp.zeros_like(x))  # 0 everywhere (no gradient to descend)


step = Activation("step", _step, _dstep, kinks=(0.0,), doc=r"""
Heaviside step (the MP neuron): :math:`1` if :math:`x > 0`, else :math:`0`; ``step(0) = 0``.

:math:`f'(x) = 0` everywhere (at 0 by convention): gradient descent cannot train it.

>>> step(jnp.array([-1.0, 0.0, 2.0])).tolist()
[0.0, 0.0, 1.0]
""")


# ---------------------------------------------------------------------------------------
# The activations of stax besides those: GELU, SELU, swish (SiLU), exp.

#: Beyond ``|x| = 40`` the Gaussian factors of GELU are below ``1e-340``, under float64's
#: smallest subnormal: there ``x Φ(x)`` (x < -40) and ``x Φ'(x)`` are taken as exactly 0,
#: which keeps ``-inf · 0`` (NaN) and the overflow of ``x²`` / ``x³`` out of the formulas.
_GAUSS_TAIL = 40.0
_SQRT_HALF = math.sqrt(0.5)  # 1/√2
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)  # 1/√(2π)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)  # √(2/π)
_GELU_CUBIC = 0.044715


def _gelu_u(x):
    return _SQRT_2_OVER_PI * (x + _GELU_CUBIC * (x * x * x))  # u = √(2/π)(x + 0.044715x³)


def _gelu_cdf(x, approximate):
    """``Φ(x) = ½ erfc(-x/√2)`` or its tanh approximation ``½(1 + tanh u) = σ(2u)``.

    Both forms avoid the cancellation of ``1 + erf`` / ``1 + tanh`` in the left tail.
    """
    if approximate:
        # σ(2u) is exactly 0 or 1 beyond |x| = 40 (|2u| > 4600): the clip only keeps x³ finite
        return jax.nn.sigmoid(2 * _gelu_u(jnp.clip(x, -_GAUSS_TAIL, _GAUSS_TAIL)))
    return 0.5 * lax.erfc(-_SQRT_HALF * x)


def _gelu(x, approximate):
    # x Φ(x); 0 for x < -40 (|x Φ(x)| < 1e-340 there), so that gelu(-inf) = 0, not -inf · 0
    xs = jnp.where(x < -_GAUSS_TAIL, jnp.zeros_like(x), x)
    return xs * _gelu_cdf(xs, approximate)


def _dgelu(x, y, approximate):
    # f'(x) = Φ(x) + x Φ'(x), with Φ'(x) = φ(x) = exp(-x²/2)/√(2π), or for the approximation
    # d/dx σ(2u) = 2σ(2u)(1 - σ(2u)) u', u' = √(2/π)(1 + 3·0.044715x²), σ(1-σ) = e/(1+e)²
    # with e = exp(-2|u|); x Φ'(x) is 0 for |x| ≥ 40 (below 1e-340): finite at ±inf
    t = jnp.where(jnp.abs(x) < _GAUSS_TAIL, x, jnp.zeros_like(x))
    if approximate:
        du = _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * (t * t))
        bump = 2 * _sech2_from_exp(jnp.exp(-2 * jnp.abs(_gelu_u(t)))) * du
    else:
        bump = _INV_SQRT_2PI * jnp.exp(-0.5 * (t * t))
    return _gelu_cdf(x, approximate) + t * bump


gelu = Activation("gelu", _gelu, _dgelu, {"approximate": False}, doc=r"""
Gaussian error linear unit :math:`x\,\Phi(x)`, with the normal CDF
:math:`\Phi(x) = \tfrac12(1 + \mathrm{erf}(x/\sqrt2))`.

:math:`f'(x) = \Phi(x) + x\,\varphi(x)`, :math:`\varphi(x) = e^{-x^2/2}/\sqrt{2\pi}`. Smooth, no
kink. :math:`\Phi` is evaluated as :math:`\tfrac12 \mathrm{erfc}(-x/\sqrt2)`: exact in the left
tail, where :math:`1 + \mathrm{erf}` cancels.

``approximate=True``: the tanh form ``½x(1 + tanh u)``, ``u = √(2/π)(x + 0.044715x³)``,
evaluated as ``x σ(2u)``; ``f'(x) = σ(2u) + 2x σ(2u)(1 - σ(2u)) u'(x)``.
**The default differs from jax.nn.gelu**: funnet's is the exact erf form
(``approximate=False``), jax.nn.gelu's is the tanh approximation (``approximate=True``).

>>> float(gelu(0.0)), float(gelu.derivative(0.0)), float(gelu.derivative(0.0, approximate=True))
(0.0, 0.5, 0.5)
""")


_SELU_ALPHA = 1.6732632423543772848170429916717  # α, as jax.nn.selu
_SELU_SCALE = 1.0507009873554804934193349852946  # λ, as jax.nn.selu
_SELU_SCALE_ALPHA = _SELU_SCALE * _SELU_ALPHA  # λα ≈ 1.7581: selu(-inf) = -λα, selu'(0) = λα


def _selu(x):
    # as elu: expm1 only sees x ≤ 0; a strict where so that autodiff gives selu'(0) = λα
    safe = jnp.where(x > 0, jnp.zeros_like(x), x)
    return jnp.where(x > 0, _SELU_SCALE * x, _SELU_SCALE_ALPHA * jnp.expm1(safe))  # λx or λα(eˣ-1)


def _dselu(x, y):
    # λ if x > 0 else λα e^x (λα one constant: f'(0) = λα is one rounding in every dtype)
    neg = _SELU_SCALE_ALPHA * jnp.exp(jnp.minimum(x, 0))
    return _keep_nan(x, jnp.where(x > 0, jnp.full_like(x, _SELU_SCALE), neg))


selu = Activation("selu", _selu, _dselu, kinks=(0.0,), doc=r"""
Scaled ELU :math:`\lambda x` if :math:`x > 0`, else :math:`\lambda\alpha(e^x - 1)`, with the fixed
constants of jax.nn.selu :math:`\lambda = 1.0507009873554804934193349852946`,
:math:`\alpha = 1.6732632423543772848170429916717`.

:math:`f'(x) = \lambda` if :math:`x > 0`, else :math:`\lambda\alpha e^x`; kink convention:
:math:`f'(0) = \lambda\alpha \approx 1.7581` (the ``else``
branch, as ``elu'(0) = α``; jax.nn.selu gives the same).

>>> round(float(selu.derivative(0.0)), 6), round(float(selu(-jnp.inf)), 6)
(1.758099, -1.758099)
""")


def _swish(x):
    xs = jnp.where(x == -jnp.inf, jnp.zeros_like(x), x)  # the limit 0 at -inf, not -inf · 0
    return xs * jax.nn.sigmoid(xs)  # x σ(x)


def _dswish(x, y):
    # f'(x) = σ(x) + x σ(x)(1 - σ(x)); σ(1 - σ) as e/(1+e)², e = exp(-|x|) (no 1 - σ
    # cancellation); x σ(1 - σ) is 0 at ±inf (the limit), not inf · 0
    t = jnp.where(jnp.isinf(x), jnp.zeros_like(x), x)
    return jax.nn.sigmoid(x) + t * _sech2_from_exp(jnp.exp(-jnp.abs(t)))


swish = Activation("swish", _swish, _dswish, doc=r"""
Swish (SiLU) :math:`x\,\sigma(x)`;
:math:`f'(x) = \sigma(x) + x\,\sigma(x)(1 - \sigma(x)) = \sigma(x)(1 + x(1 - \sigma(x)))`.

Smooth, no kink; ``silu`` is the same activation. :math:`\sigma(1 - \sigma)` is evaluated as
:math:`e/(1+e)^2`, :math:`e = \exp(-|x|)`.

>>> round(float(swish(1.0)), 6), round(float(swish.derivative(1.0)), 6)
(0.731059, 0.927671)
""")
silu = swish


def _exp(x):
    return jnp.exp(x)  # e^x


def _dexp(x, y):
    return y  # exp'(x) = e^x = y, the forward value


exp = Activation("exp", _exp, _dexp, doc=r"""
Exponential :math:`e^x`; :math:`f'(x) = e^x` (the forward value, reused).

Unbounded: like ``jnp.exp`` it overflows to ``inf`` (value and derivative) beyond the
dtype's largest number, ``x > 709.78`` in float64, ``x > 88.72`` in float32.

>>> float(exp.derivative(0.0)), float(exp(800.0))
(1.0, inf)
""")


# ---------------------------------------------------------------------------------------
# PReLU: the slope is a learnable parameter, so it is an argument, not a hyperparameter.


def _unbroadcast(g: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sum ``g`` over the axes that broadcasting added to an array of ``shape``."""
    extra = g.ndim - len(shape)
    g = g.sum(axis=tuple(range(extra))) if extra > 0 else g
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _prelu_f(x, slope):
    neg = jnp.where(slope == 0, jnp.zeros_like(x), slope * x)  # γ_i x (0 for γ_i = 0, even at -inf)
    return _keep_nan(x, jnp.where(x > 0, x, neg))  # x if x > 0 else γ_i x


def _prelu_dx(x, slope):
    return _keep_nan(x, jnp.where(x > 0, jnp.ones_like(x), slope * jnp.ones_like(x)))  # 1 or γ_i


def _prelu_dslope(x):
    return jnp.where(x > 0, jnp.zeros_like(x), x)  # ∂f/∂γ_i = 0 if x > 0 else x


def _same_rank(x: jax.Array, slope: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """``x`` and ``slope`` (in ``x``'s dtype) with leading 1-axes added to the lower-rank one.

    Broadcasting is then same-rank only, so it works under ``jax_numpy_rank_promotion="raise"``.
    """
    slope = jnp.asarray(slope, x.dtype)
    nd = max(x.ndim, slope.ndim)
    return (x.reshape((1,) * (nd - x.ndim) + x.shape),
            slope.reshape((1,) * (nd - slope.ndim) + slope.shape))


@jax.custom_vjp
def _prelu_vjp(x, slope):
    return _prelu_f(x, slope)


def _prelu_fwd(x, slope):
    return _prelu_f(x, slope), (x, slope)


def _prelu_bwd(res, dy):
    x, slope = res
    dx = _unbroadcast(dy * _prelu_dx(x, slope), jnp.shape(x)).astype(x.dtype)
    dslope = _unbroadcast(dy * _prelu_dslope(x), jnp.shape(slope)).astype(slope.dtype)
    return dx, dslope


_prelu_vjp.defvjp(_prelu_fwd, _prelu_bwd)


@jax.custom_jvp
def _prelu_jvp(x, slope):
    return _prelu_f(x, slope)


def _prelu_jvp_rule(primals, tangents):
    (x, slope), (tx, tslope) = primals, tangents
    y = _prelu_f(x, slope)
    # dy = ∂f/∂x · tx + ∂f/∂γ · tγ, skipping symbolic-zero tangents (0 · ∂f/∂γ would be NaN
    # where x = -inf, so jacfwd w.r.t. x alone would give NaN instead of γ)
    dy = jnp.zeros_like(y)
    if not isinstance(tx, SymbolicZero):
        dy = dy + _prelu_dx(x, slope) * tx
    if not isinstance(tslope, SymbolicZero):
        dy = dy + _prelu_dslope(x) * tslope
    return y, dy


_prelu_jvp.defjvp(_prelu_jvp_rule, symbolic_zeros=True)


_PRELU_WIRINGS = {"vjp": _prelu_vjp, "jvp": _prelu_jvp, "formula": _prelu_f}


class _PRelu(_Twins):
    r"""PReLU :math:`f(x) = x` if :math:`x > 0`, else :math:`\gamma_i x`, one learnable slope per
    neuron.

    :math:`\partial f / \partial x = 1` if :math:`x > 0`, else :math:`\gamma_i`
    (``prelu.derivative``);
    :math:`\partial f / \partial \gamma_i = 0` if :math:`x > 0`, else :math:`x`
    (``prelu.slope_derivative``). ``slope`` broadcasts against ``x`` (shape ``[features]``).
    Twins as for every activation: ``prelu.jvp_twin`` (custom_jvp), ``prelu.formula``.

    >>> import jax.numpy as jnp
    >>> prelu(jnp.array([-2.0, 3.0]), jnp.array([0.25, 0.25])).tolist()
    [-0.5, 3.0]
    """

    name = "prelu"
    kinks = (0.0,)

    def __init__(self, wiring: str = "vjp") -> None:
        if wiring not in _PRELU_WIRINGS:
            raise ValueError(f"prelu: wiring must be one of {sorted(_PRELU_WIRINGS)}, got {wiring!r}")
        self.wiring = wiring

    def rewired(self, wiring: str) -> _PRelu:
        """``prelu`` with its derivatives wired as ``wiring``; one object per wiring."""
        return _PRELU_TWINS[wiring] if wiring in _PRELU_TWINS else _PRelu(wiring)

    def __call__(self, x: ArrayLike, slope: ArrayLike) -> jax.Array:
        fn = _PRELU_WIRINGS[self.wiring]
        return _call(self.name, self.wiring, fn, *_same_rank(_as_float(x), slope))

    def derivative(self, x: ArrayLike, slope: ArrayLike) -> jax.Array:
        """``∂f/∂x``: 1 if x > 0 else γ_i."""
        return _prelu_dx(*_same_rank(_as_float(x), slope))

    def slope_derivative(self, x: ArrayLike) -> jax.Array:
        """``∂f/∂γ_i`` elementwise: 0 if x > 0 else x."""
        return _prelu_dslope(_as_float(x))

    def __repr__(self) -> str:
        suffix = "" if self.wiring == "vjp" else f" ({self.wiring})"
        return f"<activation prelu{suffix}>"


_PRELU_TWINS = {w: _PRelu(w) for w in _PRELU_WIRINGS}
prelu = _PRELU_TWINS["vjp"]


#: Every built-in elementwise activation with static hyperparameters, by name.
ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (logistic, tanh, hard_logistic, hard_tanh, relu, leaky_relu, elu, softplus, step,
              gelu, selu, swish, exp)
}

# doctest does not look inside instances: list their docstrings explicitly.
__test__ = {name: act.__doc__ for name, act in ACTIVATIONS.items()}
