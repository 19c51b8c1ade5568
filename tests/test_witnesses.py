"""Gradient truth v2 (funnet/check): every witness catches what it must, and names it.

* a deliberately wrong ``f'`` of every activation (scaled by 1.01, the other side's value
  at a kink, the mirrored derivative) is caught by the analytic methods alone, in float32
  and float64, and the activation layer is named;
* a deliberately wrong backward of every layer kind is caught and localised to its path;
* a correct deep mixed network passes every method in float32 (kink-aware) and float64;
* the Taylor slope is 2 for right gradients and ≈ 1 for wrong ones; the sensitivity
  self-test fails when the tolerance is made too loose; batch consistency catches a loss
  that sums instead of averaging; the report converts to JSON.
"""

from __future__ import annotations

import ast
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import ACTIVATION_CASES, init_params

import funnet
from funnet.check import GradientCheckError, check_model

ANALYTIC = ("hand", "formula", "reverse", "forward")
ACTS = [pytest.param(a, id=name) for name, a in funnet.activations.ACTIVATIONS.items()]


def _wrong_derivatives(act):
    """``{kind: df}``, each a plausible mistake in ``act.df``, only where it changes f'."""
    grid = jnp.concatenate([jnp.linspace(-3.0, 3.0, 61), jnp.asarray(act.kinks)])
    h = act.defaults

    def on_grid(df):  # one compiled program, not an eager compile per jnp operation
        return np.asarray(jax.jit(lambda g: df(g, act.f(g, **h), **h))(grid))

    right = on_grid(act.df)
    out = {
        "scaled by 1.01": lambda x, y, **k: 1.01 * act.df(x, y, **k),
        "mirrored (the wrong branch)": lambda x, y, **k: act.df(-x, act.f(-x, **k), **k),
    }
    for k in act.kinks:  # at the kink, the value of the other side
        def other_side(x, y, k=k, **kw):
            inside = act.df(x, y, **kw)
            right_side = act.df(jnp.full_like(x, k + 1e-3), act.f(jnp.full_like(x, k + 1e-3),
                                                                  **kw), **kw)
            left_side = act.df(jnp.full_like(x, k - 1e-3), act.f(jnp.full_like(x, k - 1e-3),
                                                                 **kw), **kw)
            at = act.df(jnp.full_like(x, k), act.f(jnp.full_like(x, k), **kw), **kw)
            other = jnp.where(at == right_side, left_side, right_side)
            return jnp.where(x == k, other, inside)

        out[f"other side at the kink {k:g}"] = other_side
    keep = {}
    for kind, df in out.items():
        wrong = on_grid(df)
        if not np.allclose(wrong, right, rtol=1e-6, atol=0):
            keep[kind] = df
    return keep


def _kink_net(acts, dtype):
    """Dense(W = I, b = 0) -> each activation of ``acts`` side by side -> their sum -> Dense:
    pre-activations equal x, which holds every kink exactly and points on both sides of it.
    One network for all of an activation's wrong derivatives: one check (one set of
    compiled programs) instead of one per mistake, and each mistake is still named by its
    own layer's verdict."""
    n = len(acts)
    net = funnet.serial(funnet.Dense(4), funnet.fanout(n),
                        funnet.parallel(*[funnet.ActivationLayer(a) for a in acts]),
                        funnet.FanInSum, funnet.Dense(3))
    params = init_params(net, (-1, 4), seed=2)
    params = (dict(params[0], W=jnp.eye(4), b=jnp.zeros(4)), (), params[2], (), params[4])
    kinks = sorted({k for a in acts for k in a.kinks}) or [0.3]
    values = np.concatenate([np.linspace(-2.7, 2.9, 20), np.repeat(kinks, 4)])
    x = np.resize(values, (7, 4))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), params)
    return net, params, jnp.asarray(x, dtype), jnp.arange(7) % 3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("act", ACTS)
def test_a_wrong_activation_derivative_is_caught_by_the_analytic_methods_and_named(act, dtype):
    wrongs = _wrong_derivatives(act)
    if act.name == "step":
        assert not wrongs  # f' = 0 everywhere: scaling or mirroring 0 changes nothing
        return
    bads = [funnet.define_activation(f"bad{i}_{act.name}", act.f, df, kinks=act.kinks,
                                     **act.defaults) for i, df in enumerate(wrongs.values())]
    net, params, x, y = _kink_net(bads, dtype)
    with pytest.raises(GradientCheckError) as info:
        check_model(net, params, x, y, funnet.softmax_cross_entropy, methods=ANALYTIC)
    paths = [f"serial[2] › parallel[{i}] › {funnet.ActivationLayer(b).name}"
             for i, b in enumerate(bads)]
    assert str(info.value).startswith(f"the first wrong layer is {paths[0]}")
    result = info.value.result
    # every mistake is named by its own layer's verdict, and no right layer is blamed
    wrong_layers = [v.path for v in result.layers if not v.ok]
    assert wrong_layers == paths, list(wrongs)
    # jax.grad through the hand-wired rule agrees with the hand rule: only the formula
    # witness (and the per-layer check built on it) sees the mistake
    assert not result.reports["hand", "formula"].ok
    assert not result.reports["reverse", "formula"].ok


def _mutants():
    """``(name, model, mutated model, input shape, needs train)`` for every layer kind."""
    def replace(layer, backward, name):
        return dataclasses.replace(layer, backward=backward, name=name)

    dense = funnet.Dense(4)

    def transposed(p, r, dy):
        g, dx = dense.backward(p, r, dy)
        return {**g, "W": g["W"].T}, dx

    def no_bias_sum(p, r, dy):
        g, dx = dense.backward(p, r, dy)
        return {**g, "b": dy.reshape(-1, dy.shape[-1])[0]}, dx

    prelu = funnet.PRelu

    def prelu_no_sum(p, r, dy):
        _, dx = prelu.backward(p, r, dy)
        return {"slope": (dy * funnet.prelu.slope_derivative(r))[0]}, dx

    drop = funnet.Dropout(0.5)

    def dropped_mask(p, mask, dy):
        return (), dy / 0.5

    def scale_dx(layer, factor=1.01):
        def backward(p, r, dy):
            g, dx = layer.backward(p, r, dy)
            return g, jax.tree_util.tree_map(lambda d: factor * d, dx)
        return replace(layer, backward, "Bad" + layer.name)

    cases = [
        ("Dense: transposed dW", replace(dense, transposed, "BadDense"), False),
        ("Dense: missing bias sum", replace(dense, no_bias_sum, "BadDense"), False),
        ("PRelu: missing slope sum", replace(prelu, prelu_no_sum, "BadPRelu"), False),
        ("Dropout: dropped mask", replace(drop, dropped_mask, "BadDropout"), True),
    ]
    for layer in (funnet.Tanh, funnet.Softmax, funnet.LogSoftmax, funnet.Identity,
                  funnet.Reshape((2, 2)), funnet.Flatten):
        cases.append((f"{layer.name}: dx scaled", scale_dx(layer), False))
    return cases


MUTANTS = [pytest.param(bad, train, id=name) for name, bad, train in _mutants()]


@pytest.mark.parametrize("bad, train", MUTANTS)
def test_a_wrong_layer_backward_is_caught_and_localised(bad, train):
    tail = funnet.Flatten if bad.name in ("BadReshape((2, 2))",) else funnet.Identity
    net = funnet.serial(funnet.Dense(4), funnet.Tanh, funnet.fanout(1),
                        funnet.parallel(funnet.serial(bad, tail)), funnet.FanInSum,
                        funnet.Flatten, funnet.Dense(3))
    params = init_params(net, (-1, 4), seed=3)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 4)))
    y = jnp.arange(6) % 3
    kw = {"key": jax.random.PRNGKey(1), "train": True} if train else {}
    with pytest.raises(GradientCheckError) as info:
        check_model(net, params, x, y, funnet.softmax_cross_entropy,
                    methods=("hand", "formula"), **kw)
    where = f"serial[3] › parallel[0] › serial[0] › {bad.name}"
    assert str(info.value).startswith(f"the first wrong layer is {where}"), str(info.value)
    wrong = [v.path for v in info.value.result.layers if not v.ok]
    assert wrong == [where]


def _deep(dtype, seed):
    net = funnet.serial(
        funnet.Dense(8), funnet.Logistic, funnet.Dense(8), funnet.Tanh, funnet.Dense(8),
        funnet.Relu, funnet.Dense(8), funnet.LeakyRelu(slope=0.1), funnet.Dense(8), funnet.Elu,
        funnet.Dense(8), funnet.Softplus, funnet.Dense(8), funnet.PRelu, funnet.Dense(8),
        funnet.HardTanh, funnet.Dense(8), funnet.HardLogistic, funnet.Dense(3))
    params = init_params(net, (-1, 5), seed=seed)
    x = jnp.asarray(np.random.default_rng(seed).standard_normal((12, 5)), dtype)
    return net, jax.tree_util.tree_map(lambda a: a.astype(dtype), params), x, jnp.arange(12) % 3


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64], ids=["f32", "f64"])
def test_a_correct_deep_mixed_network_passes_every_method(dtype):
    net, params, x, y = _deep(dtype, seed=4)
    result = check_model(net, params, x, y, funnet.softmax_cross_entropy, taylor=True,
                         sensitivity_error=1e-3, batch=True)
    assert result.ok and result.dtype == np.dtype(dtype).name
    assert all(v.status == "ok" for v in result.layers) and len(result.layers) == 19
    assert result.deltas.ok and result.sensitivity[0] and result.batch.verdict == "consistent"
    if dtype == jnp.float32:  # the float32 step (7e-3 relative) straddles kinks: excluded
        assert result.kinks.count > 0 and "reaches or crosses" in result.kinks.examples[0]
    else:
        slopes = result.taylor.slopes
        assert all(s is not None and abs(s - 2) < 0.1 for s in slopes.values()), slopes
    assert json.loads(json.dumps(result.to_json()))["ok"] is True
    assert "layers (hand backward vs jax.vjp" in str(result) and "δ-trace" in str(result)


def test_taylor_slope_is_two_for_right_and_one_for_wrong_gradients():
    net, params, x, y = _deep(jnp.float64, seed=5)

    def objective(p):
        return funnet.softmax_cross_entropy(net.apply(p, x), y)

    right = jax.grad(objective)(params)
    wrong = jax.tree_util.tree_map(lambda g: g * 1.05, right)
    t = funnet.check.taylor_slope(objective, params, {"right": right, "wrong": wrong})
    assert abs(t.slopes["right"] - 2) < 0.1 and t.slopes["wrong"] <= 1.1, t.slopes
    assert t.ok("right") and not t.ok("wrong")


def test_taylor_slope_in_float32_on_a_smooth_network():
    net = funnet.serial(funnet.Dense(6), funnet.Tanh, funnet.Dense(3))
    params = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32),
                                    init_params(net, (-1, 4), seed=1))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 4)), jnp.float32)
    y = jnp.arange(8) % 3
    result = check_model(net, params, x, y, funnet.softmax_cross_entropy,
                         methods=("hand", "formula"), taylor=True)
    assert abs(result.taylor.slopes["hand"] - 2) < 0.1, result.taylor.slopes


def test_sensitivity_self_test_fails_when_the_tolerance_is_too_loose():
    net, params, x, y = _deep(jnp.float64, seed=6)
    ok = check_model(net, params, x, y, funnet.softmax_cross_entropy, methods=("hand", "formula"),
                     sensitivity_error=1e-3)
    assert ok.sensitivity[0]
    with pytest.raises(GradientCheckError, match="goes unnoticed at these tolerances"):
        check_model(net, params, x, y, funnet.softmax_cross_entropy, methods=("hand", "formula"),
                    sensitivity_error=1e-3, rtol=1e-2)


def test_batch_consistency_catches_a_loss_that_sums_instead_of_averaging():
    net = funnet.serial(funnet.Dense(4), funnet.Tanh, funnet.Dense(2))
    params = init_params(net, (-1, 3), seed=7)
    x = jnp.asarray(np.random.default_rng(7).standard_normal((6, 3)))
    t = jnp.asarray(np.random.default_rng(8).standard_normal((6, 2)))
    summed = lambda pred, target: 0.5 * jnp.sum((pred - target) ** 2)
    with pytest.raises(GradientCheckError, match="batch consistency failed"):
        check_model(net, params, x, t, summed, methods=("formula", "reverse"), batch=True)
    # a plain loss without a hand gradient: the default methods leave "hand" out
    result = check_model(net, params, x, t, lambda p, q: 0.5 * jnp.mean((p - q) ** 2))
    assert "hand" not in result.grads and result.reference == "formula"
    assert check_model(net, params, x, t, funnet.mse, methods=("formula", "reverse"),
                       batch=True).batch.verdict == "consistent"


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in ACTIVATION_CASES])
def test_second_order_hand_jvp_equals_the_formula_hvp(case):
    # the twin's derivative is the hand f' (custom_jvp): its forward-over-reverse HVP must
    # equal the HVP of the plain formula, away from kinks
    x = jnp.linspace(-2.9, 2.9, 23) + 0.0123
    v = jnp.cos(3 * x)
    act = funnet.activations.ACTIVATIONS.get(case.id.split("[")[0])
    if act is None:
        twin, plain = case.twin, lambda z: jnp.where(z > 0, z, float(case.id[12:-1]) * z)
    else:
        hyper = {k: ast.literal_eval(vv)  # slope=0.2, approximate=True
                 for k, vv in (p.split("=") for p in case.id[len(act.name):]
                               .strip("[]").split("][") if p)}
        twin = lambda z: act.jvp_twin(z, **hyper)
        plain = lambda z: act.formula(z, **hyper)

    def hvp(f):
        return jax.jvp(jax.grad(lambda z: jnp.sum(f(z) ** 3)), (x,), (v,))[1]

    np.testing.assert_allclose(hvp(twin), hvp(plain), rtol=1e-10, atol=1e-12)


def test_second_order_on_a_deep_mixed_network():
    net, params, x, y = _deep(jnp.float64, seed=4)
    twin, formula = funnet.forward_twin(net), net.rewired("formula")
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    v = jnp.asarray(np.random.default_rng(0).standard_normal(flat.shape))

    def hvp(model):
        g = jax.grad(lambda f: funnet.softmax_cross_entropy(model.apply(unravel(f), x), y))
        return jax.jvp(g, (flat,), (v,))[1]

    np.testing.assert_allclose(hvp(twin), hvp(formula), rtol=1e-9, atol=1e-11)


def test_formula_autodiff_gives_the_documented_kink_values():
    for case in ACTIVATION_CASES:
        act = funnet.activations.ACTIVATIONS.get(case.id.split("[")[0])
        if act is None:
            continue
        hyper = {k: v for k, v in act.defaults.items()}
        for kink, value in case.kinks.items():
            if case.id != act.name:
                continue
            got = float(jax.grad(lambda z, a=act, h=hyper: a.formula(z, **h))(kink))
            assert got == value, (case.id, kink, got, value)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16], ids=["bf16", "f16"])
def test_half_precision_checks_pass_with_the_documented_tolerances(dtype):
    net = funnet.serial(funnet.Dense(16), funnet.Tanh, funnet.Dense(16), funnet.Relu,
                        funnet.Dense(3))
    _, params = net.init(jax.random.PRNGKey(11), (-1, 8))
    params = jax.tree_util.tree_map(lambda a: a.astype(dtype), params)
    x = jax.random.normal(jax.random.PRNGKey(12), (16, 8)).astype(dtype)
    result = check_model(net, params, x, jnp.arange(16) % 3, funnet.softmax_cross_entropy,
                         methods=("hand", "formula", "reverse", "numerical"))
    assert result.ok and result.dtype == np.dtype(dtype).name
    # a 10 % error in a leaf is still caught at these tolerances
    assert funnet.check.witnesses.sensitivity(
        result.grads["formula"], result.grads["hand"],
        *funnet.check.default_tolerances(dtype, numerical=False, scale=1e-9),
        relative_error=0.1)[0]


def test_taylor_with_the_hessian_vector_product_has_slope_three():
    net = funnet.serial(funnet.Dense(6), funnet.Tanh, funnet.Dense(3))
    params = init_params(net, (-1, 4), seed=2)
    x = jnp.asarray(np.random.default_rng(2).standard_normal((8, 4)))
    y = jnp.arange(8) % 3

    def objective(p, model=net):
        return funnet.softmax_cross_entropy(model.apply(p, x), y)

    twin = funnet.forward_twin(net)
    grad = jax.grad(objective)(params)

    def hvp(v):  # forward over reverse through the twin: the hand f' pushed forward
        return jax.jvp(jax.grad(lambda p: objective(p, twin)), (params,), (v,))[1]

    t = funnet.check.taylor_slope(objective, params, {"hand": grad}, hvp=hvp)
    assert t.order == 3 and abs(t.slopes["hand"] - 3) < 0.15, t.slopes
    wrong = funnet.check.taylor_slope(objective, params, {"hand": grad},
                                      hvp=lambda v: jax.tree_util.tree_map(lambda h: 1.1 * h,
                                                                           hvp(v)))
    assert wrong.slopes["hand"] < 2.5 and not wrong.ok("hand")


# --- gaps found by the mutation review of the checker ------------------------------------------


@pytest.mark.parametrize("side", [-1.0, 1.0], ids=["only θ-Δ crosses", "only θ+Δ crosses"])
def test_a_stencil_crossing_on_one_side_only_is_excluded(side):
    # one pre-activation sits Δ/2 from the relu kink: only one end of the stencil of the
    # bias b[0] crosses it (z = x·W + b, x = 0 for that row)
    net = funnet.serial(funnet.Dense(2), funnet.Relu, funnet.Dense(1))
    params = init_params(net, (-1, 2), seed=1)
    step = funnet.check.default_eps(np.float64)
    params = (dict(params[0], b=jnp.array([-side * step / 2, 0.7])), (), params[2])
    x = jnp.array([[0.0, 0.0], [1.0, -0.5], [0.3, 0.8]])
    result = check_model(net, params, x, jnp.ones((3, 1)), funnet.mse,
                         methods=("formula", "numerical"), layers=False)
    assert bool(result.kinks.mask[0]["b"][0]) and result.kinks.count >= 1
    assert not bool(result.kinks.mask[0]["b"][1])


def test_batch_consistency_fails_a_gradient_that_depends_on_the_order():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2)))
    y = jnp.zeros((6, 1))

    def grad_fn(xb, yb):  # weights the rows by their position: not shuffle invariant
        w = jnp.arange(1, xb.shape[0] + 1, dtype=xb.dtype)
        return {"g": jnp.sum(w[:, None] * xb, axis=0)}

    r = funnet.check.witnesses.batch_consistency(grad_fn, x, y, dtype=np.float64, couples=True)
    assert r.verdict == "failed" and not r.shuffled.ok
    ok = funnet.check.witnesses.batch_consistency(
        lambda xb, yb: {"g": jnp.mean(xb, axis=0)}, x, y, dtype=np.float64, couples=False)
    assert ok.verdict == "consistent" and ok.shuffled.ok


def test_the_delta_trace_names_where_delta_first_diverges():
    dense = funnet.Dense(4)

    def wrong_dx(p, r, dy):
        g, dx = dense.backward(p, r, dy)
        return g, 1.01 * dx

    bad = dataclasses.replace(dense, backward=wrong_dx, name="BadDx")
    net = funnet.serial(funnet.Dense(4), funnet.Tanh, bad, funnet.Tanh, funnet.Dense(3))
    params = init_params(net, (-1, 3), seed=4)
    x = jnp.asarray(np.random.default_rng(4).standard_normal((6, 3)))
    with pytest.raises(GradientCheckError, match="the hand δ first diverges at the output of "
                                                 r"serial\[1\] › Tanh") as info:
        check_model(net, params, x, jnp.arange(6) % 3, funnet.softmax_cross_entropy,
                    methods=("hand", "formula"))
    deltas = info.value.result.deltas
    assert not deltas.ok and deltas.first_divergence == "serial[1] › Tanh"
    assert [p for p, r in deltas.rows if r.ok] == ["serial[4] › Dense(3)", "serial[3] › Tanh",
                                                    "serial[2] › BadDx"]


def test_a_wrong_forward_twin_is_caught_by_the_forward_method_alone():
    right = funnet.define_activation("sq", lambda x: x * jnp.tanh(x),
                                     lambda x, y: jnp.tanh(x) + x * (1 - jnp.tanh(x) ** 2))
    # a layer whose forward twin uses a derivative off by 1 %, while its vjp wiring is right
    wrong_twin = funnet.define_activation("sq", right.f, lambda x, y: 1.01 * right.df(x, y))
    layer = funnet.ActivationLayer(right)
    layer = dataclasses.replace(
        layer, rewire=lambda w: funnet.ActivationLayer(wrong_twin.rewired(w)) if w == "jvp"
        else funnet.ActivationLayer(right.rewired(w)))
    net = funnet.serial(funnet.Dense(4), layer, funnet.Dense(3))
    params = init_params(net, (-1, 3), seed=5)
    x = jnp.asarray(np.random.default_rng(5).standard_normal((6, 3)))
    with pytest.raises(GradientCheckError, match=r"forward vs formula disagree at params leaf "
                                                 r"\[0\]\['W'\]") as info:
        check_model(net, params, x, jnp.arange(6) % 3, funnet.softmax_cross_entropy,
                    methods=("hand", "formula", "forward"))
    reports = info.value.result.reports
    assert reports["hand", "formula"].ok and not reports["forward", "formula"].ok


def test_a_user_activation_keeps_its_kinks_and_the_check_excludes_them():
    kinked = funnet.define_activation("myrelu", lambda x: jnp.where(x > 0, x, 0.0),
                                      lambda x, y: jnp.where(x > 0, 1.0, 0.0), kinks=(0.0,))
    assert kinked.kinks == (0.0,) and kinked.jvp_twin.kinks == (0.0,)
    layer = funnet.ActivationLayer(kinked)
    assert layer.kinks == (0.0,)
    net = funnet.serial(funnet.Dense(3), layer, funnet.Dense(1))
    params = init_params(net, (-1, 2), seed=4)
    params = (dict(params[0], b=jnp.zeros(3)), (), params[2])
    x = jnp.array([[0.0, 0.0], [1.0, -0.5], [0.3, 0.8]])  # row 0 sits on the kink
    result = check_model(net, params, x, jnp.ones((3, 1)), funnet.mse,
                         methods=("hand", "formula", "numerical"))
    assert result.ok and result.kinks.count > 0


# --- kinks and pieces: what the numerical witness excludes (found by the issue-12 review) --


def _relu_net_with_a_unit_on_its_kink():
    """Dense(2 → 3) → Relu → Dense(2) in float64; sample 0 is x = 0, so with b = 0 its three
    pre-activations sit exactly on the kink, and only the b coordinates move them."""
    net = funnet.serial(funnet.Dense(3), funnet.Relu, funnet.Dense(2))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64),
                                    init_params(net, (-1, 2), seed=0))
    params = (dict(params[0], b=jnp.zeros(3)), (), params[2])
    x = jnp.array([[0.0, 0.0], [1.0, 2.0], [-1.0, 0.5]])
    return net, params, x, jnp.array([0, 1, 0])


def test_a_unit_on_a_kink_excludes_only_the_coordinates_that_move_it():
    # the old rule excluded every coordinate while any unit sat on a kink (17 of 17 here:
    # the numerical witness then checked nothing and the report still said ok)
    net, params, x, y = _relu_net_with_a_unit_on_its_kink()
    result = check_model(net, params, x, y, funnet.softmax_cross_entropy,
                         methods=("formula", "numerical"), layers=False)
    assert result.ok and result.kinks.total == 17
    excluded = jax.tree_util.tree_leaves(result.kinks.mask)
    # W of the first Dense multiplies x = 0 and the second Dense is after the Relu: only
    # the three biases of the first Dense move sample 0's pre-activations
    # leaves in pytree order: W, b of the first Dense, then W, b of the second
    assert [np.flatnonzero(np.asarray(m)).tolist() for m in excluded] == [[], [0, 1, 2], [], []]
    assert "reaches or crosses 0" in result.kinks.examples[0]


def test_mostly_excluded_coordinates_warn_that_the_numerical_witness_checked_little():
    net, params, x, y = _relu_net_with_a_unit_on_its_kink()
    # every pre-activation 3e-12 from the kink: a step of any first-layer coordinate (9 of
    # the 17) carries some unit across it
    tiny = dict(params[0], W=jnp.full((2, 3), 1e-12), b=jnp.full(3, 1e-12))
    params, x = (tiny, (), params[2]), jnp.ones((3, 2))
    with pytest.warns(UserWarning, match=r"numerical witness checked only 8 of 17"):
        result = check_model(net, params, x, y, funnet.softmax_cross_entropy,
                             methods=("formula", "numerical"), layers=False)
    assert result.kinks.mostly_excluded and "checked only" in str(result.kinks)


def _near_tie_maxpool():
    """Dense(3 → 2) → Reshape [2, 1] → MaxPool(2) → Flatten → Dense(2), float64: the two
    values of the pooling window differ by 1e-9 (far less than a central-difference step),
    so a step of most first-layer coordinates swaps the window's arg-max."""
    pool = funnet.MaxPool(2)
    net = funnet.serial(funnet.Dense(2), funnet.Reshape((2, 1)), pool, funnet.Flatten,
                        funnet.Dense(2))
    rng = np.random.default_rng(0)
    W = rng.standard_normal((3, 2))
    x = rng.standard_normal((4, 3))
    # b makes z[:, 0] - z[:, 1] = 1e-9 on every row: W[:, 1] = W[:, 0] and b1 = b0 - 1e-9
    W[:, 1] = W[:, 0]
    params = ({"W": jnp.asarray(W), "b": jnp.asarray([0.3, 0.3 - 1e-9])}, (), (), (),
              {"W": jnp.asarray(rng.standard_normal((1, 2))), "b": jnp.zeros(2)})
    return net, params, jnp.asarray(x), jnp.array([0, 1, 1, 0])


def test_a_step_that_changes_maxpools_argmax_is_excluded_and_named():
    net, params, x, y = _near_tie_maxpool()
    result = check_model(net, params, x, y, funnet.softmax_cross_entropy,
                         methods=("formula", "numerical"), layers=False)
    assert result.ok and result.kinks.count > 0
    assert "of serial[2] › MaxPool(2) changes its piece (arg-max)" in result.kinks.examples[0]
    # the control: the same MaxPool without its pieces, i.e. the rule for activations only,
    # compares the difference quotient across the switch and fails a correct gradient
    blind = funnet.serial(*[dataclasses.replace(c, pieces=None) if c.name == "MaxPool(2)"
                            else c for c in net.children])
    with pytest.raises(GradientCheckError, match="numerical vs formula"):
        check_model(blind, params, x, y, funnet.softmax_cross_entropy,
                    methods=("formula", "numerical"), layers=False)


def test_maxpool_pieces_are_the_first_argmax_of_each_window():
    x = jnp.array([1.0, 3.0, 3.0, 2.0, 0.0, 5.0]).reshape(1, 6, 1)
    assert funnet.MaxPool(2).pieces(x).ravel().tolist() == [1, 0, 1]  # [1 3] [3 2] [0 5]
    assert funnet.MaxPool(3, strides=1).pieces(x).ravel().tolist() == [1, 0, 0, 2]  # ties: first
    # the Taylor test drops steps that change a piece the same way
    ids = funnet.check.witnesses.piece_ids(funnet.MaxPool(2), x)
    assert [np.asarray(i).tolist() for i in ids] == [[1, 0, 1]]
    assert [np.asarray(i).tolist() for i in funnet.check.witnesses.piece_ids(
        funnet.Relu, jnp.array([-1.0, 0.0, 2.0]))] == [[-1, 0, 1]]
