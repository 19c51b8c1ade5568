"""Activations (docs/math.md §2), parameterised over the one registry in ``_registry.py``.

Each hand-derived derivative is checked against independent witnesses: autodiff of the
plain formula, central differences, ``sympy.diff`` of the formula, and high-precision
(mpmath) values at the extremes.

Speed: every activation is evaluated on two fixed inputs only (``GRID_AWAY`` and
``SPECIAL``), once per case and dtype (memoised), so JAX compiles each primitive once for
the module; forward-mode results (through each activation's ``jvp_twin``) are computed in
one jitted call by a module fixture.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
import sympy as sp
from _registry import (
    ACTIVATION_CASES,
    ACTIVATION_CASES_BY_ID,
    GRID_AWAY,
    KINK_POINTS,
    X,
    init_params,
)
from jax.flatten_util import ravel_pytree

import funnet

EPS64 = np.finfo(np.float64).eps
CASES = [pytest.param(c, id=c.id) for c in ACTIVATION_CASES]
KINKED = [pytest.param(c, id=c.id) for c in ACTIVATION_CASES if c.kinks]
DTYPES = [pytest.param(np.float32, id="f32"), pytest.param(np.float64, id="f64")]

EXTREMES = [40.0, -40.0, 800.0, -800.0, 1e4, -1e4, np.inf, -np.inf]
NAN_INPUT = [np.nan, 0.5, -0.5]
#: the kinks, the extremes and NaN in one input
SPECIAL = [*KINK_POINTS, *EXTREMES, *NAN_INPUT]
KINKS_AT = slice(0, len(KINK_POINTS))
EXTREMES_AT = slice(KINKS_AT.stop, KINKS_AT.stop + len(EXTREMES))
NAN_AT = slice(EXTREMES_AT.stop, len(SPECIAL))


def _grad(fn):
    return jax.vmap(jax.grad(fn))


def _second(fn):
    return jax.vmap(jax.grad(jax.grad(fn)))  # reverse over reverse


def _on_grid(case, x):
    return {
        "fn": case.fn(x),
        "derivative": case.derivative(x),  # the hand f'
        "grad": _grad(case.fn)(x),  # jax.grad through the custom_vjp
        "second": _second(case.fn)(x),
        "ref": case.ref(x),
        "ref_grad": _grad(case.ref)(x),  # autodiff of the plain formula
        "dref": case.dref(x),  # the table's f' formula
    }


def _at_special(case, x):
    _, params = case.layer.init(None, (-1, len(SPECIAL)))  # draws nothing: slope = slope_init
    _, layer_dx = funnet.backprop.backward(case.layer, params, x[None], jnp.ones_like(x)[None])
    return {
        "fn": case.fn(x),
        "derivative": case.derivative(x),
        "grad": _grad(case.fn)(x),
        "second": _second(case.fn)(x),
        "layer_backward": layer_dx[0],  # the layer's hand backward with dy = 1
        "ref": case.ref(x),
    }


@functools.cache
def _all_on_grid() -> dict:
    return jax.jit(lambda x: {c.id: _on_grid(c, x) for c in ACTIVATION_CASES})(
        jnp.asarray(GRID_AWAY))


@functools.cache
def _all_at_special(dtype: type) -> dict:
    return jax.jit(lambda x: {c.id: _at_special(c, x) for c in ACTIVATION_CASES})(
        jnp.asarray(SPECIAL, dtype))


def on_grid(case_id: str) -> dict[str, jax.Array]:
    """Everything about a case on ``GRID_AWAY`` (float64); one jit for all cases, memoised."""
    return _all_on_grid()[case_id]


def at_special(case_id: str, dtype: type) -> dict[str, jax.Array]:
    """Everything about a case on ``SPECIAL`` in ``dtype``; one jit for all cases, memoised."""
    return _all_at_special(dtype)[case_id]


def test_registry_covers_every_activation():
    names = {c.id.split("[")[0] for c in ACTIVATION_CASES}
    assert names == set(funnet.activations.ACTIVATIONS) | {"prelu"}
    for case in ACTIVATION_CASES:
        assert set(case.kinks) <= set(KINK_POINTS), case.id
    assert not np.any(np.isin(GRID_AWAY, KINK_POINTS))


# --- values ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_value_matches_formula(case):
    r = on_grid(case.id)
    # The two sides differ only in rounding: e.g. tanh as (eˣ - e⁻ˣ)/(eˣ + e⁻ˣ) vs jnp.tanh,
    # log(1 + eˣ) vs logaddexp; each is within ~100 ulp of the true value on [-6, 6], ±12.
    np.testing.assert_allclose(r["fn"], r["ref"], rtol=1e-13, atol=1e-15)
    special = at_special(case.id, np.float64)  # and at the kinks (step(0) = 0)
    np.testing.assert_allclose(special["fn"][KINKS_AT], special["ref"][KINKS_AT], rtol=1e-15,
                               atol=0)


@pytest.mark.parametrize("case", CASES)
def test_value_matches_sympy(case):
    sym = case.sym_derivative(order=0)(GRID_AWAY)
    np.testing.assert_allclose(on_grid(case.id)["fn"], sym, rtol=1e-13, atol=1e-15)


# --- first derivatives ------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_derivative_matches_autodiff_of_formula(case):
    r = on_grid(case.id)
    # jax.grad goes through the custom_vjp, whose rule is dy ⊙ f'(x) with dy = 1: f' exactly.
    np.testing.assert_array_equal(r["grad"], r["derivative"])
    # Against autodiff of the plain formula and the table's f' formula: rounding only. The
    # plain tanh formula's derivative evaluates 1 - tanh² with absolute error O(ε) (it cancels
    # for |x| ≫ 1), hence an absolute floor of ~50ε besides the relative 1e-12.
    np.testing.assert_allclose(r["derivative"], r["ref_grad"], rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(r["derivative"], r["dref"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("case", CASES)
def test_derivative_matches_central_differences(case):
    x, h = GRID_AWAY, 1e-6  # x ≥ 1e-2 from any kink, so x ± h never straddles one
    numeric = (np.asarray(case.fn(jnp.asarray(x + h))) - np.asarray(case.fn(jnp.asarray(x - h))))
    numeric = numeric / (2 * h)
    # Error of the central difference: truncation h²/6·|f'''|, ≤ 3.4e-13 where |f'''| ≤ 2
    # (every activation here, tanh at 0 being the largest, except exp, whose f''' = f: its
    # bound is h²/6·|f|), rounding ≈ ε·|f(x)|/h ≈ 2.2e-10·|f(x)| (f(x ± h) are each rounded
    # to ε relative). Tolerance: 10× that bound, per point.
    r = on_grid(case.id)
    f = np.abs(r["fn"])
    tol = 10 * (EPS64 * (f + 1) / h + h**2 * np.maximum(2, f) / 6)
    err = np.abs(r["derivative"] - numeric)
    assert np.all(err <= tol), (x[np.argmax(err - tol)], np.max(err - tol))


@pytest.mark.parametrize("case", CASES)
def test_derivative_matches_sympy_per_piece(case):
    r = on_grid(case.id)
    for expr, lo, hi in case.pieces:  # every smooth piece is witnessed, none left out
        inside = (GRID_AWAY > float(lo)) & (GRID_AWAY < float(hi))
        assert inside.sum() >= 3, f"{case.id}: piece {expr} on ({lo}, {hi}) not sampled"
        d = np.vectorize(sp.lambdify(X, sp.diff(expr, X), "numpy"), otypes=[np.float64])
        expected = d(GRID_AWAY[inside])
        # sympy's derivative, evaluated in float64, rounds like the formulas above.
        for name in ("derivative", "grad", "dref"):
            np.testing.assert_allclose(np.asarray(r[name])[inside], expected, rtol=1e-12,
                                       atol=1e-14, err_msg=f"{name} on piece {expr}")


# --- kinks ------------------------------------------------------------------------------


def _documented(case, dtype):
    mask = np.isin(KINK_POINTS, list(case.kinks))
    return mask, np.array([case.kinks.get(k, 0.0) for k in KINK_POINTS], dtype)[mask]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", KINKED)
def test_kink_derivative_is_the_documented_value(case, dtype):
    r = at_special(case.id, dtype)
    mask, expected = _documented(case, dtype)
    # act.derivative, jax.grad, and the layer's hand backward: the same convention
    for name in ("derivative", "grad", "layer_backward"):
        np.testing.assert_array_equal(np.asarray(r[name][KINKS_AT])[mask], expected, err_msg=name)


def test_documented_kink_table():
    # The table of activations.py's module docstring, stated once more, literally.
    table = {
        "relu": {0.0: 0.0}, "leaky_relu": {0.0: 0.01}, "leaky_relu[slope=0.2]": {0.0: 0.2},
        "hard_tanh": {-1.0: 0.0, 1.0: 0.0}, "hard_logistic": {-2.0: 0.0, 2.0: 0.0},
        "elu": {0.0: 1.0}, "elu[alpha=0.5]": {0.0: 0.5}, "step": {0.0: 0.0},
        "prelu[slope=0.25]": {0.0: 0.25}, "prelu[slope=0.1]": {0.0: 0.1},
        "selu": {0.0: 1.0507009873554804934193349852946 * 1.6732632423543772848170429916717},
    }
    for name, kinks in table.items():
        case = ACTIVATION_CASES_BY_ID[name]
        assert case.kinks == kinks
        derivative = np.asarray(at_special(name, np.float64)["derivative"][KINKS_AT])
        for k, v in kinks.items():
            assert derivative[KINK_POINTS.index(k)] == v
    assert float(funnet.step(0.0)) == 0.0 and float(funnet.step(1e-300)) == 1.0


# --- extremes, NaN ------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_extremes_match_exact_values(case, dtype):
    r = {k: np.asarray(v[EXTREMES_AT]) for k, v in at_special(case.id, dtype).items()
         if k != "ref"}  # (the plain formulas overflow at ±800)
    exact_value = np.array([case.exact(v, 0) for v in EXTREMES]).astype(dtype)
    exact_deriv = np.array([case.exact(v, 1) for v in EXTREMES]).astype(dtype)
    # Correctly rounded references (mpmath); allow 16 ulp, and anything below the smallest
    # normal number (XLA may flush subnormals to zero).
    tol = {"rtol": 16 * np.finfo(dtype).eps, "atol": np.finfo(dtype).tiny}
    np.testing.assert_allclose(r["fn"], exact_value, **tol)
    for name in ("derivative", "grad", "layer_backward"):
        np.testing.assert_allclose(r[name], exact_deriv, **tol, err_msg=name)
    assert not np.any(np.isnan(r["fn"]))
    # Finite wherever the true derivative is: every one here, even at ±inf, except exp's,
    # which overflows to inf (as the true value does in this dtype) at 800, 1e4 and inf.
    finite = np.isfinite(exact_deriv)
    assert finite.all() or case.id == "exp", "only exp has a derivative beyond the dtype"
    np.testing.assert_array_equal(np.isfinite(r["derivative"]), finite)
    # Second derivative (autodiff of the hand f'): finite at every finite extreme where f' is
    # (all but exp's overflow), never NaN.
    assert np.all(np.isfinite(r["second"][:6][finite[:6]]))
    assert not np.any(np.isnan(r["second"]))


def test_gelu_matches_jax_nn_and_the_defaults_differ():
    x = jnp.asarray(GRID_AWAY)
    exact, tanh_form, jax_default = jax.jit(lambda x: (
        funnet.gelu(x), funnet.gelu(x, approximate=True), jax.nn.gelu(x)))(x)
    # jax.nn.gelu evaluates ½x erfc(-x/√2) (exact) and ½x(1 + tanh u) (approximate, its
    # default): the same functions, rounded otherwise (1 + tanh cancels for x ≪ 0, hence
    # the absolute floor, as for the plain formulas of test_value_matches_formula)
    np.testing.assert_allclose(exact, jax.nn.gelu(x, approximate=False), rtol=1e-13,
                               atol=1e-15)
    np.testing.assert_allclose(tanh_form, jax_default, rtol=1e-13, atol=1e-15)
    # funnet's default is the exact form, jax.nn's the approximation: < 4.8e-4 apart
    gap = np.max(np.abs(np.asarray(exact) - np.asarray(jax_default)))
    assert 1e-4 < gap < 1e-3, gap
    assert funnet.Gelu.name == "Gelu" and funnet.Gelu(approximate=True).name == (
        "Gelu(approximate=True)")


def test_named_extremes():
    f64, f32 = jnp.float64, jnp.float32

    def named():
        big, neg = jnp.asarray([1e4, -800.0, -1e4], f64), jnp.asarray([-800.0, -1e4], f64)
        return {
            "softplus(1e4)": (funnet.softplus(big[0]), funnet.softplus(big[0].astype(f32))),
            "logistic(-1e4)": (funnet.logistic(big[2]), jax.grad(funnet.logistic)(big[2])),
            "elu'(-40)": [jax.grad(lambda x, a=a: funnet.elu(x, alpha=a))(jnp.asarray(-40.0, f64))
                          for a in (1.0, 0.5)],
            # no NaN from `where` over exp(-x): gradient and second derivative
            "grads": [jax.grad(lambda x, f=f: jnp.sum(f(x) * 3.0))(neg)
                      for f in (funnet.elu, funnet.softplus)],
            "seconds": [_second(f)(neg) for f in (funnet.elu, funnet.softplus)],
            # the ±inf limits of the leaky family hold for γ = 0 too (0·(-inf) is not NaN)
            "-inf": (funnet.leaky_relu(-jnp.inf, slope=0.0), funnet.prelu(-jnp.inf, 0.0),
                     funnet.leaky_relu(-jnp.inf)),
        }

    for r in (named(), jax.jit(named)()):
        assert [float(v) for v in r["softplus(1e4)"]] == [1e4, 1e4]
        assert [float(v) for v in r["logistic(-1e4)"]] == [0.0, 0.0]
        for alpha, d in zip((1.0, 0.5), r["elu'(-40)"]):
            assert d != 0 and float(d) == pytest.approx(alpha * np.exp(-40.0), rel=1e-14)
        for g in r["grads"]:
            assert np.all(np.isfinite(g)) and np.all(np.asarray(g) >= 0)
        for s2 in r["seconds"]:
            assert np.all(np.isfinite(s2))
        assert [float(v) for v in r["-inf"]] == [0.0, 0.0, -np.inf]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_nan_in_nan_out(case, dtype):
    r = at_special(case.id, dtype)  # no exception on the way, NaN only where NaN went in
    for name in ("fn", "derivative", "grad", "layer_backward"):
        np.testing.assert_array_equal(np.isnan(r[name][NAN_AT]), np.isnan(NAN_INPUT), name)


# --- transformations, dtypes ------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_jit_and_vmap(case):
    # on_grid is jitted (and vmaps the scalar grad); compare with plain eager calls
    r, x = on_grid(case.id), jnp.asarray(GRID_AWAY)
    np.testing.assert_allclose(case.fn(x), r["fn"], rtol=1e-15, atol=0)
    np.testing.assert_allclose(case.derivative(x), r["derivative"], rtol=1e-15, atol=0)
    grad_of_sum = jax.grad(lambda x: jnp.sum(case.fn(x)))(x)  # one vjp of the whole array
    np.testing.assert_allclose(grad_of_sum, r["grad"], rtol=1e-15, atol=0)
    np.testing.assert_array_equal(r["grad"], r["derivative"])


@pytest.mark.parametrize("case", CASES)
def test_grad_of_grad_matches_sympy(case):
    expected = case.sym_derivative(order=2)(GRID_AWAY)
    # f'' by autodiff of the hand f' vs sympy's f'' in float64: both round terms of size O(1)
    # (normalised exponentials), so the error is a few ε absolute.
    np.testing.assert_allclose(on_grid(case.id)["second"], expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_dtype_preserved(case, dtype):
    for name, value in at_special(case.id, dtype).items():
        if name != "ref":  # (the registry's plain formula, not funnet)
            assert value.dtype == dtype, name


def test_integer_input_becomes_float():
    assert funnet.relu(jnp.arange(3)).dtype == jnp.float64
    np.testing.assert_array_equal(funnet.relu(jnp.array([-2, 0, 3])), [0.0, 0.0, 3.0])


def test_hyperparameters_are_checked():
    x = jnp.ones(2)
    with pytest.raises(TypeError, match=r"relu\(\) got unexpected keyword\(s\) \['slope'\]"):
        funnet.relu(x, slope=0.1)
    with pytest.raises(TypeError, match="alpha.*must be a Python number"):
        funnet.elu(x, alpha=jnp.asarray(0.5))
    with pytest.raises(TypeError, match="takes \\['alpha'\\]"):
        funnet.elu.derivative(x, slope=0.5)
    # a True/False hyperparameter takes only True or False, checked before any compute
    with pytest.raises(TypeError, match=r"gelu\(\): hyperparameter approximate=0\.5 must be "
                       r"True or False"):
        funnet.gelu(x, approximate=0.5)
    with pytest.raises(TypeError, match="approximate=1 must be True or False"):
        funnet.Gelu(approximate=1)


# --- PReLU's learnable slope --------------------------------------------------------------

PRELU_SHAPES = [((5, 3), (3,)), ((2, 4, 3), (3,)), ((5, 3), ()), ((3,), (3,)),
                ((5, 1), (3,))]  # x broadcast against the slope: dx summed back to x's shape


def _prelu_plain(x, slope):
    slope = jnp.reshape(slope, (1,) * (x.ndim - jnp.ndim(slope)) + jnp.shape(slope))
    return jnp.where(x > 0, x, slope * x)  # x if x > 0 else γ_i x


def _prelu_problem(x_shape, slope_shape):
    rng = np.random.default_rng(0)
    x, w = (jnp.asarray(rng.standard_normal(x_shape)) for _ in range(2))
    slope = jnp.asarray(rng.uniform(-0.5, 0.5, slope_shape))
    return x, slope, w, lambda prelu: lambda x, s: jnp.sum(w * prelu(x, s))


PROBLEMS = [_prelu_problem(*shapes) for shapes in PRELU_SHAPES]


@pytest.mark.parametrize("x_shape, slope_shape", PRELU_SHAPES)
def test_prelu_gradients_broadcast_over_batch(x_shape, slope_shape):
    x, slope, w, objective = PROBLEMS[PRELU_SHAPES.index((x_shape, slope_shape))]
    got, ref = jax.jit(lambda x, slope: [
        jax.grad(objective(prelu), argnums=(0, 1))(x, slope)
        for prelu in (funnet.prelu, _prelu_plain)
    ])(x, slope)
    assert got[1].shape == slope_shape
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-14, atol=0)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-13, atol=1e-15)
    # dγ_i = Σ over the batch of w ⊙ (0 if x > 0 else x)
    out_shape = jnp.broadcast_shapes(x_shape, slope_shape)
    by_hand = jnp.sum(jnp.broadcast_to(w * funnet.prelu.slope_derivative(x), out_shape),
                      axis=tuple(range(len(out_shape) - len(slope_shape))))
    np.testing.assert_allclose(got[1], jnp.sum(by_hand) if slope_shape == () else by_hand,
                               rtol=1e-13, atol=1e-15)


def test_prelu_at_zero_and_float32():
    slope = jnp.array([0.3, 0.3], jnp.float32)
    x = jnp.zeros(2, jnp.float32)
    gx, gs = jax.grad(lambda x, s: jnp.sum(funnet.prelu(x, s)), argnums=(0, 1))(x, slope)
    np.testing.assert_array_equal(gx, np.float32([0.3, 0.3]))  # prelu'(0) = slope
    np.testing.assert_array_equal(gs, [0.0, 0.0])  # ∂f/∂γ at 0 is x = 0
    assert gx.dtype == gs.dtype == jnp.float32
    assert funnet.prelu(x, 0.3).dtype == jnp.float32


# --- define_activation --------------------------------------------------------------------

# mish, x tanh(softplus(x)): a user-level activation that funnet does not have built in
MISH = X * sp.tanh(sp.log(1 + sp.exp(X)))


def _mish_f(x):
    return x * jnp.tanh(jax.nn.softplus(x))


def _mish(df):
    return funnet.define_activation("mish", _mish_f, df)


def _mish_df(x, y):
    t = jnp.tanh(jax.nn.softplus(x))
    return t + x * jax.nn.sigmoid(x) * (1 - t**2)  # tanh(s) + x σ(x)(1 - tanh²(s)), s' = σ


MISH_RIGHT = _mish(_mish_df)
MISH_WRONG = _mish(lambda x, y: jnp.full_like(x, 7.0))  # deliberately wrong f'


def test_define_activation_mish():
    x = jnp.asarray(GRID_AWAY)
    expected = sp.lambdify(X, sp.diff(MISH, X), "numpy")(GRID_AWAY)
    np.testing.assert_allclose(MISH_RIGHT(x), sp.lambdify(X, MISH, "numpy")(GRID_AWAY),
                               rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(_grad(MISH_RIGHT)(x), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(MISH_RIGHT.derivative(x), expected, rtol=1e-12, atol=1e-14)
    assert isinstance(MISH_RIGHT, funnet.Activation) and repr(MISH_RIGHT) == "<activation mish>"


def test_define_activation_uses_the_given_derivative_not_autodiff():
    x = jnp.asarray([-2.0, 0.5, 3.0])
    np.testing.assert_array_equal(_grad(MISH_WRONG)(x), [7.0, 7.0, 7.0])
    true = jax.vmap(jax.grad(_mish_f))(x)
    assert not np.allclose(true, 7.0)
    # and so does the layer's hand backward
    _, dx = funnet.backprop.backward(funnet.ActivationLayer(MISH_WRONG), (), x[None],
                                     jnp.ones((1, 3)))
    np.testing.assert_array_equal(dx, [[7.0, 7.0, 7.0]])


def test_define_activation_with_hyperparameter():
    def df(x, y, beta):
        s = jax.nn.sigmoid(beta * x)
        return s * (1 + beta * x * (1 - s))  # σ(βx) + βx σ(βx)(1 - σ(βx))

    swish = funnet.define_activation(
        "swish_beta", lambda x, beta: x * jax.nn.sigmoid(beta * x), df, beta=1.0
    )
    expected = sp.lambdify(X, sp.diff(X / (1 + sp.exp(-2 * X)), X), "numpy")
    x = jnp.asarray(GRID_AWAY)
    np.testing.assert_allclose(_grad(lambda x: swish(x, beta=2.0))(x), expected(GRID_AWAY),
                               rtol=1e-12, atol=1e-14)
    # β = 1 is the built-in swish (= silu): the same f' from two separate hand derivations
    np.testing.assert_allclose(swish.derivative(x), funnet.silu.derivative(x), rtol=1e-14,
                               atol=1e-16)
    layer = funnet.ActivationLayer(swish, beta=2.0)
    assert layer.name == "SwishBeta(beta=2.0)"
    net = funnet.serial(funnet.Dense(3), layer, funnet.Dense(1))
    params = init_params(net, (-1, 2))
    xb, yb = jnp.ones((4, 2)), jnp.zeros((4, 1))
    _, grads, ref = jax.jit(lambda p: (
        *funnet.backprop.value_and_grad(net, funnet.mse)(p, xb, yb),
        jax.grad(lambda p: funnet.mse(net.apply(p, xb), yb))(p)))(params)
    np.testing.assert_allclose(grads[0]["W"], ref[0]["W"], rtol=1e-12, atol=1e-15)
    with pytest.raises(TypeError, match="gamma"):
        swish(x, gamma=1.0)


# --- forward mode: the twins ---------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_forward_mode_on_the_vjp_wiring_names_the_twin(case):
    with pytest.raises(TypeError, match=r"jvp_twin.*funnet\.forward_twin"):
        jax.jacfwd(case.fn)(jnp.asarray(0.5))
    with pytest.raises(TypeError, match=r"jvp_twin"):
        jax.jvp(case.fn, (jnp.asarray(0.5),), (jnp.asarray(1.0),))


@pytest.mark.parametrize("case", CASES)
def test_hessian_works_on_the_vjp_wiring_itself(case):
    # forward over reverse: the custom_vjp's bwd (the hand f') is plain code, so no twin is
    # needed; the value is f'' of the formula (sympy), away from kinks
    x = jnp.asarray(GRID_AWAY[::10])
    got = jax.vmap(jax.hessian(case.fn))(x)
    np.testing.assert_allclose(got, case.sym_derivative(order=2)(GRID_AWAY[::10]),
                               rtol=1e-10, atol=1e-13)


def test_twins_are_values_one_per_wiring():
    for act in [*funnet.activations.ACTIVATIONS.values(), funnet.prelu]:
        assert act.jvp_twin is act.jvp_twin and act.formula is act.formula
        assert act.jvp_twin.rewired("vjp") is act and act.formula.jvp_twin is act.jvp_twin
        assert (act.wiring, act.jvp_twin.wiring, act.formula.wiring) == ("vjp", "jvp", "formula")
    with pytest.raises(ValueError, match="wiring"):
        funnet.tanh.rewired("backward")


@pytest.mark.parametrize("case", CASES)
def test_formula_wiring_differentiates_the_formula(case):
    # the "formula" wiring has no custom rule: JAX differentiates f itself (here away from
    # kinks, where that is f'); the hand f' is not involved
    act = funnet.activations.ACTIVATIONS.get(case.id.split("[")[0])
    if act is None:
        return  # prelu: covered by test_prelu_formula_wiring
    wrong = funnet.define_activation("wrong", act.f, lambda x, y, **h: 7.0 * jnp.ones_like(x),
                                     **act.defaults)
    x = jnp.asarray(GRID_AWAY)
    hyper = {k: v for k, v in act.defaults.items()}
    got = jax.vmap(jax.grad(lambda v: wrong.formula(v, **hyper)))(x)
    assert not np.allclose(got, 7.0) or case.id == "step"
    # autodiff of f forms e.g. 1 - tanh(x)²: absolute rounding of O(1) terms, a few ulp
    np.testing.assert_allclose(jax.vmap(jax.grad(lambda v: act.formula(v, **hyper)))(x),
                               act.derivative(x, **hyper), rtol=1e-12, atol=8 * EPS64)


def test_prelu_formula_wiring():
    x, slope = jnp.array([-2.0, 3.0]), jnp.array([0.25, 0.5])
    gx, gs = jax.grad(lambda a, s: jnp.sum(funnet.prelu.formula(a, s)), argnums=(0, 1))(x, slope)
    assert gx.tolist() == [0.25, 1.0] and gs.tolist() == [-2.0, 0.0]


@pytest.fixture(scope="module")
def forward():
    """Everything computed in forward mode through the twins: {case id: {what: array}}."""
    x = jnp.asarray(GRID_AWAY)
    special = {dtype: jnp.asarray(SPECIAL, dtype) for dtype in (np.float32, np.float64)}

    def evaluate(f, x, special):
        jac = jax.vmap(jax.jacfwd(f))
        return {
            "jacfwd": jac(x),
            "hessian": jax.vmap(jax.hessian(f))(x),
            # Hessian-vector product: forward over reverse
            "hvp": jax.vmap(lambda xi: jax.jvp(jax.grad(f), (xi,), (3.0,))[1])(x),
            "special": {k: jac(v) for k, v in special.items()},
        }

    def everything(x, special, prelu_problems):  # one jit: one compile for all of it
        out = {case.id: evaluate(case.twin, x, special) for case in ACTIVATION_CASES}
        for name, act in [("mish", MISH_RIGHT), ("mish_wrong", MISH_WRONG)]:
            out[name] = jax.vmap(jax.jacfwd(act.jvp_twin))(x)
        out["prelu"] = [
            jax.jacfwd(objective(funnet.prelu.jvp_twin), argnums=(0, 1))(x, slope)
            for (x, slope), (_, _, _, objective) in zip(prelu_problems, PROBLEMS)
        ]
        return out

    return jax.jit(everything)(
        x, {str(k): v for k, v in special.items()}, [p[:2] for p in PROBLEMS]
    )


@pytest.mark.parametrize("case", CASES)
def test_forward_mode_jacfwd_hessian_hvp(case, forward):
    r, g = forward[case.id], on_grid(case.id)
    np.testing.assert_allclose(r["jacfwd"], g["derivative"], rtol=1e-15, atol=0)
    second = case.sym_derivative(order=2)(GRID_AWAY)
    # as test_grad_of_grad_matches_sympy: rounding of O(1) terms
    np.testing.assert_allclose(r["hessian"], second, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(r["hvp"], 3.0 * second, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(r["hessian"], g["second"], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
def test_forward_mode_kinks_nan_dtype(case, dtype, forward):
    r = np.asarray(forward[case.id]["special"][str(dtype)])
    assert r.dtype == dtype
    mask, expected = _documented(case, dtype)
    np.testing.assert_array_equal(r[KINKS_AT][mask], expected)
    np.testing.assert_array_equal(np.isnan(r[NAN_AT]), np.isnan(NAN_INPUT))
    # The same hand f', compiled in two XLA programs: XLA:CPU may evaluate a transcendental
    # fused with other ops (erfc next to exp in gelu') by another code path, last bit apart;
    # gelu'(-1) = Φ(-1) - φ(1) ≈ 0.16 - 0.24 then magnifies 1 ulp of a term 3×. So a few
    # ulp: 1e-15 (4.5 ulp) in float64, 8 ulp in float32 (a wrong f' is off by far more).
    rtol = 1e-15 if dtype == np.float64 else 8 * np.finfo(dtype).eps
    np.testing.assert_allclose(r, at_special(case.id, dtype)["derivative"], rtol=rtol, atol=0)


def test_forward_mode_define_activation_and_prelu(forward):
    expected = sp.lambdify(X, sp.diff(MISH, X), "numpy")(GRID_AWAY)
    np.testing.assert_allclose(forward["mish"], expected, rtol=1e-12, atol=1e-14)
    # the custom_jvp twin uses the given (wrong) df too: it never differentiates f
    np.testing.assert_array_equal(forward["mish_wrong"], np.full(GRID_AWAY.shape, 7.0))
    for (x, slope, _, objective), fwd in zip(PROBLEMS, forward["prelu"]):
        ref = jax.grad(objective(_prelu_plain), argnums=(0, 1))(x, slope)
        np.testing.assert_allclose(fwd[0], ref[0], rtol=1e-14, atol=0)
        np.testing.assert_allclose(fwd[1], ref[1], rtol=1e-13, atol=1e-15)


def _model_and_reference():
    refs = ACTIVATION_CASES_BY_ID
    net = funnet.serial(
        funnet.Dense(3), funnet.Tanh, funnet.Dense(3), funnet.Elu(alpha=0.5),
        funnet.Dense(3), funnet.PRelu, funnet.Dense(3), funnet.Softplus, funnet.Dense(1),
    )
    plain = {0: refs["tanh"].ref, 2: refs["elu[alpha=0.5]"].ref, 6: refs["softplus"].ref}

    def reference(params, x):  # the same network, written in plain jax.numpy
        a = x
        for i in range(0, 8, 2):
            z = a @ params[i]["W"] + params[i]["b"][None, :]
            if i == 4:
                a = jnp.where(z > 0, z, params[5]["slope"][None, :] * z)
            else:
                a = plain[i](z)
        return a @ params[8]["W"] + params[8]["b"][None, :]

    return net, init_params(net, (-1, 3), seed=3), reference


def test_forward_mode_on_a_model():
    net, params, reference = _model_and_reference()
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.standard_normal((2, 3)))
    flat, unravel = ravel_pytree(params)
    v = jnp.asarray(rng.standard_normal(flat.shape))

    def loss(flat, apply):
        return jnp.sum(apply(unravel(flat), x) ** 2)

    def derivatives(apply):  # (d²L/dθ², HVP, Jacobian of the outputs w.r.t. θ)
        return (jax.hessian(loss)(flat, apply),
                jax.jvp(jax.grad(lambda f: loss(f, apply)), (flat,), (v,))[1],
                jax.jacfwd(lambda f: apply(unravel(f), x))(flat))

    twin = funnet.forward_twin(net)
    assert twin is not net and twin.name == net.name
    got = jax.jit(lambda: derivatives(twin.apply))()
    # Reverse over reverse through the custom_vjp wiring (no twin needed), and the plain
    # reference network by JAX's own autodiff: independent witnesses of the same Hessian.
    rev = jax.jit(lambda: jax.jacrev(jax.jacrev(loss))(flat, net.apply))()
    ref = jax.jit(lambda: derivatives(reference))()
    assert got[0].shape == (flat.size, flat.size) and flat.size > 40
    assert np.abs(got[0]).max() > 1e-3  # not trivially zero
    # float64 through nine layers: rounding of O(1) entries stays far below 1e-11.
    tol = {"rtol": 1e-9, "atol": 1e-11}
    for name, g, r in zip(["hessian", "hvp", "jacfwd"], got, ref):
        np.testing.assert_allclose(g, r, **tol, err_msg=name)
    np.testing.assert_allclose(got[1], got[0] @ v, **tol)
    np.testing.assert_allclose(got[0], rev, **tol, err_msg="vs reverse over reverse")


def test_forward_twin_keeps_caches_and_changes_nothing_global():
    calls = []

    @jax.jit
    def user_fn(x):
        calls.append(1)  # runs once per trace
        return jnp.sum(funnet.tanh(x) ** 2)

    x = jnp.linspace(-1.0, 1.0, 5)
    user_fn(x)
    net = funnet.serial(funnet.Dense(2), funnet.Relu)
    _, params = net.init(jax.random.PRNGKey(0), (-1, 5))
    result = funnet.check_model(net, params, x[None], jnp.ones((1, 2)), funnet.mse,
                                methods=("hand", "reverse", "forward"))
    assert result.ok
    user_fn(x)
    assert len(calls) == 1  # the user's compiled function survived the forward-mode check
    with pytest.raises(TypeError, match="jvp_twin"):  # the plain wiring is unchanged
        jax.jacfwd(funnet.relu)(2.0)
    assert float(jax.jacfwd(funnet.relu.jvp_twin)(2.0)) == 1.0


def test_forward_mode_in_one_thread_while_another_traces():
    import threading

    errors, results = [], {}
    barrier = threading.Barrier(2)

    def forward_worker():
        try:
            barrier.wait()
            for i in range(20):
                results.setdefault("fwd", []).append(
                    float(jax.jacfwd(funnet.softplus.jvp_twin)(0.1 * i)))
        except Exception as e:  # noqa: BLE001 - any error in a thread is reported below
            errors.append(e)

    def reverse_worker():
        try:
            barrier.wait()
            for i in range(20):
                f = jax.jit(lambda v, i=i: funnet.softplus(v) * (i + 1))  # a new trace each time
                results.setdefault("rev", []).append(float(jax.grad(f)(0.1 * i)) / (i + 1))
        except Exception as e:  # noqa: BLE001 - any error in a thread is reported below
            errors.append(e)

    threads = [threading.Thread(target=forward_worker), threading.Thread(target=reverse_worker)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    expected = [float(funnet.softplus.derivative(0.1 * i)) for i in range(20)]
    np.testing.assert_allclose(results["fwd"], expected, rtol=1e-15)
    np.testing.assert_allclose(results["rev"], expected, rtol=1e-14)


# --- gaps found by the mutation review of the conv family (issue 12) ------------------------


def _mp_new_activation(name: str, x: float) -> tuple[float, float]:
    """``(f(x), f'(x))`` written out in mpmath at 60 digits, for the tails where the registry's
    sympy pieces cancel (``1 + erf``, ``1 + tanh``): σ(1 − σ) as ``1/((1 + e⁻ᶻ)(1 + eᶻ))``,
    ``Φ`` as ``erfc(-x/√2)/2``, ``eˣ − 1`` as ``expm1``; every term is then relative-exact."""
    with mpmath.workdps(60):
        x = mpmath.mpf(x)

        def sigma(z):  # (σ(z), σ(z)(1 − σ(z)))
            return 1 / (1 + mpmath.exp(-z)), 1 / ((1 + mpmath.exp(-z)) * (1 + mpmath.exp(z)))

        if name == "gelu":
            cdf = mpmath.erfc(-x / mpmath.sqrt(2)) / 2
            f, df = x * cdf, cdf + x * mpmath.exp(-x * x / 2) / mpmath.sqrt(2 * mpmath.pi)
        elif name == "gelu[approximate=True]":
            c, k = mpmath.mpf("0.044715"), mpmath.sqrt(2 / mpmath.pi)
            s, s1 = sigma(2 * k * (x + c * x**3))  # ½(1 + tanh u) = σ(2u)
            f, df = x * s, s + x * s1 * 2 * k * (1 + 3 * c * x**2)
        elif name == "swish":
            s, s1 = sigma(x)
            f, df = x * s, s + x * s1
        else:  # selu
            lam = mpmath.mpf("1.0507009873554804934193349852946")
            lam_alpha = lam * mpmath.mpf("1.6732632423543772848170429916717")
            f, df = (lam * x, lam) if x > 0 else (lam_alpha * mpmath.expm1(x),
                                                  lam_alpha * mpmath.exp(x))
        return float(f), float(df)


#: (activation, points, float64 rtol, float32 rtol). GELU's left tail is ill-conditioned: the
#: exponent z of exp(-z) (x²/2, or 2u = O(x³)) is itself rounded to ε|z|, so f and f' carry
#: a relative error |z|ε, ≤ 2000ε at x = -30 (< 1e-12); XLA's float32 erfc is within 100 ulp
#: there. swish and selu stay within 2 ulp in both dtypes (4 allowed).
TAILS = [
    ("gelu", [-30.0, -25.0, -20.0, -15.0, -12.0, -10.0, -7.0, -5.0, -3.0, 3.0, 7.0], 1e-12,
     512 * np.finfo(np.float32).eps),
    ("gelu[approximate=True]", [-30.0, -25.0, -20.0, -15.0, -12.0, -10.0, -7.0, -5.0, -3.0,
                                3.0, 7.0], 1e-12, 512 * np.finfo(np.float32).eps),
    ("swish", [-30.0, -10.0, 5.0, 10.0, 15.0, 17.0, 20.0, 25.0, 30.0, 36.0],
     4 * EPS64, 4 * np.finfo(np.float32).eps),
    ("selu", [-20.0, -3e-3, -1e-8, -1e-12, 1e-12, 3.0], 4 * EPS64,
     4 * np.finfo(np.float32).eps),
]


@functools.cache
def _tails(dtype: type) -> dict:
    def run(xs):
        out = {}
        for name, _, _, _ in TAILS:
            case = ACTIVATION_CASES_BY_ID[name]
            out[name] = (case.fn(xs[name]), case.derivative(xs[name]))
        return out

    return jax.jit(run)({name: jnp.asarray(pts, dtype) for name, pts, _, _ in TAILS})


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name, points, rtol64, rtol32", [pytest.param(*t, id=t[0])
                                                          for t in TAILS])
def test_new_activations_in_their_tails_match_mpmath(name, points, rtol64, rtol32, dtype):
    # The grid stops at ±12 and the extremes jump to ±40, where f and f' are 0 or 1 to the
    # last bit; in between, a Φ computed as ½(1 + erf) (or ½(1 + tanh u)) cancels to 0, an
    # e/(1+e)² with e = exp(+2|u|) overflows to NaN, eˣ − 1 for expm1 loses the digits of a
    # tiny x and σ(1 − σ) loses those of swish' for x ≫ 1: all inside the old tolerances.
    fn, derivative = (np.asarray(v, np.float64) for v in _tails(dtype)[name])
    exact = np.array([_mp_new_activation(name, x) for x in points]).astype(dtype)
    tol = {"rtol": rtol64 if dtype == np.float64 else rtol32, "atol": np.finfo(dtype).tiny}
    np.testing.assert_allclose(fn, exact[:, 0], **tol, err_msg="f")
    np.testing.assert_allclose(derivative, exact[:, 1], **tol, err_msg="f'")
