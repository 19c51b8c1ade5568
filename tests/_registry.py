"""The one registry the core tests are parameterised over: activations and layers.

Every activation case carries, written independently of funnet (docs/math.md §2):

* ``ref``   the plain formula in ``jax.numpy`` (the table's ``f(x)``, literally);
* ``dref``  the plain derivative formula (the table's ``f'(x)``);
* ``pieces`` the smooth pieces as sympy expressions on open intervals, so that the hand
  derivatives can be witnessed against ``sympy.diff``;
* ``kinks`` the points where ``f'`` is a convention, with the documented value there
  (activations.py: relu'(0)=0, leaky'(0)=slope, hard_tanh'(±1)=0, hard_logistic'(±2)=0,
  elu'(0)=alpha, step'=0, prelu'(0)=slope, selu'(0)=λα).

Hyperparameter variants (``slope``, ``alpha``, ``approximate``) are separate cases. Layer cases give a
layer, its input shape, the output shape and param shapes expected from ``init``, and a
plain reference ``apply`` where one exists.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import chex
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import sympy as sp

import funnet

X = sp.Symbol("x", real=True)
OO = sp.oo
_EXACT: dict[tuple[str, float, int], float] = {}


def assert_trees_close(actual: Any, expected: Any, *, rtol: float, atol: float) -> None:
    """The one helper comparing gradient (or any array) trees: same structure, close leaves."""
    chex.assert_trees_all_equal_structs(actual, expected)
    chex.assert_trees_all_close(actual, expected, rtol=rtol, atol=atol)


def plain_l2(params: Any, lam: float) -> jax.Array:
    """``½ λ Σ ||W||²`` over the leaves named ``W``, written independently of funnet's
    declared weight decay (for the Dense-only models of the tests)."""
    total = jnp.zeros(())
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        if isinstance(path[-1], jax.tree_util.DictKey) and path[-1].key == "W":
            total = total + jnp.sum(jnp.square(leaf))
    return 0.5 * lam * total


def _sigma(x):
    return 1 / (1 + jnp.exp(-x))  # σ(x) = 1 / (1 + exp(-x)), docs/math.md §2 literally


# ---------------------------------------------------------------------------------------
# Activations.


@dataclasses.dataclass(frozen=True)
class ActivationCase:
    id: str
    fn: Callable[[Any], jax.Array]  # funnet, hyperparameters bound
    twin: Callable[[Any], jax.Array]  # its forward twin (custom_jvp), hyperparameters bound
    derivative: Callable[[Any], jax.Array]  # funnet's hand f', hyperparameters bound
    ref: Callable[[jax.Array], jax.Array]  # plain jnp f
    dref: Callable[[jax.Array], jax.Array]  # plain jnp f'
    pieces: tuple[tuple[sp.Expr, Any, Any], ...]  # (expression, lo, hi): f on (lo, hi)
    kinks: dict[float, float]  # kink -> documented f'(kink)
    layer: funnet.Layer  # the layer applying it

    def __repr__(self) -> str:
        return self.id

    def piece_at(self, x: float) -> sp.Expr:
        """The sympy expression of ``f`` on the open interval containing ``x`` (±inf allowed)."""
        for expr, lo, hi in self.pieces:
            if float(lo) < x < float(hi) or (x == float(lo) == -np.inf) or (
                x == float(hi) == np.inf
            ):
                return expr
        raise ValueError(f"{self.id}: {x} is a kink, not inside a smooth piece")

    def sym_derivative(self, order: int = 1) -> Callable[[np.ndarray], np.ndarray]:
        """``d^order f / dx^order`` by ``sympy.diff`` of the pieces, evaluated in float64."""
        fns = [
            (np.vectorize(sp.lambdify(X, sp.diff(e, X, order), "numpy"), otypes=[np.float64]),
             float(lo), float(hi))
            for e, lo, hi in self.pieces
        ]

        def evaluate(x):
            x = np.asarray(x, np.float64)
            out = np.full(x.shape, np.nan)
            for fn, lo, hi in fns:
                inside = (x > lo) & (x < hi)
                out[inside] = fn(x[inside])
            return out

        return evaluate

    def exact(self, x: float, order: int = 0) -> float:
        key = (self.id, float(x), order)
        if key not in _EXACT:
            _EXACT[key] = self._exact(x, order)
        return _EXACT[key]

    def _exact(self, x: float, order: int) -> float:
        """``f^(order)(x)`` from the sympy piece, correctly rounded to float64.

        Finite ``x`` is evaluated by mpmath at ``2|x| + 50`` digits: the expressions cancel
        terms of size up to ``exp(2|x|)`` (e.g. ``1 - tanh²``), so this precision leaves 50
        correct digits. ``±inf`` is ``sympy.limit``.
        """
        expr = sp.diff(self.piece_at(x), X, order)
        if np.isinf(x):
            return float(sp.limit(expr, X, OO if x > 0 else -OO))
        fn = sp.lambdify(X, expr, "mpmath")
        with mpmath.workdps(int(2 * abs(x)) + 50):
            return float(fn(mpmath.mpf(x)))


def _hyper_id(name: str, hyper: dict[str, float]) -> str:
    return name + "".join(f"[{k}={v}]" for k, v in hyper.items())


def _activation_case(name, hyper, ref, dref, pieces, kinks) -> ActivationCase:
    act = funnet.activations.ACTIVATIONS[name]
    full = {**act.defaults, **hyper}
    layer_name = "".join(p.capitalize() for p in name.split("_"))
    layer = getattr(funnet, layer_name)
    return ActivationCase(
        id=_hyper_id(name, hyper),
        fn=lambda x: act(x, **hyper),
        twin=lambda x: act.jvp_twin(x, **hyper),
        derivative=lambda x: act.derivative(x, **hyper),
        ref=lambda x: ref(x, **full),
        dref=lambda x: dref(x, **full),
        pieces=tuple(pieces(**{k: v if isinstance(v, bool) else sp.Float(v)
                               for k, v in full.items()})),
        kinks=kinks(**full),
        layer=layer(**hyper) if hyper else layer,
    )


def _where(cond, a, b):
    return jnp.where(cond, a, b)


#: SELU's constants (Klambauer et al. 2017, as jax.nn.selu), to 32 digits
SELU_ALPHA = "1.6732632423543772848170429916717"
SELU_SCALE = "1.0507009873554804934193349852946"
_GELU_C = sp.sqrt(2 / sp.pi) * (X + sp.Rational("0.044715") * X**3)  # u(x), the tanh form


def _gelu_u(x):
    return np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)


def _gelu_ref(x, approximate):
    if approximate:  # ½x(1 + tanh u) = x σ(2u) (1 + tanh: test_gelu_matches_jax_nn)
        return x * _sigma(2 * _gelu_u(x))
    return x * jax.scipy.stats.norm.cdf(x)  # x Φ(x)


def _gelu_dref(x, approximate):
    if approximate:  # ½(1 + tanh u) + ½x(1 - tanh²u) u'
        t = jnp.tanh(_gelu_u(x))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t**2) * np.sqrt(2 / np.pi) * (
            1 + 3 * 0.044715 * x**2)
    return jax.scipy.stats.norm.cdf(x) + x * jax.scipy.stats.norm.pdf(x)  # Φ(x) + x φ(x)


def _gelu_pieces(approximate):
    if approximate:
        return [(X / 2 * (1 + sp.tanh(_GELU_C)), -OO, OO)]
    return [(X / 2 * (1 + sp.erf(X / sp.sqrt(2))), -OO, OO)]


def _activation_cases() -> list[ActivationCase]:
    half, quarter = sp.Rational(1, 2), sp.Rational(1, 4)
    cases = [
        _activation_case(
            "logistic", {},
            lambda x: _sigma(x),
            lambda x: _sigma(x) * (1 - _sigma(x)),
            lambda: [(1 / (1 + sp.exp(-X)), -OO, OO)],
            dict,
        ),
        _activation_case(
            "tanh", {},
            lambda x: (jnp.exp(x) - jnp.exp(-x)) / (jnp.exp(x) + jnp.exp(-x)),
            lambda x: 1 - ((jnp.exp(x) - jnp.exp(-x)) / (jnp.exp(x) + jnp.exp(-x))) ** 2,
            lambda: [((sp.exp(X) - sp.exp(-X)) / (sp.exp(X) + sp.exp(-X)), -OO, OO)],
            dict,
        ),
        _activation_case(
            "hard_logistic", {},
            lambda x: jnp.maximum(jnp.minimum(0.25 * x + 0.5, 1.0), 0.0),
            lambda x: _where((-2 < x) & (x < 2), 0.25, 0.0),
            lambda: [(sp.Integer(0), -OO, -2), (quarter * X + half, -2, 2), (sp.Integer(1), 2, OO)],
            lambda: {-2.0: 0.0, 2.0: 0.0},
        ),
        _activation_case(
            "hard_tanh", {},
            lambda x: jnp.maximum(jnp.minimum(x, 1.0), -1.0),
            lambda x: _where((-1 < x) & (x < 1), 1.0, 0.0),
            lambda: [(sp.Integer(-1), -OO, -1), (X, -1, 1), (sp.Integer(1), 1, OO)],
            lambda: {-1.0: 0.0, 1.0: 0.0},
        ),
        _activation_case(
            "relu", {},
            lambda x: jnp.maximum(0.0, x),
            lambda x: _where(x > 0, 1.0, 0.0),
            lambda: [(sp.Integer(0), -OO, 0), (X, 0, OO)],
            lambda: {0.0: 0.0},
        ),
        *[
            _activation_case(
                "leaky_relu", hyper,
                lambda x, slope: _where(x > 0, x, slope * x),
                lambda x, slope: _where(x > 0, 1.0, slope),
                lambda slope: [(slope * X, -OO, 0), (X, 0, OO)],
                lambda slope: {0.0: slope},
            )
            for hyper in ({}, {"slope": 0.2})
        ],
        *[
            _activation_case(
                "elu", hyper,
                lambda x, alpha: _where(x > 0, x, alpha * (jnp.exp(x) - 1)),
                lambda x, alpha: _where(x > 0, 1.0, alpha * jnp.exp(x)),
                lambda alpha: [(alpha * (sp.exp(X) - 1), -OO, 0), (X, 0, OO)],
                lambda alpha: {0.0: alpha},
            )
            for hyper in ({}, {"alpha": 0.5}, {"alpha": 2.0})
        ],
        _activation_case(
            "softplus", {},
            lambda x: jnp.log(1 + jnp.exp(x)),
            lambda x: _sigma(x),
            lambda: [(sp.log(1 + sp.exp(X)), -OO, OO)],
            dict,
        ),
        _activation_case(
            "step", {},
            lambda x: _where(x > 0, 1.0, 0.0),
            lambda x: jnp.zeros_like(x),
            lambda: [(sp.Integer(0), -OO, 0), (sp.Integer(1), 0, OO)],
            lambda: {0.0: 0.0},
        ),
        *[
            _activation_case("gelu", hyper, _gelu_ref, _gelu_dref, _gelu_pieces,
                             lambda approximate: {})
            for hyper in ({}, {"approximate": True})
        ],
        _activation_case(
            "selu", {},
            lambda x: _where(x > 0, float(SELU_SCALE) * x,
                             float(SELU_SCALE) * float(SELU_ALPHA) * (jnp.exp(x) - 1)),
            lambda x: _where(x > 0, float(SELU_SCALE),
                             float(SELU_SCALE) * float(SELU_ALPHA) * jnp.exp(x)),
            lambda: [(sp.Float(SELU_SCALE, 40) * sp.Float(SELU_ALPHA, 40) * (sp.exp(X) - 1),
                      -OO, 0),
                     (sp.Float(SELU_SCALE, 40) * X, 0, OO)],
            lambda: {0.0: float(SELU_SCALE) * float(SELU_ALPHA)},
        ),
        _activation_case(
            "swish", {},
            lambda x: x * _sigma(x),
            lambda x: _sigma(x) + x * _sigma(x) * (1 - _sigma(x)),
            lambda: [(X / (1 + sp.exp(-X)), -OO, OO)],
            dict,
        ),
        _activation_case(
            "exp", {},
            lambda x: jnp.exp(x),
            lambda x: jnp.exp(x),
            lambda: [(sp.exp(X), -OO, OO)],
            dict,
        ),
    ]
    for slope in (0.25, 0.1, 0.0):  # PReLU with a fixed slope; γ = 0 is ReLU
        cases.append(ActivationCase(
            id=f"prelu[slope={slope}]",
            fn=lambda x, s=slope: funnet.prelu(x, s),
            twin=lambda x, s=slope: funnet.prelu.jvp_twin(x, s),
            derivative=lambda x, s=slope: funnet.prelu.derivative(x, s),
            ref=lambda x, s=slope: _where(x > 0, x, s * x),
            dref=lambda x, s=slope: _where(x > 0, 1.0, s),
            pieces=((sp.Float(slope) * X, -OO, 0), (X, 0, OO)),
            kinks={0.0: slope},
            layer=funnet.PRelu(slope_init=slope),
        ))
    return cases


ACTIVATION_CASES: list[ActivationCase] = _activation_cases()

#: Every kink of every registered activation (checked by a test). Grids share one shape per
#: kind, so JAX compiles each primitive once for the whole suite, not once per case.
KINK_POINTS = (-2.0, -1.0, 0.0, 1.0, 2.0)


def _grid_away() -> np.ndarray:
    x = np.concatenate([np.linspace(-6.0, 6.0, 121) + 0.0123, [-12.0, 12.0]])
    for k in KINK_POINTS:
        x = x[np.abs(x - k) >= 1e-2]
    return x


#: A float64 grid on [-6, 6] plus ±12, at least 1e-2 from every kink: central differences
#: with h ≪ 1e-2 never straddle one.
GRID_AWAY: np.ndarray = _grid_away()


# ---------------------------------------------------------------------------------------
# Layers.


@dataclasses.dataclass(frozen=True)
class LayerCase:
    id: str
    layer: funnet.Layer
    input_shape: tuple[int, ...]  # -1 for the batch axis
    out_shape: Any  # what init returns (with -1 for the batch axis)
    param_shapes: Any  # the params pytree with each leaf replaced by its shape
    ref: Callable[[Any, jax.Array], Any] | None = None  # plain jnp apply
    needs_key: bool = False
    covers: tuple[str, ...] = ()  # public constructors it exercises beyond its layers' names
    # holds state (BatchNorm): the tests run it through init_with_state/apply_with_state
    # with the state from init, in training mode (batch statistics) unless said otherwise
    stateful: bool = False
    vocab: int = 0  # > 0: the input is integer ids in [0, vocab) (Embedding), without gradient
    # the input is GRAPH_BATCH, a padded batch of graphs (funnet.graph.Graph) whose structure
    # has no gradient; the output's rows are its nodes, or its graphs when graph_level
    graph: bool = False
    graph_level: bool = False

    def __repr__(self) -> str:
        return self.id


def _dmish(x, y):
    t = jnp.tanh(jax.nn.softplus(x))
    return t + x * jax.nn.sigmoid(x) * (1 - t**2)  # tanh(s) + x σ(x) sech²(s), s' = σ


#: A user-defined activation (mish, x tanh(softplus(x))), wired like the built-in ones.
MISH = funnet.define_activation("mish", lambda x: x * jnp.tanh(jax.nn.softplus(x)), _dmish)


def _rows(v, x):
    """A per-feature vector shaped to broadcast over ``x``'s leading (row) axes."""
    return v.reshape((1,) * (x.ndim - 1) + v.shape)


def dense_ref(p, x):
    return x @ p["W"] + _rows(p["b"], x)  # z = a W + b, row form


def softmax_ref(x):
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def prelu_ref(p, x):
    return jnp.where(x > 0, x, _rows(p["slope"], x) * x)


def pool_ref(kind, window, strides, pads, *, count_padding=False):
    """Plain ``lax.reduce_window`` pooling of ``[n, *spatial, C]`` (docs/math.md §8.2):
    ``-inf`` padding for max; avg divides by ``Π window`` or, like stax, by the window sums
    of ones (the real cells)."""
    dims, steps, padding = (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))

    def ref(p, x):
        if kind == "max":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, steps, padding)
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, steps, padding)
        if kind == "sum":
            return total
        ones = jax.lax.reduce_window(jnp.ones_like(x), 0.0, jax.lax.add, dims, steps, padding)
        return total / (float(np.prod(window)) if count_padding else ones)

    return ref
def _normalised(x, axes, eps=1e-5):
    """``(x − μ)/√(σ² + ε)`` with the mean and biased variance over ``axes`` (§8.3, §8.4)."""
    mu = jnp.mean(x, axis=axes, keepdims=True)
    return (x - mu) / jnp.sqrt(jnp.mean((x - mu) ** 2, axis=axes, keepdims=True) + eps)


def _along(v, x, axis):
    return v.reshape(tuple(-1 if a == axis % x.ndim else 1 for a in range(x.ndim)))


def batch_norm_ref(p, x, axis=-1):
    """Training mode: batch statistics over every axis but the channel axis."""
    axes = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    return _along(p["scale"], x, axis) * _normalised(x, axes) + _along(p["offset"], x, axis)


def layer_norm_ref(p, x):
    return _rows(p["scale"], x) * _normalised(x, (-1,)) + _rows(p["offset"], x)


def group_norm_ref(p, x, groups):
    xg = x.reshape(x.shape[:-1] + (groups, -1))  # [B, ..., G, C/G]
    xhat = _normalised(xg, tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)).reshape(x.shape)
    return _rows(p["scale"], x) * xhat + _rows(p["offset"], x)


def _layer_cases() -> list[LayerCase]:
    D = 4
    cases = [
        LayerCase("Dense(3)", funnet.Dense(3), (-1, D), (-1, 3),
                  {"W": (D, 3), "b": (3,)}, dense_ref),
    ]
    for a in ACTIVATION_CASES:
        if a.id.startswith("prelu"):
            continue
        cases.append(LayerCase(a.layer.name, a.layer, (-1, D), (-1, D), (),
                               lambda p, x, a=a: a.ref(x)))
    cases += [
        LayerCase("PRelu", funnet.PRelu, (-1, D), (-1, D), {"slope": (D,)}, prelu_ref),
        LayerCase("PRelu(slope_init=0.1)", funnet.PRelu(slope_init=0.1), (-1, D), (-1, D),
                  {"slope": (D,)}, prelu_ref),
        LayerCase("Softmax", funnet.Softmax, (-1, D), (-1, D), (), lambda p, x: softmax_ref(x)),
        LayerCase("LogSoftmax", funnet.LogSoftmax, (-1, D), (-1, D), (),
                  lambda p, x: jnp.log(softmax_ref(x))),
        LayerCase("Flatten", funnet.Flatten, (-1, 2, 3), (-1, 6), (),
                  lambda p, x: x.reshape(x.shape[0], 6)),
        LayerCase("Dropout(0.3)", funnet.Dropout(0.3), (-1, D), (-1, D), (), needs_key=True),
        LayerCase("Identity", funnet.Identity, (-1, D), (-1, D), (), lambda p, x: x),
        LayerCase("Reshape((3, -1))", funnet.Reshape((3, -1)), (-1, 2, 3), (-1, 3, 2), (),
                  lambda p, x: x.reshape(x.shape[0], 3, 2)),
        LayerCase("ActivationLayer(mish)", funnet.ActivationLayer(MISH), (-1, D), (-1, D), (),
                  lambda p, x: x * jnp.tanh(jnp.log(1 + jnp.exp(x))), covers=("ActivationLayer",)),
        LayerCase(
            "residual block: fanout,parallel(Identity,serial(Dense,Tanh)),FanInSum",
            funnet.serial(funnet.fanout(2),
                          funnet.parallel(funnet.Identity, funnet.serial(funnet.Dense(D),
                                                                         funnet.Tanh)),
                          funnet.FanInSum),
            (-1, D), (-1, D),
            ((), ((), ({"W": (D, D), "b": (D,)}, ())), ()),
            lambda p, x: x + jnp.tanh(dense_ref(p[1][1][0], x)),
        ),
        LayerCase(
            "serial(Dense,Tanh,Dense)",
            funnet.serial(funnet.Dense(5), funnet.Tanh, funnet.Dense(3)),
            (-1, D), (-1, 3),
            ({"W": (D, 5), "b": (5,)}, (), {"W": (5, 3), "b": (3,)}),
            lambda p, x: dense_ref(p[2], jnp.tanh(dense_ref(p[0], x))),
        ),
        LayerCase(
            "residual: fanout,parallel(Dense,serial(Dense,Elu)),FanInSum",
            funnet.serial(
                funnet.fanout(2),
                funnet.parallel(funnet.Dense(D), funnet.serial(funnet.Dense(D), funnet.Elu)),
                funnet.FanInSum,
            ),
            (-1, D), (-1, D),
            ((), ({"W": (D, D), "b": (D,)}, ({"W": (D, D), "b": (D,)}, ())), ()),
            lambda p, x: dense_ref(p[1][0], x)
            + ACTIVATION_CASES_BY_ID["elu"].ref(dense_ref(p[1][1][0], x)),
        ),
        LayerCase(
            "fanout(3),parallel(Dense,Tanh,PRelu),FanInConcat",
            funnet.serial(
                funnet.fanout(3),
                funnet.parallel(funnet.Dense(2), funnet.Tanh, funnet.PRelu),
                funnet.FanInConcat(),
            ),
            (-1, D), (-1, 2 + D + D),
            ((), ({"W": (D, 2), "b": (2,)}, (), {"slope": (D,)}), ()),
            lambda p, x: jnp.concatenate(
                [dense_ref(p[1][0], x), jnp.tanh(x), prelu_ref(p[1][2], x)], axis=-1),
        ),
        LayerCase(
            "serial(Flatten,Dense,Softmax)",
            funnet.serial(funnet.Flatten, funnet.Dense(3), funnet.Softmax),
            (-1, 2, 3), (-1, 3),
            ((), {"W": (6, 3), "b": (3,)}, ()),
            lambda p, x: softmax_ref(dense_ref(p[1], x.reshape(x.shape[0], 6))),
        ),
        LayerCase(
            "serial(Dense,Dropout,Dense)",
            funnet.serial(funnet.Dense(5), funnet.Dropout(0.5), funnet.Dense(2)),
            (-1, D), (-1, 2),
            ({"W": (D, 5), "b": (5,)}, (), {"W": (5, 2), "b": (2,)}),
            needs_key=True,
        ),
        # rank-3 inputs [batch, 3, D]: the feature axis is the last, the rest are rows
        LayerCase("Dense(3) on [n, 3, D]", funnet.Dense(3), (-1, 3, D), (-1, 3, 3),
                  {"W": (D, 3), "b": (3,)}, dense_ref),
        LayerCase("PRelu on [n, 3, D]", funnet.PRelu, (-1, 3, D), (-1, 3, D),
                  {"slope": (D,)}, prelu_ref),
        LayerCase(
            "fanout(2),parallel(Tanh,Relu),FanInConcat(axis=-2)",
            funnet.serial(funnet.fanout(2), funnet.parallel(funnet.Tanh, funnet.Relu),
                          funnet.FanInConcat(axis=-2)),
            (-1, 3, D), (-1, 6, D),
            ((), ((), ()), ()),
            lambda p, x: jnp.concatenate([jnp.tanh(x), jnp.maximum(x, 0)], axis=-2),
        ),
        # pooling, channels last [n, *spatial, C] (registry inputs are continuous: no ties;
        # tests/test_pooling.py tests those)
        LayerCase("MaxPool(2) on [n, 4, 4, 2]", funnet.MaxPool(2), (-1, 4, 4, 2),
                  (-1, 2, 2, 2), (),
                  lambda p, x: x.reshape(x.shape[0], 2, 2, 2, 2, 2).max(axis=(2, 4))),
        LayerCase("MaxPool((3, 3), strides=1, padding='SAME')",
                  funnet.MaxPool((3, 3), strides=1, padding="SAME"), (-1, 4, 5, 1),
                  (-1, 4, 5, 1), (), pool_ref("max", (3, 3), (1, 1), ((1, 1), (1, 1)))),
        LayerCase("AvgPool(2, strides=1, padding='SAME') 1-D",
                  funnet.AvgPool(2, strides=1, padding="SAME"), (-1, 5, 2), (-1, 5, 2), (),
                  pool_ref("avg", (2,), (1,), ((0, 1),))),
        LayerCase("AvgPool((3, 2), strides=2, padding=((1, 1), (0, 1)), count_padding=True)",
                  funnet.AvgPool((3, 2), strides=2, padding=((1, 1), (0, 1)),
                                 count_padding=True),
                  (-1, 5, 4, 2), (-1, 3, 2, 2), (),
                  pool_ref("avg", (3, 2), (2, 2), ((1, 1), (0, 1)), count_padding=True)),
        LayerCase("SumPool(2, strides=1) 3-D", funnet.SumPool(2, strides=1), (-1, 3, 3, 3, 1),
                  (-1, 2, 2, 2, 1), (), pool_ref("sum", (2, 2, 2), (1, 1, 1), ((0, 0),) * 3)),
        LayerCase("GlobalAvgPool on [n, 3, 4, 2]", funnet.GlobalAvgPool, (-1, 3, 4, 2),
                  (-1, 2), (), lambda p, x: jnp.mean(x, axis=(1, 2))),
        LayerCase(
            "serial(MaxPool,GlobalAvgPool,Dense)",
            funnet.serial(funnet.MaxPool(2, strides=1), funnet.GlobalAvgPool, funnet.Dense(3)),
            (-1, 3, 3, 2), (-1, 3),
            ((), (), {"W": (2, 3), "b": (3,)}),
            lambda p, x: dense_ref(p[2], jnp.mean(
                pool_ref("max", (2, 2), (1, 1), ((0, 0),) * 2)(None, x), axis=(1, 2))),
        ),
        # normalisation (docs/math.md §8.3, §8.4)
        LayerCase("LayerNorm", funnet.LayerNorm(), (-1, D), (-1, D),
                  {"scale": (D,), "offset": (D,)}, layer_norm_ref),
        LayerCase("LayerNorm on [n, 3, D]", funnet.LayerNorm(), (-1, 3, D), (-1, 3, D),
                  {"scale": (D,), "offset": (D,)}, layer_norm_ref),
        LayerCase("GroupNorm(2) on [n, 2, 3, D]", funnet.GroupNorm(2), (-1, 2, 3, D),
                  (-1, 2, 3, D), {"scale": (D,), "offset": (D,)},
                  lambda p, x: group_norm_ref(p, x, 2)),
        LayerCase("BatchNorm", funnet.BatchNorm(), (-1, D), (-1, D),
                  {"scale": (D,), "offset": (D,)}, batch_norm_ref, stateful=True),
        LayerCase("BatchNorm on [n, 2, 3, D]", funnet.BatchNorm(), (-1, 2, 3, D),
                  (-1, 2, 3, D), {"scale": (D,), "offset": (D,)}, batch_norm_ref,
                  stateful=True),
        LayerCase("BatchNorm(axis=1) on [n, 3, D]", funnet.BatchNorm(axis=1), (-1, 3, D),
                  (-1, 3, D), {"scale": (3,), "offset": (3,)},
                  lambda p, x: batch_norm_ref(p, x, axis=1), stateful=True),
        LayerCase(
            "serial(Dense,BatchNorm,Relu)",
            funnet.serial(funnet.Dense(3), funnet.BatchNorm(), funnet.Relu),
            (-1, D), (-1, 3),
            ({"W": (D, 3), "b": (3,)}, {"scale": (3,), "offset": (3,)}, ()),
            lambda p, x: jnp.maximum(batch_norm_ref(p[1], dense_ref(p[0], x)), 0),
            stateful=True,
        ),
    ]
    cases += _conv_cases()
    return cases + _sequence_cases() + _attention_cases() + _graph_cases()


# ---------------------------------------------------------------------------------------
# Sequences (docs/math.md §9): plain loops over time, written from the equations.


def recurrent_ref(kind: str, p: dict, x: jax.Array, mask: Any = None, state: Any = None,
                  f: Callable[[jax.Array], jax.Array] = jnp.tanh) -> tuple[jax.Array, Any]:
    """``(y [B, T, H], final state)`` of an ``RNN``/``LSTM``/``GRU``, one step at a time.

    ``mask [B, T]``: a step with mask 0 keeps the state and outputs 0. ``state``: ``h0`` or
    ``(h0, c0)`` (zeros when ``None``). Gate blocks in PyTorch's orders (i, f, g, o; r, z, n).
    The steps run in a ``lax.scan`` (one compile for any T) of the plain formulas.
    """
    B, T, _ = x.shape
    H = p["W_h"].shape[0]
    if state is None:
        state = (jnp.zeros((B, H)),) * (2 if kind == "LSTM" else 1)
    elif kind != "LSTM":
        state = (state,)
    m = jnp.ones((B, T), bool) if mask is None else jnp.asarray(mask) != 0

    def step(hc, inputs):
        (h, c), (xt, mt) = hc, inputs
        if kind == "RNN":  # h_t = f(x_t W_x + h_{t-1} W_h + b)
            h_new, c_new = f(xt @ p["W_x"] + h @ p["W_h"] + p["b"][None]), c
        elif kind == "LSTM":
            a = xt @ p["W_x"] + h @ p["W_h"] + p["b"][None]
            i, fg, g, o = (a[:, k * H:(k + 1) * H] for k in range(4))
            c_new = _sigma(fg) * c + _sigma(i) * jnp.tanh(g)
            h_new = _sigma(o) * jnp.tanh(c_new)
        else:  # GRU, PyTorch's variant
            gx = xt @ p["W_x"] + p["b_x"][None]
            gh = h @ p["W_h"] + p["b_h"][None]
            r = _sigma(gx[:, :H] + gh[:, :H])
            z = _sigma(gx[:, H:2 * H] + gh[:, H:2 * H])
            n = jnp.tanh(gx[:, 2 * H:] + r * gh[:, 2 * H:])
            h_new, c_new = (1 - z) * n + z * h, c
        mt = mt[:, None]
        h, c = jnp.where(mt, h_new, h), jnp.where(mt, c_new, c)
        return (h, c), jnp.where(mt, h_new, 0.0)

    (h, c), ys = jax.lax.scan(step, (state[0], state[-1]), (jnp.swapaxes(x, 0, 1), m.T))
    return jnp.swapaxes(ys, 0, 1), ((h, c) if kind == "LSTM" else h)


def _seq_ref(kind, **kw):
    return lambda p, x: recurrent_ref(kind, p, x, **kw)[0]


def _sequence_cases() -> list[LayerCase]:
    T, F, H = 3, 2, 3
    rec = {"RNN": {"W_x": (F, H), "W_h": (H, H), "b": (H,)},
           "LSTM": {"W_x": (F, 4 * H), "W_h": (H, 4 * H), "b": (4 * H,)},
           "GRU": {"W_x": (F, 3 * H), "W_h": (H, 3 * H), "b_x": (3 * H,), "b_h": (3 * H,)}}
    return [
        LayerCase("RNN(3)", funnet.RNN(H), (-1, T, F), (-1, T, H), rec["RNN"], _seq_ref("RNN")),
        LayerCase("LSTM(3)", funnet.LSTM(H), (-1, T, F), (-1, T, H), rec["LSTM"],
                  _seq_ref("LSTM")),
        LayerCase("GRU(3)", funnet.GRU(H), (-1, T, F), (-1, T, H), rec["GRU"], _seq_ref("GRU")),
        LayerCase("LastStep", funnet.LastStep, (-1, T, F), (-1, F), (), lambda p, x: x[:, -1]),
        LayerCase("Bidirectional(GRU(3))", funnet.Bidirectional(funnet.GRU(H)), (-1, T, F),
                  (-1, T, 2 * H), (rec["GRU"], rec["GRU"]),
                  lambda p, x: jnp.concatenate([
                      recurrent_ref("GRU", p[0], x)[0],
                      recurrent_ref("GRU", p[1], x[:, ::-1])[0][:, ::-1]], axis=-1)),
        LayerCase("Embedding(7, 2)", funnet.Embedding(7, F), (-1, T), (-1, T, F),
                  {"table": (7, F)}, lambda p, x: p["table"][x], vocab=7),
        LayerCase("serial(Embedding,GRU,LastStep,Dense)",
                  funnet.serial(funnet.Embedding(7, F), funnet.GRU(H), funnet.LastStep,
                                funnet.Dense(2)),
                  (-1, T), (-1, 2),
                  ({"table": (7, F)}, rec["GRU"], (), {"W": (H, 2), "b": (2,)}),
                  lambda p, x: dense_ref(p[3], recurrent_ref("GRU", p[1], p[0]["table"][x])[1]),
                  vocab=7),
    ]


# ---------------------------------------------------------------------------------------
# Graphs (docs/math.md §10): dense N × N formulas, written from the equations.

GRAPH_F = 3  # node features of GRAPH_BATCH


def _graph(rng: np.random.Generator, n: int, senders: list, receivers: list) -> Any:
    return funnet.graph.Graph(jnp.asarray(3.0 * rng.standard_normal((n, GRAPH_F))),
                              jnp.asarray(senders, jnp.int32), jnp.asarray(receivers, jnp.int32))


@functools.cache
def graph_batch(seed: int = 0) -> tuple[Any, tuple]:
    """``(batch, graphs)``: three graphs and their batch, padded to 10 nodes, 14 edges and 5
    graphs. Graph 0 has a duplicate edge (0 → 1 twice), a self loop (2 → 2) and an
    isolated node (4); graph 1 is empty; graph 2 is an undirected path."""
    rng = np.random.default_rng(seed)
    with jax.ensure_compile_time_eval():  # concrete arrays, even when first asked under jit
        graphs = (_graph(rng, 5, [0, 0, 1, 2, 3, 1], [1, 1, 2, 2, 1, 0]),
                  _graph(rng, 0, [], []),
                  _graph(rng, 3, [0, 1, 1, 2], [1, 0, 2, 1]))
        batched = funnet.graph.batch(list(graphs))
        return funnet.graph.pad(batched, n_node=10, n_edge=14, n_graph=5), graphs


def output_array(y: Any) -> Any:
    """The array of a layer's output: a graph's node features, or the output itself."""
    return y.nodes if isinstance(y, funnet.graph.Graph) else y


def output_rows(case: LayerCase, x: Any) -> int:
    """How many rows the case's output has for input ``x``: the batch size, or for a graph
    input its nodes (its graphs for a graph-level output)."""
    if not case.graph:
        return np.shape(x)[0]
    return len(x.n_node) if case.graph_level else x.nodes.shape[0]


def one_at_a_time(case: LayerCase, apply: Callable[[Any], Any], x: Any) -> tuple[Any, Any]:
    """``(each alone, batched)``: the output computed one sample at a time (``jax.vmap``
    over rows) and at once; for a graph case, each graph of GRAPH_BATCH alone, its rows
    concatenated, against the batch's rows of real nodes (or graphs)."""
    if not case.graph:
        return jax.vmap(lambda xi: apply(xi[None])[0])(x), apply(x)
    batch, graphs = graph_batch()
    if case.graph_level:
        real = np.flatnonzero(np.asarray(batch.graph_mask))
    else:
        real = np.flatnonzero(np.repeat(np.asarray(batch.graph_mask), np.asarray(batch.n_node)))
    alone = jnp.concatenate([output_array(apply(g)) for g in graphs])
    return alone, output_array(apply(x))[real]


def _one_hot_edges(g: Any) -> tuple[jax.Array, jax.Array]:
    """``(S, R) [E, N]``: ``S[e, j] = 1`` iff edge ``e`` leaves ``j``; ``R`` likewise into."""
    n = g.nodes.shape[0]
    return jax.nn.one_hot(g.senders, n), jax.nn.one_hot(g.receivers, n)


def dense_adjacency(g: Any, self_loops: bool = True) -> jax.Array:
    """``Ã = A (+ I)``, ``A_ij`` = the number of edges ``j → i`` (``Rᵀ S``)."""
    s, r = _one_hot_edges(g)
    a = r.T @ s
    return a + jnp.eye(a.shape[0]) if self_loops else a


def gcn_ref(p: dict, g: Any) -> Any:
    """``Â H W + b`` with ``Â = D_in^{-1/2} Ã D_out^{-1/2}`` (every degree ≥ 1: self loops)."""
    a = dense_adjacency(g)
    a_hat = a / jnp.sqrt(a.sum(1))[:, None] / jnp.sqrt(a.sum(0))[None, :]
    return g._replace(nodes=a_hat @ g.nodes @ p["W"] + _rows(p["b"], g.nodes))


def gat_ref(p: dict, g: Any, heads: int, combine: str = "concat", slope: float = 0.2,
            self_loops: bool = True) -> Any:
    """Every pair ``(i, j)``: ``e_ij = LeakyReLU(a_dst·V_i + a_src·V_j)`` per head, weighted
    by the edge count ``Ã_ij`` in the softmax over ``j``; ``h_i' = Σ_j α_ij V_j``."""
    n = g.nodes.shape[0]
    v = (g.nodes @ p["W"]).reshape(n, heads, -1)  # [N, K, M]
    dst = jnp.einsum("ikm,km->ik", v, p["a_dst"])
    src = jnp.einsum("jkm,km->jk", v, p["a_src"])
    u = dst[:, None, :] + src[None, :, :]  # [i, j, K]
    e = jnp.where(u > 0, u, slope * u)
    a = dense_adjacency(g, self_loops)[:, :, None]  # [i, j, 1]
    top = jnp.max(jnp.where(a > 0, e, -jnp.inf), axis=1, keepdims=True)
    w = a * jnp.exp(jnp.where(a > 0, e - top, 0.0))
    total = w.sum(axis=1, keepdims=True)
    alpha = w / jnp.where(total > 0, total, 1.0)
    out = jnp.einsum("ijk,jkm->ikm", alpha, v)
    out = out.reshape(n, -1) if combine == "concat" else out.mean(axis=1)
    return g._replace(nodes=out + _rows(p["b"], out))


def message_passing_ref(p: tuple, g: Any) -> Any:
    """``m = tanh([H_s ‖ H_r] W₁ + b₁)``, ``M = mean over incoming edges``,
    ``h' = [H ‖ M] W₂ + b₂``, with the gathers and sums as one-hot products."""
    s, r = _one_hot_edges(g)
    m = jnp.tanh(dense_ref(p[0][0], jnp.concatenate([s @ g.nodes, r @ g.nodes], axis=1)))
    count = r.sum(axis=0)[:, None]
    agg = (r.T @ m) / jnp.where(count > 0, count, 1.0)
    return g._replace(nodes=dense_ref(p[1], jnp.concatenate([g.nodes, agg], axis=1)))


def membership(g: Any) -> jax.Array:
    """``[G, N]``: 1 where node ``i`` belongs to a real graph ``k`` (by ``n_node``)."""
    ends = jnp.cumsum(g.n_node)
    i = jnp.arange(g.nodes.shape[0])[None, :]
    inside = (i >= (ends - g.n_node)[:, None]) & (i < ends[:, None])
    return (inside & g.graph_mask[:, None]).astype(g.nodes.dtype)


def readout_ref(kind: str, g: Any) -> jax.Array:
    """Each real graph's sum, mean or max over its nodes; 0 for empty and padding graphs."""
    member = membership(g)
    count = member.sum(axis=1, keepdims=True)
    if kind == "max":
        top = jnp.max(jnp.where(member[:, :, None] > 0, g.nodes[None], -jnp.inf), axis=1)
        return jnp.where(count > 0, top, 0.0)
    total = member @ g.nodes
    return total / jnp.where(count > 0, count, 1.0) if kind == "mean" else total


def _graph_cases() -> list[LayerCase]:
    F = GRAPH_F
    gat = {"W": (F, 4), "a_src": (2, 2), "a_dst": (2, 2), "b": (4,)}
    return [
        LayerCase("GraphConv(3)", funnet.GraphConv(3), (-1, F), (-1, 3),
                  {"W": (F, 3), "b": (3,)}, gcn_ref, graph=True),
        LayerCase("GraphAttention(2, heads=2)", funnet.GraphAttention(2, heads=2), (-1, F),
                  (-1, 4), gat, lambda p, g: gat_ref(p, g, heads=2), graph=True),
        LayerCase("MessagePassing(serial(Dense(3), Tanh), Dense(2), mean)",
                  funnet.MessagePassing(funnet.serial(funnet.Dense(3), funnet.Tanh),
                                        funnet.Dense(2), aggregate="mean"),
                  (-1, F), (-1, 2),
                  (({"W": (2 * F, 3), "b": (3,)}, ()), {"W": (F + 3, 2), "b": (2,)}),
                  message_passing_ref, graph=True),
        LayerCase("Nodes", funnet.Nodes, (-1, F), (-1, F), (),
                  lambda p, g: g.nodes * membership(g).sum(axis=0)[:, None], graph=True),
        LayerCase("Readout('max')", funnet.Readout("max"), (-1, F), (-1, F), (),
                  lambda p, g: readout_ref("max", g), graph=True, graph_level=True),
        LayerCase("serial(GraphConv(4), nodewise(Relu), Readout('mean'), Dense(2))",
                  funnet.serial(funnet.GraphConv(4), funnet.nodewise(funnet.Relu),
                                funnet.Readout("mean"), funnet.Dense(2)),
                  (-1, F), (-1, 2), ({"W": (F, 4), "b": (4,)}, (), (), {"W": (4, 2), "b": (2,)}),
                  lambda p, g: dense_ref(p[3], readout_ref("mean", g._replace(
                      nodes=jnp.maximum(gcn_ref(p[0], g).nodes, 0)))),
                  graph=True, graph_level=True),
    ]


# ---------------------------------------------------------------------------------------
# Attention (docs/math.md §11): plain per-head formulas, written from the equations.


def attention_ref(q, k, v, allowed=None):
    """``O = softmax_rows(Q Kᵀ / √d) V`` on ``[B, T, N, d]``, one head at a time.

    ``allowed`` (broadcasting to ``[B, N, T_q, T_k]``): masked scores become ``-1e30`` (their
    exponential is 0 beside any allowed one); a row without an allowed key is then
    uniform, and is multiplied by 0: funnet's convention ``O = 0`` there.
    """
    outs = []
    for h in range(q.shape[2]):
        s = jnp.einsum("bid,bjd->bij", q[:, :, h], k[:, :, h]) / np.sqrt(q.shape[-1])
        if allowed is not None:
            a = jnp.broadcast_to(allowed, (q.shape[0], q.shape[2]) + s.shape[1:])[:, h]
            s = jnp.where(a, s, -1e30)
        e = jnp.exp(s - jnp.max(s, axis=-1, keepdims=True))
        p = e / jnp.sum(e, axis=-1, keepdims=True)
        if allowed is not None:
            p = p * jnp.any(a, axis=-1, keepdims=True)
        outs.append(jnp.einsum("bij,bjd->bid", p, v[:, :, h]))
    return jnp.stack(outs, axis=2)


def causal_ref(t_q, t_k):
    """``[1, 1, T_q, T_k]``: key ``j`` allowed for query ``i`` iff ``j ≤ i``."""
    return np.tril(np.ones((t_q, t_k), bool))[None, None]


def mha_ref(p, heads, xq, xkv=None, *, causal=False, mq=None, mkv=None):
    """Multi-head attention from its equations (``W_q`` … as docs/attention.md): the
    projections, ``heads`` heads of ``attention_ref`` with key padding ``mkv``, query
    padding ``mq`` (those steps output 0) and ``causal``, concatenated, projected."""
    xkv = xq if xkv is None else xkv

    def project(x, name):
        return x @ p["W_" + name] + _rows(p["b_" + name], x)

    def split(z):
        return z.reshape(z.shape[:2] + (heads, -1))

    b, t_q, t_k = xq.shape[0], xq.shape[1], xkv.shape[1]
    a = np.ones((1, 1, t_q, t_k), bool)
    if causal:
        a = a & causal_ref(t_q, t_k)
    if mq is not None:
        a = a & (jnp.asarray(mq) != 0)[:, None, :, None]
    if mkv is not None:
        a = a & (jnp.asarray(mkv) != 0)[:, None, None, :]
    o = attention_ref(split(project(xq, "q")), split(project(xkv, "k")),
                      split(project(xkv, "v")), a)
    y = project(o.reshape(b, t_q, -1), "o")
    return y if mq is None else y * (jnp.asarray(mq) != 0)[:, :, None]


def _attention_layer(kind: str) -> funnet.Layer:
    """The public functions as a layer on ``x [B, T, N, d]`` (``q = k = v = x``, so
    ``dx = dq + dk + dv``): ``kind`` "causal" through ``dot_product_attention``,
    "masked" through ``attention_weights`` with ``ATTENTION_MASK``; the backward is
    ``dot_product_attention_backward`` either way."""
    options = {"causal": True} if kind == "causal" else {"mask": ATTENTION_MASK}

    def init(key, input_shape):
        return input_shape, ()

    def forward(params, x):
        if kind == "causal":
            y = funnet.dot_product_attention(x, x, x, **options)
        else:
            y = jnp.einsum("bnts,bsnd->btnd", funnet.attention_weights(x, x, **options), x)
        return y, x

    def backward(params, x, dy):
        return (), sum(funnet.dot_product_attention_backward(x, x, x, dy, **options))

    name = ("dot_product_attention(x, x, x, causal=True)" if kind == "causal" else
            "attention_weights(x, x, mask) V")
    return funnet.layer(init, forward, backward, name=name)


#: A fixed mask ``[1, 1, T_q, T_k]`` (T = 3) with a fully masked query row (row 1).
ATTENTION_MASK = np.array([[True, False, True], [False, False, False],
                           [False, True, True]])[None, None]


def _attention_cases() -> list[LayerCase]:
    T, D, N = 3, 4, 2
    mha = {"W_q": (D, 4), "b_q": (4,), "W_k": (D, 4), "b_k": (4,), "W_v": (D, 4),
           "b_v": (4,), "W_o": (4, D), "b_o": (D,)}
    return [
        LayerCase("MultiHeadAttention(2, 4)", funnet.MultiHeadAttention(N, 4), (-1, T, D),
                  (-1, T, D), mha, lambda p, x: mha_ref(p, N, x)),
        LayerCase("MultiHeadAttention(2, 4, out_dim=3, causal=True)",
                  funnet.MultiHeadAttention(N, 4, out_dim=3, causal=True), (-1, T, D),
                  (-1, T, 3), {**mha, "W_o": (4, 3), "b_o": (3,)},
                  lambda p, x: mha_ref(p, N, x, causal=True)),
        LayerCase("dot_product_attention(x, x, x, causal=True)", _attention_layer("causal"),
                  (-1, T, N, D), (-1, T, N, D), (),
                  lambda p, x: attention_ref(x, x, x, causal_ref(T, T)),
                  covers=("dot_product_attention", "dot_product_attention_backward")),
        LayerCase("attention_weights(x, x, mask) V", _attention_layer("masked"),
                  (-1, T, N, D), (-1, T, N, D), (),
                  lambda p, x: attention_ref(x, x, x, ATTENTION_MASK),
                  covers=("attention_weights", "dot_product_attention_backward")),
    ]


_CONV_LAYOUTS = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC"),
                 3: ("NDHWC", "DHWIO", "NDHWC")}


def conv_ref(strides, padding, dilation=None, groups=1, *, transpose=False):
    """A convolution as lax computes it from the layout strings and the padding as given
    (string or pairs), plus the bias: independent of the layer's own layout and padding
    arithmetic (docs/math.md §8.1)."""

    def ref(p, x):
        n = x.ndim - 2
        if transpose:
            y = jax.lax.conv_transpose(x, p["W"], strides, padding, rhs_dilation=dilation,
                                       dimension_numbers=_CONV_LAYOUTS[n])
        else:
            y = jax.lax.conv_general_dilated(x, p["W"], strides, padding,
                                             rhs_dilation=dilation,
                                             dimension_numbers=_CONV_LAYOUTS[n],
                                             feature_group_count=groups)
        return y + p["b"].reshape((1,) * (n + 1) + (-1,))

    return ref


def _conv_cases() -> list[LayerCase]:
    pairs = ((1, 0), (0, 1))
    return [
        LayerCase("Conv 1-D: strides 2, SAME", funnet.Conv(4, 3, strides=2, padding="SAME"),
                  (-1, 7, 3), (-1, 4, 4), {"W": (3, 3, 4), "b": (4,)},
                  conv_ref((2,), "SAME")),
        LayerCase("Conv 2-D: strides 2, explicit padding, groups 2",
                  funnet.Conv(4, (3, 2), strides=2, padding=pairs, groups=2),
                  (-1, 5, 6, 2), (-1, 2, 3, 4), {"W": (3, 2, 1, 4), "b": (4,)},
                  conv_ref((2, 2), pairs, groups=2)),
        LayerCase("Conv 3-D: dilation (1, 1, 2)", funnet.Conv(2, 2, dilation=(1, 1, 2)),
                  (-1, 3, 4, 3, 2), (-1, 2, 3, 1, 2), {"W": (2, 2, 2, 2, 2), "b": (2,)},
                  conv_ref((1, 1, 1), "VALID", (1, 1, 2))),
        LayerCase("ConvTranspose 2-D: strides 2, SAME",
                  funnet.ConvTranspose(3, (3, 2), strides=2, padding="SAME"),
                  (-1, 4, 3, 2), (-1, 8, 6, 3), {"W": (3, 2, 2, 3), "b": (3,)},
                  conv_ref((2, 2), "SAME", transpose=True)),
    ]


ACTIVATION_CASES_BY_ID: dict[str, ActivationCase] = {a.id: a for a in ACTIVATION_CASES}
LAYER_CASES: list[LayerCase] = _layer_cases()


def batch_shape(shape: tuple[int, ...], n: int) -> tuple[int, ...]:
    """``shape`` with its batch axis (-1) set to ``n``."""
    return (n,) + tuple(shape[1:])


def random_input(case: LayerCase, n: int = 5, seed: int = 0) -> jax.Array:
    """A float64 batch for ``case``, spread (σ = 3) so that both sides of every kink occur;
    integer ids in ``[0, case.vocab)`` for a case with integer inputs."""
    rng = np.random.default_rng(seed)
    if case.graph:  # one padded batch of graphs, whatever n
        return graph_batch(seed)[0]
    if case.vocab:
        return jnp.asarray(rng.integers(0, case.vocab, batch_shape(case.input_shape, n)))
    return jnp.asarray(3.0 * rng.standard_normal(batch_shape(case.input_shape, n)))


def init_shapes(layer: funnet.Layer, input_shape) -> tuple[Any, Any]:
    """``(output_shape, params as ShapeDtypeStructs)`` from ``init`` without running it.

    ``jax.eval_shape`` traces ``init`` abstractly: no random numbers are drawn, nothing is
    compiled (a real Glorot init costs ~0.5 s of XLA compile per new shape).
    """
    box = {}

    def params_only(key):  # init_with_state: stateful layers too (their state is dropped)
        box["out"], params, _ = layer.init_with_state(key, input_shape)
        return params

    params = jax.eval_shape(params_only, jax.random.PRNGKey(0))
    return box["out"], params


def init_state(layer: funnet.Layer, input_shape) -> Any:
    """The state ``init_with_state`` gives (``()`` for a layer without state)."""
    if not layer.stateful:
        return ()
    return layer.init_with_state(jax.random.PRNGKey(0), input_shape)[2]


def init_params(layer: funnet.Layer, input_shape, seed: int = 0) -> Any:
    """Random float64 params with ``init``'s structure and shapes (numpy RNG, σ = 0.5).

    Biases and PReLU slopes are random too (not 0 / 0.25), so every gradient is exercised.
    """
    _, shapes = init_shapes(layer, input_shape)
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape)), shapes
    )

