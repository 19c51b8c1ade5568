"""Layers, parameterised over the one layer registry in ``_registry.py``.

Each layer's hand ``backward`` (via ``funnet.backprop.backward``) is checked against
``jax.vjp`` of its ``apply`` and of an independent plain-``jax.numpy`` reference.
Every layer runs through the stateful entry points (``apply_with_state`` with the state
``init_with_state`` gives, ``()`` without state); a case marked ``stateful``
(``BatchNorm``) runs in training mode, and the stax pair must refuse it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import (
    LAYER_CASES,
    LayerCase,
    assert_trees_close,
    batch_shape,
    init_params,
    init_shapes,
    init_state,
    one_at_a_time,
    output_array,
    output_rows,
    random_input,
)
from jax.example_libraries import stax

import funnet

CASES = [pytest.param(c, id=c.id) for c in LAYER_CASES]
CASES_BY_ID = {c.id: c for c in LAYER_CASES}
KEY = jax.random.PRNGKey(42)
# float64 backward vs vjp: the same sums in a different order, a few ulp of O(1) values.
TIGHT = {"rtol": 1e-10, "atol": 1e-12}


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def _key(case: LayerCase):
    return KEY if case.needs_key else None


def _train(case: LayerCase) -> bool:
    return case.needs_key or case.stateful


@functools.cache
def _state(case_id: str):
    case = CASES_BY_ID[case_id]
    return init_state(case.layer, case.input_shape)


def _apply(case: LayerCase, params, x, **kwargs):
    """``y`` of the case's layer through ``apply_with_state`` (its state from init)."""
    return case.layer.apply_with_state(params, _state(case.id), x, **kwargs)[0]


def _backward(case: LayerCase, params, x, dy):
    return funnet.backprop.backward(case.layer, params, x, dy, key=_key(case),
                                    train=_train(case), state=_state(case.id))


def _problem(case: LayerCase, n: int = 5):
    params = init_params(case.layer, case.input_shape)
    x = random_input(case, n)
    return params, x


def _cotangent(y, seed=1):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(rng.standard_normal(a.shape)), y)


# --- init, apply -------------------------------------------------------------------------


def _count(spec) -> int:
    """Entries in a params-shape spec: dicts hold shapes, tuples hold sub-layers' specs."""
    if isinstance(spec, dict):
        return sum(math.prod(shape) for shape in spec.values())
    return sum(_count(s) for s in spec)


@pytest.mark.parametrize("case", CASES)
def test_init_output_shape_and_named_params(case):
    out_shape, params = init_shapes(case.layer, case.input_shape)
    assert out_shape == case.out_shape
    assert _shapes(params) == case.param_shapes  # structure, leaf names and shapes
    assert funnet.param_count(params) == _count(case.param_shapes)
    # a concrete batch size goes through unchanged
    out_shape_5, _ = init_shapes(case.layer, batch_shape(case.input_shape, 5))
    # a readout's rows are graphs, whose number the node-feature shape does not give
    assert out_shape_5 == (case.out_shape if case.graph_level else batch_shape(case.out_shape, 5))


def test_dense_init_values():
    out_shape, params = funnet.Dense(3).init(jax.random.PRNGKey(0), (-1, 4))
    assert out_shape == (-1, 3) and set(params) == {"W", "b"}
    assert params["W"].shape == (4, 3) and params["b"].shape == (3,)
    np.testing.assert_array_equal(params["b"], np.zeros(3))  # biases start at 0
    assert np.all(params["W"] != 0) and np.std(params["W"]) < 2  # Glorot-scaled, not zeros
    _, again = funnet.Dense(3).init(jax.random.PRNGKey(0), (-1, 4))
    np.testing.assert_array_equal(again["W"], params["W"])  # deterministic in the key
    _, prelu = funnet.PRelu(slope_init=0.1).init(jax.random.PRNGKey(0), (-1, 4))
    np.testing.assert_array_equal(prelu["slope"], np.full(4, 0.1))
    # the initializers are the caller's to choose (jax.nn.initializers)
    init = jax.nn.initializers
    _, custom = funnet.Dense(3, W_init=init.constant(0.5), b_init=init.ones).init(
        jax.random.PRNGKey(0), (-1, 4))
    np.testing.assert_array_equal(custom["W"], np.full((4, 3), 0.5))
    np.testing.assert_array_equal(custom["b"], np.ones(3))


@functools.cache
def eager(case_id: str) -> dict:
    """apply and the hand backward of a case, run op by op (memoised)."""
    case = CASES_BY_ID[case_id]
    params, x = _problem(case)
    y = _apply(case, params, x, key=_key(case), train=_train(case))
    dy = _cotangent(y)
    return {
        "params": params, "x": x, "dy": dy, "y": y,
        "backward": _backward(case, params, x, dy),
    }


def _jitted_case(case: LayerCase, params, x, dy) -> dict:
    mode = {"key": _key(case), "train": _train(case)}
    out = {
        "y": _apply(case, params, x, **mode),
        "forward": case.layer.forward_with_state(params, _state(case.id), x, **mode)[0],
        "backward": _backward(case, params, x, dy),
        "vjp": jax.vjp(lambda p, x: _apply(case, p, x, **mode), params, x)[1](dy),
    }
    # one sample (graph) at a time, in evaluation mode (Dropout is then the identity,
    # BatchNorm uses its running statistics: both act on each sample alone)
    out["vmap"], out["batched"] = one_at_a_time(case, lambda xi: _apply(case, params, xi), x)
    if case.ref is not None:
        out["vjp_ref"] = jax.vjp(case.ref, params, x)[1](dy)
        out["ref"] = case.ref(params, x)
    return out


@functools.cache
def _all_jitted() -> dict:
    inputs = {c.id: tuple(eager(c.id)[k] for k in ("params", "x", "dy")) for c in LAYER_CASES}
    return jax.jit(lambda inputs: {  # one compile for every case
        c.id: _jitted_case(c, *inputs[c.id]) for c in LAYER_CASES
    })(inputs)


def jitted(case_id: str) -> dict:
    """The case under jit, with jax.vjp of apply and of the reference, and a vmap."""
    return _all_jitted()[case_id]


@pytest.mark.parametrize("case", CASES)
def test_apply_shape_and_forward(case):
    e, j = eager(case.id), jitted(case.id)
    assert output_array(e["y"]).shape == batch_shape(case.out_shape, output_rows(case, e["x"]))
    assert_trees_close(j["forward"], j["y"], rtol=0, atol=0)
    if case.ref is not None:
        assert_trees_close(e["y"], jitted(case.id)["ref"], **TIGHT)


# --- the hand backward --------------------------------------------------------------------


def _assert_dx_close(case: LayerCase, dx, dx_ad):
    if case.vocab:  # integer ids: no gradient (None), where jax.vjp gives float0 zeros
        assert dx is None and jnp.result_type(dx_ad) == jax.dtypes.float0
    elif case.graph:  # the structure (integers, bools) has no gradient: None, and float0
        for field in funnet.graph.STRUCTURE:
            ad = getattr(dx_ad, field)
            assert getattr(dx, field) is None
            assert ad is None or jnp.result_type(ad) == jax.dtypes.float0, field
        assert_trees_close(dx.nodes, dx_ad.nodes, **TIGHT)
    else:
        assert_trees_close(dx, dx_ad, **TIGHT)


@pytest.mark.parametrize("case", CASES)
def test_backward_matches_vjp(case):
    (dparams, dx), j = eager(case.id)["backward"], jitted(case.id)
    dparams_ad, dx_ad = j["vjp"]
    assert_trees_close(dparams, dparams_ad, **TIGHT)
    _assert_dx_close(case, dx, dx_ad)
    if case.ref is not None:  # and against autodiff of the plain formula
        dparams_ref, dx_ref = j["vjp_ref"]
        assert_trees_close(dparams, dparams_ref, **TIGHT)
        _assert_dx_close(case, dx, dx_ref)
    assert np.any(np.asarray(jax.tree_util.tree_leaves((dparams, dx))[0]) != 0) or (
        case.id == "Step")  # a non-trivial check (Step's gradient is 0 by definition)


@pytest.mark.parametrize("case", CASES)
def test_jit_and_vmap(case):
    e, j = eager(case.id), jitted(case.id)
    assert_trees_close(j["y"], e["y"], **TIGHT)
    assert_trees_close(j["backward"], e["backward"], **TIGHT)
    assert_trees_close(j["vmap"], j["batched"], **TIGHT)


# --- the stax contract ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_unpacks_as_init_apply(case):
    init, apply = case.layer
    assert len(case.layer) == 2 and case.layer[0] == case.layer.init
    params, x = _problem(case)
    if case.stateful:  # the stax pair is stateless: it refuses a layer holding state
        with pytest.raises(funnet.StatefulModelError, match="holds state"):
            init(KEY, case.input_shape)
        with pytest.raises(funnet.StatefulModelError, match="holds state"):
            apply(params, x)
        return
    box = {}
    jax.eval_shape(lambda k: box.setdefault("out", init(k, case.input_shape)[0]) and (), KEY)
    assert box["out"] == case.out_shape
    key = _key(case)
    expected = case.layer.apply(params, x, key=key, train=case.needs_key)
    assert_trees_close(apply(params, x, key=key, train=case.needs_key), expected, rtol=0, atol=0)
    assert_trees_close(apply(params, x, rng=key, train=case.needs_key), expected, rtol=0,
                       atol=0)  # stax's keyword


def test_stax_layers_inside_funnet_serial():
    net = funnet.serial(stax.Dense(4), funnet.Tanh, stax.Relu, funnet.Dense(2))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((3, 5)))
    with jax.numpy_rank_promotion("allow"):  # stax.Dense broadcasts its bias implicitly
        out_shape, params = net.init(KEY, (-1, 5))
        y = net.apply(params, x)
    assert out_shape == (-1, 2) and y.shape == (3, 2)
    (W0, b0), _, _, p3 = jax.tree_util.tree_map(np.asarray, params)
    expected = np.maximum(np.tanh(np.asarray(x) @ W0 + b0), 0) @ p3["W"] + p3["b"]  # NumPy
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-14)


def test_funnet_layers_inside_stax_serial():
    init, apply = stax.serial(funnet.Dense(4), funnet.Tanh, funnet.Dense(2))
    out_shape, params = init(KEY, (-1, 3))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)))
    y = apply(params, x)  # stax passes rng=None to every layer
    assert out_shape == (-1, 2)
    ours = funnet.serial(funnet.Dense(4), funnet.Tanh, funnet.Dense(2))
    np.testing.assert_allclose(y, ours.apply(tuple(params), x), rtol=1e-14, atol=0)
    # stax's rng reaches funnet's Dropout as its key; stax.serial forwards train=True
    init, apply = stax.serial(funnet.Dense(50), funnet.Dropout(0.5))
    _, params = init(KEY, (-1, 3))
    dropped = apply(params, x, rng=KEY, train=True)
    assert 0.3 < float(jnp.mean(dropped == 0)) < 0.7
    assert not np.any(apply(params, x, rng=KEY) == 0)  # evaluation mode: identity


# --- inspection -------------------------------------------------------------------------------


def test_param_count_2_4_1_is_17():
    net = funnet.serial(funnet.Dense(4), funnet.Logistic, funnet.Dense(1))
    _, params = init_shapes(net, (-1, 2))
    assert funnet.param_count(params) == 2 * 4 + 4 + 4 * 1 + 1 == 17
    assert funnet.param_count(()) == 0
    assert funnet.param_count({"slope": jnp.zeros(7)}) == 7


def test_summary_table():
    net = funnet.serial(funnet.Dense(4), funnet.Relu, funnet.PRelu, funnet.Dense(1))
    printed = []
    text = funnet.summary(net, (-1, 2), print_fn=printed.append)
    assert printed == [text]
    rows = [line.split() for line in text.splitlines()]
    assert rows[0] == ["#", "layer", "output", "shape", "params"]
    assert rows[1:] == [
        ["0", "Dense(4)", "(-1,", "4)", "12"],
        ["1", "Relu", "(-1,", "4)", "0"],
        ["2", "PRelu", "(-1,", "4)", "4"],
        ["3", "Dense(1)", "(-1,", "1)", "5"],
        ["total", "21"],
    ]
    single = funnet.summary(funnet.Dense(3), (-1, 5), print_fn=None).splitlines()
    assert single[1].split() == ["0", "Dense(3)", "(-1,", "3)", "18"]
    assert single[2].split() == ["total", "18"]


def test_layer_names():
    assert repr(funnet.Dense(4)) == "Dense(4)"
    assert funnet.Elu(alpha=0.5).name == "Elu(alpha=0.5)"
    assert funnet.LeakyRelu(slope=0.1).name == "LeakyRelu(slope=0.1)"
    assert funnet.serial(funnet.Dense(2), funnet.Relu).name == "serial(Dense(2), Relu)"


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize("layer, act, hyper", [
    (funnet.Elu(alpha=0.5), funnet.elu, {"alpha": 0.5}),
    (funnet.LeakyRelu(slope=0.1), funnet.leaky_relu, {"slope": 0.1}),
    (funnet.Elu(alpha=0.5)(alpha=2.0), funnet.elu, {"alpha": 2.0}),
])
def test_configured_activation_layers(layer, act, hyper):
    x = jnp.asarray([[-2.0, -0.5, 0.0, 1.5]])
    np.testing.assert_array_equal(layer.apply((), x), act(x, **hyper))
    _, dx = funnet.backprop.backward(layer, (), x, jnp.ones_like(x))
    np.testing.assert_array_equal(dx, act.derivative(x, **hyper))
    default = act(x)
    assert not np.array_equal(layer.apply((), x), default)  # the option took effect


def test_bad_configuration():
    with pytest.raises(TypeError, match=r"Dense\(4\) is a layer, not a layer constructor"):
        funnet.Dense(4)(alpha=1)
    with pytest.raises(TypeError, match="beta"):
        funnet.Elu(beta=1.0)
    with pytest.raises(TypeError, match="must be a Python number"):
        funnet.LeakyRelu(slope="0.1")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(funnet.LayerError, match="out_dim must be an int ≥ 1"):
            funnet.Dense(bad)
    for rate in (1.0, -0.1, 1.5):
        with pytest.raises(funnet.LayerError, match="drop probability"):
            funnet.Dropout(rate)


# --- Dropout --------------------------------------------------------------------------------


def test_dropout_rate_is_the_drop_probability():
    rate, x = 0.3, jnp.ones((200, 250))
    y = funnet.Dropout(rate).apply((), x, key=KEY, train=True)
    dropped = float(jnp.mean(y == 0))
    # 50 000 Bernoulli(0.3) draws: σ = √(0.3·0.7/50000) ≈ 0.002; allow 5σ.
    assert abs(dropped - rate) < 0.01, dropped
    np.testing.assert_allclose(y[y != 0], 1 / (1 - rate), rtol=1e-15)  # inverted scaling
    other = funnet.Dropout(rate).apply((), x, key=jax.random.PRNGKey(1), train=True)
    assert not np.array_equal(y, other)  # the mask comes from the key


def test_dropout_in_evaluation_mode_is_the_identity():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 6)))
    layer = funnet.Dropout(0.5)
    assert layer.apply((), x) is x
    assert layer.apply((), x, key=KEY) is x  # a key alone does not mean training
    dparams, dx = funnet.backprop.backward(layer, (), x, 2 * x, key=KEY)
    assert dparams == () and np.array_equal(dx, 2 * x)
    np.testing.assert_array_equal(funnet.Dropout(0.0).apply((), x, key=KEY, train=True), x)


def test_dropout_in_training_mode_needs_a_key():
    net = funnet.serial(funnet.Dense(3), funnet.Dropout(0.5))
    params = init_params(net, (-1, 4))
    with pytest.raises(funnet.LayerError, match=r"serial\[1\] › Dropout\(0.5\): train=True needs"):
        net.apply(params, jnp.ones((2, 4)), train=True)


def test_dropout_backward_uses_the_forward_mask():
    layer = funnet.Dropout(0.4)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((30, 20)))
    dy = jnp.asarray(np.random.default_rng(1).standard_normal((30, 20)))
    y, mask = layer.forward((), x, key=KEY, train=True)
    _, dx = layer.backward((), mask, dy)
    kept = np.asarray(y != 0)
    assert 0 < kept.mean() < 1
    np.testing.assert_array_equal(dx[~kept], 0.0)
    np.testing.assert_allclose(dx[kept], np.asarray(dy)[kept] / 0.6, rtol=1e-15)
    # the mask inside a serial, driven by value_and_grad's key, is the mask of apply's key
    net = funnet.serial(funnet.Dense(20), funnet.Dropout(0.4), funnet.Dense(1))
    params = init_params(net, (-1, 20))
    t = jnp.zeros((30, 1))
    (_, grads), ref = jax.jit(lambda p: (
        funnet.backprop.value_and_grad(net, funnet.mse)(p, x, t, key=KEY, train=True),
        jax.grad(lambda p: funnet.mse(net.apply(p, x, key=KEY, train=True), t))(p),
    ))(params)
    assert_trees_close(grads, ref, **TIGHT)


# --- bad input: clear errors, before XLA ---------------------------------------------------

NET = funnet.serial(funnet.Dense(4), funnet.Relu, funnet.Dense(2))
NET_PARAMS = init_params(NET, (-1, 3))
X3 = jnp.ones((5, 3))
p0, p1, p2 = NET_PARAMS
NET_PRELU = funnet.serial(funnet.PRelu, funnet.Dense(2))

BAD = [
    # (id, call, error, fragments the message must contain)
    ("Dense init rank 0", lambda: funnet.Dense(4).init(KEY, ()),
     funnet.LayerError, ["Dense(4)", "()", "rank 0"]),
    ("serial init rank 0", lambda: NET.init(KEY, ()),
     funnet.LayerError, ["serial[0]", "Dense(4)", "rank 0"]),
    ("FanInSum mismatched init",
     lambda: funnet.serial(funnet.fanout(2), funnet.parallel(funnet.Dense(3), funnet.Dense(4)),
                           funnet.FanInSum).init(KEY, (-1, 2)),
     funnet.LayerError, ["serial[2]", "FanInSum", "(-1, 3)", "(-1, 4)"]),
    ("FanInSum mismatched apply",
     lambda: funnet.FanInSum.apply((), (jnp.ones((2, 3)), jnp.ones((2, 4)))),
     funnet.LayerError, ["FanInSum", "(2, 3)", "(2, 4)"]),
    ("wrong trailing dim", lambda: NET.apply(NET_PARAMS, jnp.ones((5, 7))),
     funnet.LayerError, ["serial[0]", "Dense(4)", "(5, 7)", "(3, 4)"]),
    ("wrong trailing dim at layer 2",
     lambda: NET.apply((p0, p1, {"W": jnp.ones((3, 2)), "b": jnp.ones(2)}), X3),
     funnet.LayerError, ["serial[2]", "Dense(2)", "(5, 4)", "(3, 2)"]),
    ("wrong rank", lambda: NET.apply(NET_PARAMS, jnp.asarray(1.0)),
     funnet.LayerError, ["serial[0]", "Dense(4)", "rank 0"]),
    ("Softmax of a scalar", lambda: funnet.Softmax.apply((), jnp.asarray(1.0)),
     funnet.LayerError, ["Softmax", "rank 0"]),
    ("too few params", lambda: NET.apply((p0, p1), X3),
     funnet.ParamsError, ["serial", "(3)", "length 2"]),
    ("Dense params in place of activation", lambda: NET.apply((p0, p0, p2), X3),
     funnet.ParamsError, ["serial[1]", "Relu", "no params", "'W'", "'b'"]),
    ("missing b", lambda: NET.apply((p0, p1, {"W": p2["W"]}), X3),
     funnet.ParamsError, ["serial[2]", "Dense(2)", "['W', 'b']", "got ['W']"]),
    ("W and b do not fit", lambda: NET.apply((p0, p1, {"W": p2["W"], "b": jnp.ones(3)}), X3),
     funnet.ParamsError, ["serial[2]", "Dense(2)", "(4, 2)", "(3,)"]),
    ("PRelu slope shape", lambda: funnet.PRelu.apply({"slope": jnp.ones(3)}, jnp.ones((2, 4))),
     funnet.LayerError, ["PRelu", "(2, 4)", "(3,)"]),
    ("parallel input count",
     lambda: funnet.parallel(funnet.Relu, funnet.Tanh).apply(((), ()), (X3,)),
     funnet.LayerError, ["parallel(Relu, Tanh)", "2 inputs", "got 1 inputs"]),
    ("Dense init without a feature size", lambda: funnet.Dense(3).init(KEY, (-1,)),
     funnet.LayerError, ["Dense(3)", "(-1,)", "feature"]),
    ("PRelu init without a feature size", lambda: NET_PRELU.init(KEY, (-1,)),
     funnet.LayerError, ["serial[0]", "PRelu", "(-1,)", "feature"]),
    ("FanInConcat axis out of range",
     lambda: funnet.FanInConcat(axis=2).init(KEY, ((-1, 3), (-1, 3))),
     funnet.LayerError, ["FanInConcat(axis=2)", "axis 2", "rank 2"]),
]


@pytest.mark.parametrize("call, error, fragments", [pytest.param(*b[1:], id=b[0]) for b in BAD])
def test_bad_input_raises_clear_error(call, error, fragments):
    assert issubclass(funnet.LayerError, ValueError) and issubclass(funnet.ParamsError, TypeError)
    with pytest.raises(error) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    # raised while tracing, before XLA sees anything: jit gives the very same error
    with pytest.raises(error) as jitted:
        jax.jit(lambda: call())()
    assert str(jitted.value) == str(info.value)


def test_fan_in_concat_init_shapes_along_any_axis():
    concat = funnet.FanInConcat
    assert concat().init(KEY, ((-1, 3), (-1, 4)))[0] == (-1, 7)
    assert concat(axis=0).init(KEY, ((-1, 3), (-1, 3)))[0] == (-1, 3)  # batch size unknown
    assert concat(axis=0).init(KEY, ((2, 3), (5, 3)))[0] == (7, 3)
    assert concat(axis=-2).init(KEY, ((2, 3), (5, 3)))[0] == (7, 3)


def test_a_layer_with_a_backward_but_no_forward_is_named():
    half = funnet.Layer(funnet.Relu.init_with_state, funnet.Relu.apply_with_state, None,
                        funnet.Relu.backward, name="HalfRelu")
    with pytest.raises(TypeError, match="forward and backward come together"):
        funnet.layer(funnet.Relu.init, backward=funnet.Relu.backward, apply=funnet.Relu.apply)
    net = funnet.serial(funnet.Dense(2), half)
    params = init_params(net, (-1, 3))
    with pytest.raises(funnet.NoBackwardRuleError, match=r"serial\[1\] HalfRelu"):
        funnet.backprop.value_and_grad(net, funnet.mse)(params, X3, jnp.zeros((5, 2)))


@pytest.mark.parametrize("param_dtype, x_dtype", [
    (jnp.bfloat16, jnp.float32), (jnp.float32, jnp.float64), (jnp.float64, jnp.float32)])
def test_hand_gradients_have_the_dtype_of_what_they_differentiate(param_dtype, x_dtype):
    net = funnet.serial(funnet.Dense(4), funnet.PRelu, funnet.Dense(2))
    params = jax.tree_util.tree_map(lambda a: a.astype(param_dtype), init_params(net, (-1, 3)))
    x = jnp.ones((5, 3), x_dtype)
    grads, dx = funnet.backprop.backward(net, params, x, jnp.ones((5, 2), x_dtype))
    ref_grads, ref_dx = jax.grad(lambda p, x: jnp.sum(net.apply(p, x)), argnums=(0, 1))(
        params, x)
    assert jax.tree_util.tree_map(lambda a: a.dtype, grads) == jax.tree_util.tree_map(
        lambda a: a.dtype, ref_grads)
    assert dx.dtype == ref_dx.dtype == x.dtype


# --- the registry covers every public layer ------------------------------------------------


def _stems(layer) -> set:
    return {layer.name.split("(")[0]}.union(*(_stems(c) for c in layer.children))


def test_every_public_layer_has_a_registry_entry():
    covered = set().union(*(_stems(c.layer) | set(c.covers) for c in LAYER_CASES))
    missing = []
    for name in funnet.layers.__all__:
        obj = getattr(funnet.layers, name)
        if name in ("param_count", "summary", "RecurrentOutput", "reverse_time"):
            continue  # inspection and sequence helpers, not layers
        stem = obj.name.split("(")[0] if isinstance(obj, funnet.Layer) else name
        if stem not in covered:
            missing.append(name)
    assert not missing, f"public layers without a case in tests/_registry.py: {missing}"


# --- every witness on every registered layer -------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_check_layer_passes_on_every_registered_layer(case):
    params, x = _problem(case)
    result = funnet.check_layer(case.layer, params, x, key=_key(case), train=_train(case),
                                state=_state(case.id))
    assert result.ok and result.dtype == "float64"
    assert len(result.params.rows) == len(jax.tree_util.tree_leaves(params))
    if case.vocab:  # integer ids: listed as without gradient, not compared
        assert not result.inputs.rows and result.no_gradient == ("x",)
    elif case.graph:  # the node features compared; the structure listed without gradient
        assert [row.leaf for row in result.inputs.rows] == ["['x.nodes']"]
        assert {f"x.{f}" for f in funnet.graph.STRUCTURE} <= set(result.no_gradient)
    else:
        assert len(result.inputs.rows) == 1 and not result.no_gradient


@pytest.mark.parametrize("case", CASES)
def test_jvp_of_the_forward_twin_is_the_transpose_of_the_hand_backward(case):
    # ⟨J t, dy⟩ = ⟨t, Jᵀ dy⟩: J t by forward mode through the twin (custom_jvp from the
    # hand f'), Jᵀ dy by the hand backward rule; float64, O(1) sums of ~100 terms
    params, x = _problem(case)
    key, train, state = _key(case), _train(case), _state(case.id)
    twin = funnet.forward_twin(case.layer)
    t_params, t_x = _cotangent(params, seed=2), _cotangent(x, seed=3)
    if case.vocab:  # integer ids take a float0 tangent and give no gradient
        t_x = np.zeros(x.shape, jax.dtypes.float0)
    elif case.graph:  # so does a graph's structure
        t_x = t_x._replace(**{f: np.zeros(np.shape(getattr(x, f)), jax.dtypes.float0)
                              for f in funnet.graph.STRUCTURE if getattr(x, f) is not None})
    y, jt = jax.jvp(lambda p, v: twin.apply_with_state(p, state, v, key=key, train=train)[0],
                    (params, x), (t_params, t_x))
    dy = _cotangent(y, seed=4)
    dparams, dx = _backward(case, params, x, dy)

    def dot(a, b):
        return sum(jnp.vdot(u, v) for u, v in zip(jax.tree_util.tree_leaves(a),
                                                  jax.tree_util.tree_leaves(b)))

    tx_dx = 0.0 if case.vocab else dot(t_x.nodes, dx.nodes) if case.graph else dot(t_x, dx)
    jt_dy = dot(output_array(jt), output_array(dy))  # a graph's structure: float0 tangents
    np.testing.assert_allclose(jt_dy, dot(t_params, dparams) + tx_dx, rtol=1e-11, atol=1e-11)



def _as_lists(x):
    """The input with every array as a nested Python list (a tuple input stays a tuple)."""
    if isinstance(x, tuple):  # a NamedTuple (a Graph) keeps its type
        parts = [None if a is None else np.asarray(a).tolist() for a in x]
        return type(x)(*parts) if hasattr(x, "_fields") else tuple(parts)
    return np.asarray(x).tolist()


@pytest.mark.parametrize("case", CASES)
def test_a_python_list_input_is_refused_naming_the_layer(case):
    """jax.numpy refuses lists with an error naming neither the layer nor ``x`` (or an
    AttributeError from ``x.dtype``); every layer says which layer and what to do."""
    params, x = _problem(case, 2)
    with pytest.raises(funnet.LayerError, match=r"^\S.*: the input x is a list.*jnp\.asarray"):
        _apply(case, params, _as_lists(x), key=_key(case), train=_train(case))
