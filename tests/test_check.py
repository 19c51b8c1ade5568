"""Tests for funnet.check: numerical / forward gradients, compare(), check_model()."""

from __future__ import annotations

import dataclasses
import doctest

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp
import numpy as np
import pytest
from _registry import plain_l2
from jax.flatten_util import ravel_pytree

import funnet
import funnet.check
from funnet.check import (
    CheckResult,
    GradientCheckError,
    Report,
    check_model,
    compare,
    comparison,
    default_eps,
    default_tolerances,
    forward_grad,
    numerical_grad,
)


def test_doctests():
    result = doctest.testmod(funnet.check)
    assert result.attempted > 0 and result.failed == 0


def test_all_exported():
    for name in funnet.check.__all__:
        assert hasattr(funnet.check, name), name
    assert issubclass(GradientCheckError, AssertionError)


# --- numerical_grad of known functions --------------------------------------------------

A = jnp.array([[2.0, 0.5, 0.0], [0.5, 3.0, -1.0], [0.0, -1.0, 4.0]])
C = jnp.array([1.0, -2.0, 0.5])

# name, f, params, analytic gradient
KNOWN = [
    (
        "quadratic",  # ½ wᵀAw + cᵀw + s²  ->  (A w + c, 2 s)
        lambda p: 0.5 * p["w"] @ A @ p["w"] + C @ p["w"] + p["s"] ** 2,
        {"w": jnp.array([0.3, -1.2, 2.0]), "s": jnp.array(1.5)},
        lambda p: {"w": A @ p["w"] + C, "s": 2 * p["s"]},
    ),
    (
        "sin",  # Σ sin(W)  ->  cos(W)
        lambda p: jnp.sum(jnp.sin(p[0])),
        (jnp.linspace(-3.0, 3.0, 12).reshape(3, 4),),
        lambda p: (jnp.cos(p[0]),),
    ),
    (
        "log_large_params",  # Σ log θ², |θ| ~ 1e3: the step scales with max(1, |θ|)  ->  2/θ
        lambda p: jnp.sum(jnp.log(p["t"] ** 2)),
        {"t": jnp.array([1e3, -2.5e3, 7e2])},
        lambda p: {"t": 2 / p["t"]},
    ),
    (
        "nested_exp",  # exp(a·b) + Σ c²  ->  (b e^{ab}, a e^{ab}, 2c)
        lambda p: jnp.exp(p["x"][0] * p["x"][1]["b"]) + jnp.sum(p["y"] ** 2),
        {"x": [jnp.array(0.7), {"b": jnp.array(-0.4)}], "y": jnp.ones((2, 2))},
        lambda p: {
            "x": [
                p["x"][1]["b"] * jnp.exp(p["x"][0] * p["x"][1]["b"]),
                {"b": p["x"][0] * jnp.exp(p["x"][0] * p["x"][1]["b"])},
            ],
            "y": 2 * p["y"],
        },
    ),
]


@pytest.mark.parametrize("name, f, params, grad", KNOWN, ids=[k[0] for k in KNOWN])
def test_numerical_grad_known_functions(name, f, params, grad):
    g = numerical_grad(f, params)
    expected = grad(params)
    assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(params)
    for got, want, p in zip(*map(jax.tree_util.tree_leaves, (g, expected, params))):
        assert got.shape == p.shape and got.dtype == p.dtype
        np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("t", [[1e3, -2.5e3, 7e2], [1e12, -3e13, 5e8]], ids=["1e3", "1e12"])
def test_numerical_grad_step_scales_with_the_parameter(t):
    # d/dθ Σ log θ² = 2/θ. With Δ = eps·max(1, |θ|) the relative error is ~eps² (truncation)
    # plus ~ε·|f|/(|f'|·Δ) (rounding), both < 1e-9 here, so rtol 1e-8 with atol 0; a step
    # that did not scale with |θ| is 3000× off at 1e3 and NaN at 1e12 (below one ulp of θ).
    theta = jnp.array(t)
    g = numerical_grad(lambda p: jnp.sum(jnp.log(p ** 2)), theta)
    np.testing.assert_allclose(g, 2 / theta, rtol=1e-8, atol=0)


@pytest.mark.parametrize("name, f, params, grad", KNOWN[:2], ids=[k[0] for k in KNOWN[:2]])
def test_numerical_grad_float32(name, f, params, grad):
    p32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    g = numerical_grad(f, p32)
    for got, want in zip(*map(jax.tree_util.tree_leaves, (g, grad(params)))):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-3)


def test_numerical_grad_batch_size_does_not_change_result():
    _, f, params, _ = KNOWN[0]
    full = ravel_pytree(numerical_grad(f, params))[0]
    for bs in (1, 3, 100):  # 4 coordinates: 3 leaves a remainder chunk of 1
        np.testing.assert_allclose(ravel_pytree(numerical_grad(f, params, batch_size=bs))[0], full,
                                   rtol=1e-12, atol=1e-14)


def test_numerical_grad_step_too_small_is_worse():
    _, f, params, grad = KNOWN[1]
    err = {
        eps: float(jnp.max(jnp.abs(numerical_grad(f, params, eps=eps)[0] - grad(params)[0])))
        for eps in (default_eps(np.float64), 1e-11)
    }
    assert err[default_eps(np.float64)] < 1e-9 < err[1e-11]  # rounding ε/Δ takes over


def test_numerical_grad_at_a_kink_averages_the_slopes():
    # relu at 0: the central difference is (Δ - 0)/(2Δ) = 0.5, the convention relu'(0) = 0.
    f = lambda p: jnp.sum(funnet.relu(p["w"]))
    p = {"w": jnp.array([-1.0, 0.0, 2.0])}
    assert numerical_grad(f, p)["w"].tolist() == pytest.approx([0.0, 0.5, 1.0])
    assert jax.grad(f)(p)["w"].tolist() == [0.0, 0.0, 1.0]


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: numerical_grad(lambda p: p * 2, jnp.ones(3)), TypeError, "scalar"),
        (lambda: numerical_grad(lambda p: jnp.sum(p), jnp.ones(3), eps=0.0), ValueError, "eps"),
        (lambda: numerical_grad(lambda p: jnp.sum(p), jnp.arange(3)), TypeError, "floating"),
        (lambda: numerical_grad(jnp.sum, jnp.ones(3), batch_size=0), ValueError, "batch_size"),
        (lambda: forward_grad(lambda p: p * 2, jnp.ones(3)), TypeError, "scalar"),
    ],
)
def test_gradient_argument_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_empty_params():
    assert numerical_grad(lambda p: jnp.zeros(()), ()) == ()
    assert forward_grad(lambda p: jnp.zeros(()), {"a": ()}) == {"a": ()}


# --- test problems, built with numpy (no jax.random: nothing to compile) -----------------


def problem(net, in_dim, n, *, seed, dtype=np.float64, classes=None, targets=None):
    """``(params, x, y)`` for ``net``: W ~ N(0, 1/fan_in), b ~ N(0, 0.1²), slopes ~ U(0.1, 0.4).

    ``y``: ``n`` integer labels below ``classes``, or ``[n, targets]`` normal regression targets.
    """
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: net.init(k, (-1, in_dim))[1], jax.random.PRNGKey(0))

    def fill(path, leaf):
        name = path[-1].key
        if name == "W":
            value = rng.normal(0.0, 1.0 / np.sqrt(leaf.shape[0]), leaf.shape)
        elif name == "b":
            value = rng.normal(0.0, 0.1, leaf.shape)
        else:
            value = rng.uniform(0.1, 0.4, leaf.shape)
        return jnp.asarray(value, dtype)

    params = jax.tree_util.tree_map_with_path(fill, shapes)
    x = jnp.asarray(rng.normal(size=(n, in_dim)), dtype)
    if classes is not None:
        y = jnp.asarray(rng.integers(0, classes, n))
    else:
        y = jnp.asarray(rng.normal(size=(n, targets)), dtype)
    return params, x, y


# --- forward_grad ---------------------------------------------------------------------


def test_forward_grad_matches_reverse_through_custom_vjp_activations():
    net = funnet.serial(funnet.Dense(3), funnet.Elu, funnet.Dense(2), funnet.PRelu)
    params, x, _ = problem(net, 3, 5, seed=0, targets=2)
    twin = funnet.forward_twin(net)
    f = lambda p, net=net: jnp.sum(jnp.sin(net.apply(p, x)))
    g = forward_grad(lambda p: f(p, twin), params, batch_size=7)  # 20 params: chunks of 7, 7, 6
    ref = jax.grad(f)(params)
    for got, want in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    with pytest.raises(TypeError, match="forward_twin"):  # the plain model refuses, and says why
        forward_grad(f, params)


# --- compare ---------------------------------------------------------------------------


def test_compare_rows_paths_and_table():
    a = ({"W": jnp.array([[1.0, -4.0], [2.0, 0.0]]), "b": jnp.array([0.5, 0.25])}, (),
         {"slope": jnp.array([1e-13])})
    b = ({"W": jnp.array([[1.0, -4.0], [2.0, 0.1]]), "b": jnp.array([0.5, 0.25])}, (),
         {"slope": jnp.array([0.0])})
    report = compare(a, b, names=("ref", "mine"), rtol=1e-3, atol=1e-12)
    assert isinstance(report, Report)
    assert [r.leaf for r in report.rows] == ["[0]['W']", "[0]['b']", "[2]['slope']"]
    w, bias, slope = report.rows
    assert w.shape == (2, 2) and w.scale == 4.0 and w.abs_err == pytest.approx(0.1)
    assert w.rel_err == pytest.approx(1.0)  # |0 - 0.1| / max(0, 0.1)
    assert not w.ok and bias.ok and bias.abs_err == 0.0 and bias.rel_err == 0.0
    # 1e-13 vs 0: within atol; rel err uses the atol floor: 1e-13 / max(1e-13, 0, 1e-12)
    assert slope.ok and slope.rel_err == pytest.approx(0.1)
    assert not report.ok and report.first_failure is w
    text = str(report).splitlines()
    assert text[0] == "mine vs ref: rtol=1.0e-03, atol=1.0e-12"
    assert text[1].split() == ["leaf", "shape", "max|ref|", "max", "abs", "err", "max", "rel",
                               "err", "err/tol", "ok"]
    # err/tol of the worst element: 0.1 / (1e-12 + 1e-3 · 0.1) ≈ 1000
    assert text[2].split() == ["[0]['W']", "(2,", "2)", "4.00e+00", "1.00e-01", "1.00e+00",
                               "1.00e+03", "False"]
    assert w.tol_ratio == pytest.approx(1000.0, rel=1e-6)
    assert slope.tol_ratio == pytest.approx(0.1, rel=1e-3)
    assert text[4].split()[0] == "[2]['slope']" and text[4].endswith("True")


@pytest.mark.parametrize(
    "a, b, ok",
    [
        (jnp.array([1.0, 2.0]), jnp.array([1.0 + 1e-10, 2.0]), True),  # rtol 1e-9
        (jnp.array([1.0, 2.0]), jnp.array([1.0 + 1e-8, 2.0]), False),
        (jnp.array([0.0]), jnp.array([5e-13]), True),  # atol 1e-12
        (jnp.array([0.0]), jnp.array([5e-12]), False),
        (jnp.array([1.0, 2.0]), jnp.array([1.0, jnp.nan]), False),  # NaN never ok
        (jnp.array([jnp.inf]), jnp.array([jnp.inf]), False),
        (jnp.zeros((0, 3)), jnp.zeros((0, 3)), True),
    ],
)
@pytest.mark.parametrize("limit", [comparison.HOST_LIMIT, -1], ids=["numpy", "compiled"])
def test_compare_tolerance_rule(a, b, ok, limit, monkeypatch):
    monkeypatch.setattr(comparison, "HOST_LIMIT", limit)  # -1: every tree on the device path
    assert compare(a, b, rtol=1e-9, atol=1e-12).ok is ok
    assert compare(b, a, rtol=1e-9, atol=1e-12).ok is ok  # symmetric


@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32, jnp.bfloat16])
def test_the_numpy_and_the_compiled_comparison_give_the_same_rows(dtype, monkeypatch):
    # small host arrays are compared in NumPy (no compile), others by one jitted program:
    # the same formulas, so every number of every row must agree, NaN, inf and zeros included
    rng = np.random.default_rng(0)
    a = rng.standard_normal((5, 7))
    b = a * (1 + 1e-3 * rng.standard_normal((5, 7)))
    b[0, 0], b[1, 1], a[2, 2], b[2, 2], b[3] = np.nan, np.inf, 0.0, 0.0, a[3]
    trees = [({"W": jnp.asarray(a, dtype), "b": jnp.asarray(a[0], dtype)}, jnp.zeros(0)),
             ({"W": jnp.asarray(b, dtype), "b": jnp.asarray(a[0] + 1e-9, dtype)}, jnp.zeros(0))]
    rows = {}
    host = comparison.HOST_LIMIT
    for limit in (host, -1):
        monkeypatch.setattr(comparison, "HOST_LIMIT", limit)
        assert comparison.on_host(jax.tree_util.tree_leaves(trees)) is (limit > 0)
        for rtol, atol in ((1e-3, 1e-6), (0.0, 0.0)):
            rows[limit, rtol] = compare(*trees, rtol=rtol, atol=atol).rows
    for rtol in (1e-3, 0.0):
        numpy_rows, compiled_rows = rows[host, rtol], rows[-1, rtol]
        assert [r.leaf for r in numpy_rows] == ["[0]['W']", "[0]['b']", "[1]"]
        for n, c in zip(numpy_rows, compiled_rows, strict=True):
            np.testing.assert_array_equal(np.array(n[2:6]), np.array(c[2:6]))
            assert n.ok == c.ok
        assert not numpy_rows[0].ok and np.isnan(numpy_rows[0].abs_err)


def test_compare_structure_and_shape_mismatch():
    with pytest.raises(ValueError, match=r"(?s)hand and reverse.*hand: .*'W'.*reverse: .*'w'"):
        compare({"W": jnp.ones(2)}, {"w": jnp.ones(2)}, names=("hand", "reverse"))
    with pytest.raises(ValueError, match=r"leaf \['W'\] has shape \(2,\).*\(3,\)"):
        compare({"W": jnp.ones(2)}, {"W": jnp.ones(3)})


# --- check_model: a deep network with every activation ----------------------------------

# Where each kinked activation layer's derivative jumps.
KINKS = {
    "Relu": (0.0,),
    "LeakyRelu(slope=0.1)": (0.0,),
    "Elu": (0.0,),
    "PRelu": (0.0,),
    "HardTanh": (-1.0, 1.0),
    "HardLogistic": (-2.0, 2.0),
}


SEED = 3  # a seed whose inputs clear every kink by > 20 numerical steps (see kink_clearance)


def deep_mixed_net():
    return funnet.serial(
        funnet.Dense(8), funnet.Logistic,
        funnet.Dense(8), funnet.Tanh,
        funnet.Dense(8), funnet.Relu,
        funnet.Dense(8), funnet.LeakyRelu(slope=0.1),
        funnet.Dense(8), funnet.Elu,
        funnet.Dense(8), funnet.Softplus,
        funnet.Dense(8), funnet.PRelu,
        funnet.Dense(8), funnet.HardTanh,
        funnet.Dense(8), funnet.HardLogistic,
        funnet.Dense(4), funnet.Softmax,
        funnet.Dense(3),
    )


def kink_clearance(net, params, x) -> float:
    """min over kinked pre-activations z of |z - kink| / (largest shift of z by one step).

    The shift of z when the numerical gradient moves θ_i by Δ_i is ≈ Δ_i |∂z/∂θ_i|; a
    clearance > 1 means no central-difference evaluation crosses a kink (to first order).
    """
    theta, unravel = ravel_pytree(params)

    def distances(theta):
        p, a, out = unravel(theta), x, []
        for layer, q in zip(net.children, p):
            out += [(a - k).ravel() for k in KINKS.get(layer.name, ())]
            a = layer.apply(q, a)
        return jnp.concatenate(out)

    @jax.jit
    def clearance(theta):
        step = default_eps(theta.dtype) * jnp.maximum(1, jnp.abs(theta))
        shift = jnp.max(jnp.abs(jax.jacrev(distances)(theta)) * step[None, :], axis=1)
        return jnp.min(jnp.abs(distances(theta)) / shift)

    return float(clearance(theta))


@pytest.fixture(scope="module")
def deep_problem():
    net = deep_mixed_net()
    params, x, y = problem(net, 5, 16, seed=SEED, classes=3)
    clearance = kink_clearance(net, params, x)
    assert clearance > 20, f"inputs too close to a kink (clearance {clearance:.1f}); reseed"
    return net, params, x, y


def test_check_model_deep_mixed_network_all_methods(deep_problem, capsys):
    net, params, x, y = deep_problem
    result = check_model(net, params, x, y, funnet.softmax_cross_entropy, verbose=True)
    assert isinstance(result, CheckResult) and result.ok and result.first_failure is None
    assert result.reference == "formula" and result.dtype == "float64"
    assert list(result.reports) == [("hand", "formula"), ("reverse", "formula"),
                                    ("forward", "formula"), ("numerical", "formula")]
    assert len(result.layers) == len(net.children) and all(v.ok for v in result.layers)
    assert result.deltas.ok and len(result.deltas.rows) == len(net.children)
    assert result.kinks.count == 0  # the inputs are chosen far from every kink
    n_leaves = len(jax.tree_util.tree_leaves(params))
    assert all(len(r.rows) == n_leaves == 23 for r in result.reports.values())
    assert result.reports["hand", "formula"].rtol == 1e-9
    assert result.reports["numerical", "formula"].rtol == 1e-5
    # the errors are far inside the tolerances, not just inside
    for pair, report in result.reports.items():
        for row in report.rows:
            assert row.tol_ratio < 1e-2, (pair, row)
    printed = capsys.readouterr().out
    assert printed.strip() == str(result).strip()
    assert "numerical vs formula  [13]['slope']" in printed and printed.rstrip().endswith("OK")
    assert result.value == pytest.approx(
        float(funnet.softmax_cross_entropy(net.apply(params, x), y)))


def broken_dense(out_dim: int, factor: float = 1.01) -> funnet.Layer:
    """Dense whose hand-written backward is wrong: dW scaled by ``factor``."""
    layer = funnet.Dense(out_dim)

    def backward(params, res, dy):
        dparams, dx = layer.backward(params, res, dy)
        return {**dparams, "W": factor * dparams["W"]}, dx

    return dataclasses.replace(layer, backward=backward, name=f"BrokenDense({out_dim})")


@pytest.mark.parametrize(
    "dtype, methods",
    [(jnp.float64, ("hand", "reverse", "numerical")), (jnp.float32, ("hand", "reverse"))],
)
def test_check_model_raises_on_a_broken_backward(dtype, methods):
    net = funnet.serial(funnet.Dense(6), funnet.Tanh, broken_dense(5), funnet.Softplus,
                        funnet.Dense(3))
    params, x, y = problem(net, 4, 8, seed=1, dtype=dtype, classes=3)
    with pytest.raises(GradientCheckError) as info:
        check_model(net, params, x, y, funnet.softmax_cross_entropy, methods=methods)
    message = str(info.value)
    assert message.startswith("the first wrong layer is serial[2] › BrokenDense(5)")
    assert "hand vs reverse disagree at params leaf [2]['W']" in message
    assert "rtol=" in message and "atol=" in message
    assert [v.path for v in info.value.result.layers if not v.ok] == ["serial[2] › BrokenDense(5)"]
    result = info.value.result
    hand = {row.leaf: row for row in result.reports["hand", "reverse"].rows}
    assert [leaf for leaf, row in hand.items() if not row.ok] == ["[2]['W']"]
    assert hand["[2]['W']"].rel_err == pytest.approx(0.01 / 1.01, rel=1e-3)
    if "numerical" in methods:  # the independent witness agrees with reverse: hand is wrong
        assert result.reports["numerical", "reverse"].ok
    assert "FAILED" in str(result)


def test_broken_layer_inside_parallel_is_named():
    branch = funnet.parallel(funnet.serial(funnet.Dense(3), funnet.Tanh),
                             funnet.serial(broken_dense(3, 0.9), funnet.Elu))
    net = funnet.serial(funnet.Dense(4), funnet.fanout(2), branch, funnet.FanInSum,
                        funnet.Dense(2))
    params, x, y = problem(net, 2, 6, seed=2, targets=2)
    with pytest.raises(GradientCheckError, match=(
        r"hand vs reverse disagree at params leaf \[2\]\[1\]\[0\]\['W'\] \(shape \(4, 3\), layer "
        r"serial\[2\] › parallel\[1\] › serial\[0\] › BrokenDense\(3\)\)"
    )):
        check_model(net, params, x, y, funnet.mse, methods=("hand", "reverse"))


def test_check_model_float32_uses_looser_tolerances():
    net = funnet.serial(funnet.Dense(8), funnet.Tanh, funnet.Dense(8), funnet.Softplus,
                        funnet.Dense(6), funnet.Logistic, funnet.Dense(3))
    params, x, y = problem(net, 5, 12, seed=3, dtype=np.float32, classes=3)
    result = check_model(net, params, x, y, funnet.softmax_cross_entropy,
                         methods=("hand", "reverse", "numerical"))
    assert result.ok and result.dtype == "float32"
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(result.grads))
    assert result.reports["hand", "reverse"].rtol == 1e-4
    assert result.reports["numerical", "reverse"].rtol == 5e-2
    # float64 tolerances would reject the float32 numerical gradient: the looser ones are needed
    tight = compare(result.grads["reverse"], result.grads["numerical"], rtol=1e-5,
                    atol=default_tolerances(np.float64, numerical=True, scale=result.value)[1])
    assert not tight.ok


def test_numerical_check_fails_at_a_kink():
    # Row 0 of x is 0 and b = 0: the Relu pre-activation of row 0 is exactly 0, where
    # relu'(0) = 0 (convention) but central differences see the slope 0.5.
    net = funnet.serial(funnet.Dense(3), funnet.Relu, funnet.Dense(1))
    params, _, _ = problem(net, 2, 3, seed=4, targets=1)
    params = (dict(params[0], b=jnp.zeros(3)), (), params[2])
    x = jnp.array([[0.0, 0.0], [1.0, -0.5], [0.3, 0.8]])
    y = jnp.ones((3, 1))
    leaf_b = r"numerical vs reverse disagree at params leaf \[0\]\['b'\]"
    methods = ("hand", "reverse", "numerical")
    with pytest.raises(GradientCheckError, match=leaf_b) as info:
        check_model(net, params, x, y, funnet.mse, methods=methods, kinks=False)
    reports = info.value.result.reports
    assert reports["hand", "reverse"].ok  # the analytic methods agree at the kink
    assert [r.leaf for r in reports["numerical", "reverse"].rows if not r.ok] == ["[0]['b']"]
    # kink-aware (the default): the straddling coordinates are excluded, and said so
    result = check_model(net, params, x, y, funnet.mse, methods=("formula", *methods))
    assert result.ok and result.kinks.count > 0
    assert "sample 0, unit" in result.kinks.examples[0]
    assert "serial[1] › Relu reaches or crosses 0" in result.kinks.examples[0]


def test_check_model_l2_and_dropout_key():
    net = funnet.serial(funnet.Dense(6), funnet.Elu, funnet.Dropout(0.3), funnet.Dense(2))
    params, x, y = problem(net, 3, 10, seed=5, classes=2)
    key = jax.random.key(7, impl="rbg")  # rbg: a cheap-to-compile generator
    result = check_model(net, params, x, y, funnet.softmax_cross_entropy, l2=0.5, key=key,
                         train=True, methods=("hand", "reverse"))
    assert result.ok
    # the objective holds the penalty and the same dropout mask as the key gives apply
    out = net.apply(params, x, key=key, train=True)
    assert not np.allclose(out, net.apply(params, x, key=key))  # dropout was active
    assert result.value == pytest.approx(
        float(funnet.softmax_cross_entropy(out, y) + plain_l2(params, 0.5)), rel=1e-12)


def test_check_model_plain_loss_callable():
    net = funnet.serial(funnet.Dense(4), funnet.Tanh, funnet.Dense(1))
    params, x, y = problem(net, 2, 5, seed=6, targets=1)
    plain = lambda pred, t: jnp.mean(jnp.abs(pred - t) ** 3)
    with pytest.raises(TypeError, match="method 'hand' needs a funnet Loss"):
        check_model(net, params, x, y, plain, methods=("hand", "reverse"))
    assert "hand" not in check_model(net, params, x, y, plain).grads  # default: dropped
    result = check_model(net, params, x, y, plain, methods=("numerical", "reverse"))
    assert result.ok and result.reference == "reverse"


@pytest.mark.parametrize(
    "methods, reference",
    [
        (("hand", "forward", "numerical"), "hand"),
        (("numerical", "forward"), "forward"),
        (("forward", "hand", "reverse"), "reverse"),
        (("numerical", "hand"), "hand"),
    ],
)
def test_reference_choice(methods, reference):
    assert funnet.check.model._reference(methods) == reference


def test_check_model_without_reverse():
    net = funnet.Dense(2)
    params = {"W": jnp.full((3, 2), 0.5), "b": jnp.array([0.1, -0.2])}
    x, y = jnp.ones((4, 3)), jnp.zeros((4, 2))
    result = check_model(net, params, x, y, funnet.mse, methods=("numerical", "hand"))
    assert result.ok and result.reference == "hand" and list(result.reports) == [
        ("numerical", "hand")]


@pytest.mark.parametrize(
    "methods, error, match",
    [
        (("hand", "backward"), ValueError, "unknown method"),
        (("hand", "hand"), ValueError, "repeat"),
        (("reverse",), ValueError, "at least two"),
    ],
)
def test_check_model_bad_methods(methods, error, match):
    net = funnet.Dense(2)
    params = {"W": jnp.full((3, 2), 0.5), "b": jnp.array([0.1, -0.2])}
    with pytest.raises(error, match=match):
        check_model(net, params, jnp.ones((4, 3)), jnp.zeros((4, 2)), funnet.mse,
                    methods=methods)


def test_check_model_explicit_tolerances_and_default_table():
    net = funnet.Dense(2)
    params = {"W": jnp.full((3, 2), 0.5), "b": jnp.array([0.1, -0.2])}
    result = check_model(net, params, jnp.ones((4, 3)), jnp.zeros((4, 2)), funnet.mse,
                         methods=("hand", "reverse"), rtol=1e-3, atol=1e-6)
    assert (result.reports["hand", "reverse"].rtol, result.reports["hand", "reverse"].atol) == (
        1e-3, 1e-6)
    assert default_tolerances(np.float64, numerical=True, scale=3.0) == pytest.approx((1e-5, 3e-8))
    assert default_tolerances(np.float32, numerical=False) == (1e-4, 1e-6)
    assert default_tolerances(np.float16, numerical=False) == (5e-3, 3e-3)
    assert default_tolerances(jnp.bfloat16, numerical=True) == (0.3, 0.3)
    assert default_tolerances("float8_e4m3fn", numerical=False) == (1e-4, 1e-6)  # other: f32
