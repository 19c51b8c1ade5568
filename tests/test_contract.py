"""The layer contract v2 (funnet/contract.py): state, train mode, inputs without gradients,
declared weight decay, forward twins, and the per-layer check.

The stateful and id-consuming layers here are written in the test, with ``funnet.layer``,
as a user would write them: they exercise the contract, not a library layer.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import assert_trees_close, init_params
from jax.example_libraries import stax

import funnet

KEY = jax.random.PRNGKey(0)
TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def RunningMean(momentum: float = 0.5) -> funnet.Layer:
    """Centre the features: by the batch mean in training (and update the running mean),
    by the running mean in evaluation. State ``{"mean", "count"}``; no params."""

    def init(key, input_shape):
        d = input_shape[-1]
        return input_shape, (), {"mean": jnp.zeros(d), "count": jnp.zeros((), jnp.int32)}

    def forward(params, state, x, *, train=False):
        if train:
            mu = x.mean(axis=0)
            new = {"mean": momentum * state["mean"] + (1 - momentum) * mu,
                   "count": state["count"] + 1}
            return x - mu[None], new, x.shape[0]
        return x - state["mean"][None], state, None

    def backward(params, n, dy):
        if n is None:  # evaluation: y = x - constant
            return (), dy
        return (), dy - dy.mean(axis=0, keepdims=True)  # y = x - mean(x): dx = dy - mean(dy)

    return funnet.layer(init, forward, backward, name="RunningMean", stateful=True)


def Lookup(vocab: int, dim: int) -> funnet.Layer:
    """Integer ids -> rows of a table; the ids get no gradient (``None``)."""

    def init(key, input_shape):
        return tuple(input_shape) + (dim,), {"table": jax.random.normal(key, (vocab, dim))}

    def forward(params, ids):
        return params["table"][ids], ids

    def backward(params, ids, dy):
        dtable = jnp.zeros_like(params["table"]).at[ids.reshape(-1)].add(dy.reshape(-1, dim))
        return {"table": dtable}, None  # scatter-add; integer ids: no gradient

    return funnet.layer(init, forward, backward, name=f"Lookup({vocab}, {dim})")


# --- state ------------------------------------------------------------------------------------


def test_stateless_models_have_empty_state_that_comes_back_unchanged():
    net = funnet.serial(funnet.Dense(3), funnet.Relu, funnet.fanout(1),
                        funnet.parallel(funnet.Tanh))
    out_shape, params, state = net.init_with_state(KEY, (-1, 2))
    assert state == () and not net.stateful and out_shape == ((-1, 3),)
    x = jnp.ones((4, 2))
    inner = funnet.serial(funnet.Dense(3), funnet.Relu)
    y, new_state = inner.apply_with_state(params[:2], (), x, train=True)
    assert new_state == ()
    np.testing.assert_array_equal(y, inner.apply(params[:2], x))


def test_state_threads_through_combinators_and_train_mode_chooses_statistics():
    net = funnet.serial(funnet.Dense(3), RunningMean(), funnet.fanout(2),
                        funnet.parallel(funnet.Identity, RunningMean(0.0)), funnet.FanInSum)
    assert net.stateful and net.stateful_path() == "serial[1] › RunningMean"
    _, params, state = net.init_with_state(KEY, (-1, 2))
    assert jax.tree_util.tree_structure(state) == jax.tree_util.tree_structure(
        ((), {"mean": 0, "count": 0}, (), ((), {"mean": 0, "count": 0}), ()))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 2)))
    y_eval, same = net.apply_with_state(params, state, x)  # evaluation: state unchanged
    assert_trees_close(same, state, rtol=0, atol=0)
    y, new = net.apply_with_state(params, state, x, train=True)
    h = x @ params[0]["W"] + params[0]["b"][None]
    np.testing.assert_allclose(new[1]["mean"], 0.5 * h.mean(0), **TIGHT)
    assert int(new[1]["count"]) == 1 and int(new[3][1]["count"]) == 1
    centred = h - h.mean(0)[None]
    np.testing.assert_allclose(y, 2 * centred, **TIGHT)  # both branches centre by the batch
    np.testing.assert_allclose(y_eval, 2 * h, **TIGHT)  # running means start at 0
    # the second RunningMean saw centred inputs: its running mean stays 0
    np.testing.assert_allclose(new[3][1]["mean"], 0.0, atol=1e-15)
    # evaluation after an update uses the running statistics
    y2, _ = net.apply_with_state(params, new, x)
    np.testing.assert_allclose(y2, 2 * (h - 0.5 * h.mean(0)[None]), **TIGHT)


def test_plain_entry_points_refuse_a_stateful_model_and_name_the_layer():
    net = funnet.serial(funnet.Dense(3), funnet.fanout(1), funnet.parallel(RunningMean()))
    msg = r"serial\[2\] › parallel\[0\] › RunningMean holds state.*init_with_state.*apply_with_state"
    with pytest.raises(funnet.StatefulModelError, match=msg):
        net.init(KEY, (-1, 2))
    _, params, _ = net.init_with_state(KEY, (-1, 2))
    with pytest.raises(funnet.StatefulModelError, match=msg):
        net.apply(params, jnp.ones((2, 2)))
    with pytest.raises(funnet.StatefulModelError, match=msg):
        _, apply = net  # the stax view is stateless too
        apply(params, jnp.ones((2, 2)))
    with pytest.raises(funnet.StatefulModelError, match="has_state=True"):
        funnet.backprop.value_and_grad(net, funnet.mse)
    with pytest.raises(funnet.ParamsError, match="state must be a tuple"):
        net.apply_with_state(params, (), jnp.ones((2, 2)))
    assert funnet.summary(net, (-1, 2), print_fn=None).splitlines()[0].split() == [
        "#", "layer", "output", "shape", "params", "state"]


def test_hand_backprop_with_state_equals_jax_grad_and_never_differentiates_state():
    net = funnet.serial(funnet.Dense(4), RunningMean(), funnet.Tanh, funnet.Dense(2))
    _, params, state = net.init_with_state(KEY, (-1, 3))
    params = init_params(funnet.serial(funnet.Dense(4), funnet.Identity, funnet.Tanh,
                                       funnet.Dense(2)), (-1, 3), seed=1)
    x = jnp.asarray(np.random.default_rng(1).standard_normal((5, 3)))
    y = jnp.asarray(np.random.default_rng(2).standard_normal((5, 2)))
    fn = jax.jit(funnet.backprop.value_and_grad(net, funnet.mse, has_state=True, l2=0.1),
                 static_argnames="train")
    for train in (True, False):
        (value, new_state), grads = fn(params, state, x, y, train=train)

        def objective(p, train=train):
            out, s = net.apply_with_state(p, state, x, train=train)
            w = p[0]["W"], p[3]["W"]
            return funnet.mse(out, y) + 0.05 * sum(jnp.sum(v**2) for v in w), s

        (ref_value, ref_state), ref = jax.value_and_grad(objective, has_aux=True)(params)
        np.testing.assert_allclose(value, ref_value, **TIGHT)
        assert_trees_close(grads, ref, rtol=1e-10, atol=1e-12)
        assert_trees_close(new_state, ref_state, rtol=0, atol=0)
        assert int(new_state[1]["count"]) == int(train)


# --- inputs without gradients -------------------------------------------------------------------


def test_ids_get_no_gradient_and_the_table_gets_a_scatter_add():
    net = funnet.serial(Lookup(7, 3), funnet.Tanh, funnet.Flatten, funnet.Dense(2))
    _, params = net.init(KEY, (-1, 4))
    ids = jnp.array([[1, 1, 6, 0], [6, 2, 2, 2]])  # repeated ids accumulate
    y = jnp.asarray(np.random.default_rng(0).standard_normal((2, 2)))
    _, grads = funnet.backprop.value_and_grad(net, funnet.mse)(params, ids, y)
    ref = jax.grad(lambda p: funnet.mse(net.apply(p, ids), y))(params)
    assert_trees_close(grads, ref, **TIGHT)
    assert float(jnp.abs(grads[0]["table"][3:6]).max()) == 0.0  # ids never seen: no gradient
    _, dx = funnet.backprop.backward(net, params, ids, y)
    assert dx is None
    result = funnet.check_layer(net, params, ids)
    assert result.ok and result.no_gradient == ("x",) and not result.inputs.rows


def test_combinators_carry_none_cotangents():
    # a tuple input (ids, features): the ids branch returns None, the features branch a gradient
    net = funnet.serial(
        funnet.parallel(funnet.serial(Lookup(5, 3), funnet.Flatten), funnet.Dense(6)),
        funnet.FanInConcat(), funnet.fanout(2), funnet.parallel(funnet.Tanh, funnet.Identity),
        funnet.FanInSum, funnet.Dense(1))
    _, params = net.init(KEY, ((-1, 2), (-1, 4)))
    ids = jnp.array([[0, 4], [3, 3], [1, 0]])
    feats = jnp.asarray(np.random.default_rng(3).standard_normal((3, 4)))
    y = jnp.ones((3, 1))
    _, grads = funnet.backprop.value_and_grad(net, funnet.mse)(params, (ids, feats), y)
    ref = jax.grad(lambda p: funnet.mse(net.apply(p, (ids, feats)), y))(params)
    assert_trees_close(grads, ref, **TIGHT)
    _, (d_ids, d_feats) = funnet.backprop.backward(net, params, (ids, feats), y)
    assert d_ids is None and d_feats.shape == feats.shape
    assert funnet.check_layer(net, params, (ids, feats)).no_gradient == ("x[0]",)


def test_a_layer_below_a_none_gradient_gets_zeros():
    stop = funnet.layer(lambda k, s: (s, ()), lambda p, x: (x, None),
                        lambda p, r, dy: ((), None), name="StopGradient")
    net = funnet.serial(funnet.Dense(2), stop, funnet.Dense(1))
    params = init_params(net, (-1, 3))
    dparams, dx = funnet.backprop.backward(net, params, jnp.ones((4, 3)), jnp.ones((4, 1)))
    assert dx is None and float(jnp.abs(dparams[0]["W"]).max()) == 0.0
    assert float(jnp.abs(dparams[2]["W"]).max()) > 0


# --- construction, stax interplay, twins --------------------------------------------------------


def test_layer_passes_only_the_keywords_a_function_accepts():
    seen = {}

    def forward(params, x, *, train=False):  # no key
        seen["train"] = train
        return x, None

    lay = funnet.layer(lambda k, s: (s, ()), forward, lambda p, r, dy: ((), dy), name="T")
    lay.apply((), jnp.ones(2), key=KEY, train=True)
    assert seen["train"] is True
    with pytest.raises(TypeError, match="give forward"):
        funnet.layer(lambda k, s: (s, ()))


def test_the_row_mask_reaches_every_layer_that_takes_it_through_combinators():
    seen = []

    def forward(params, x, *, mask=None):
        seen.append(None if mask is None else np.asarray(mask).tolist())
        return x, None

    probe = funnet.layer(lambda k, s: (s, ()), forward, lambda p, r, dy: ((), dy), name="P")
    net = funnet.serial(funnet.Dense(2), probe, funnet.fanout(2),
                        funnet.parallel(probe, funnet.Tanh), funnet.FanInSum)
    _, params = net.init(KEY, (-1, 3))
    mask = jnp.array([1.0, 1.0, 0.0])
    net.apply(params, jnp.ones((3, 3)), mask=mask)
    net.forward(params, jnp.ones((3, 3)), mask=mask)
    net.apply(params, jnp.ones((3, 3)))
    assert seen == [[1.0, 1.0, 0.0]] * 4 + [None, None]


@jax.numpy_rank_promotion("allow")  # stax.Dense adds its bias by implicit broadcasting
def test_stax_pairs_inside_funnet_and_funnet_inside_stax():
    net = funnet.serial(stax.Dense(3), funnet.Tanh)
    _, params = net.init(KEY, (-1, 2))
    x = jnp.ones((2, 2))
    np.testing.assert_allclose(net.apply(params, x),
                               jnp.tanh(x @ params[0][0] + params[0][1][None]))
    with pytest.raises(funnet.ParamsError, match=r"serial\[0\] › .*declares no weight-decayed"):
        funnet.fit(net, params, (x, jnp.ones((2, 3))), loss=funnet.mse,
                   optimizer=__import__("optax").sgd(0.1), epochs=1, batch_size=2, key=KEY, l2=0.1)
    init, apply = stax.serial(funnet.Dense(3), funnet.Relu)
    _, params = init(KEY, (-1, 2))
    assert apply(params, x).shape == (2, 3)


def test_forward_twin_of_every_kind_of_layer_and_its_identity():
    plain = funnet.serial(funnet.Dense(2), funnet.Flatten)
    assert funnet.forward_twin(plain) is plain  # nothing to rewire: the model itself
    net = funnet.serial(funnet.Dense(2), funnet.fanout(1), funnet.parallel(funnet.PRelu),
                        funnet.FanInSum, funnet.Elu(alpha=0.5))
    twin = funnet.forward_twin(net)
    assert twin.name == net.name and twin.children[4].name == "Elu(alpha=0.5)"
    assert twin.children[0] is net.children[0]  # Dense has nothing to rewire
    _, params = net.init(KEY, (-1, 3))
    x = jnp.ones((2, 3))
    tangent = jax.tree_util.tree_map(jnp.ones_like, params)
    _, jt = jax.jvp(lambda p: twin.apply(p, x), (params,), (tangent,))
    _, ref = jax.jvp(lambda p: net.rewired("formula").apply(p, x), (params,), (tangent,))
    np.testing.assert_allclose(jt, ref, **TIGHT)
    with pytest.raises(ValueError, match="wiring must be one of"):
        net.rewired("fast")


def test_traced_train_flag_gets_a_clear_error():
    net = funnet.serial(funnet.Dense(2), funnet.Dropout(0.5))
    _, params = net.init(KEY, (-1, 3))
    with pytest.raises(TypeError, match="static_argnames"):
        jax.jit(lambda p, t: net.apply(p, jnp.ones((2, 3)), key=KEY, train=t))(params, True)


def test_identity_and_reshape():
    assert funnet.Identity.apply((), (jnp.ones(2), 3))[1] == 3  # any pytree passes through
    r = funnet.Reshape((2, -1))
    assert r.init(KEY, (-1, 3, 4))[0] == (-1, 2, 6)
    with pytest.raises(funnet.LayerError, match=r"Reshape\(\(2, 5\)\).*12 entries"):
        funnet.Reshape((2, 5)).init(KEY, (-1, 3, 4))
    with pytest.raises(funnet.LayerError, match="at most one -1"):
        funnet.Reshape((-1, -1))


# --- check_layer catches wrong rules and names the layer ------------------------------------


def test_check_layer_catches_a_wrong_activation_derivative_that_jax_grad_would_not():
    bad = funnet.define_activation("badtanh", jnp.tanh, lambda x, y: 1.01 * (1 - y**2))
    net = funnet.serial(funnet.Dense(4), funnet.ActivationLayer(bad), funnet.Dense(3))
    params = init_params(net, (-1, 3))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)))
    with pytest.raises(funnet.GradientCheckError, match="disagrees with jax.vjp of its formula"):
        funnet.check_layer(net, params, x)
    for dtype in (jnp.float32, jnp.float64):  # caught in float32 too
        layer = funnet.ActivationLayer(bad)
        with pytest.raises(funnet.GradientCheckError, match="Badtanh"):
            funnet.check_layer(layer, (), x.astype(dtype))


def test_check_layer_catches_a_wrong_backward_and_names_the_leaf():
    dense = funnet.Dense(3)

    def backward(params, res, dy):
        dparams, dx = dense.backward(params, res, dy)
        return {**dparams, "b": 0 * dparams["b"]}, dx  # forgot the bias sum

    import dataclasses

    broken = dataclasses.replace(dense, backward=backward, name="NoBiasDense")
    params = init_params(broken, (-1, 2))
    with pytest.raises(funnet.GradientCheckError, match=r"NoBiasDense.*params leaf \['b'\]") as e:
        funnet.check_layer(broken, params, jnp.ones((4, 2)))
    assert not e.value.result.ok and "FAILED" in str(e.value.result)


# --- mistakes a user makes get errors that name the layer (found by a new-user review) ------


def _scale_init(key, shape):
    return shape, {"s": jnp.ones(shape[-1])}


def _scale_backward(params, x, dy):
    return {"s": (dy * x).sum(0)}, dy * params["s"][None]


def test_a_forward_without_residuals_is_named():
    lay = funnet.layer(_scale_init, lambda p, x: x * p["s"][None], _scale_backward, name="Scale")
    with pytest.raises(funnet.LayerError, match=r"Scale: forward must return \(y, residuals\)"):
        lay.apply({"s": jnp.ones(3)}, jnp.ones((2, 3)))
    bad_init = funnet.layer(lambda k, s: {"s": jnp.ones(3)}, lambda p, x: (x, x),
                            _scale_backward, name="Scale")
    with pytest.raises(funnet.LayerError, match=r"Scale: init must return \(output_shape, params"):
        bad_init.init(KEY, (-1, 3))
    stateful = funnet.layer(lambda k, s: (s, (), ()), lambda p, st, x: (x, st),
                            lambda p, r, dy: ((), dy), name="S", stateful=True)
    with pytest.raises(funnet.LayerError, match=r"S: forward must return \(y, new_state, resid"):
        stateful.apply_with_state((), (), jnp.ones(2))


def test_decay_names_are_checked_and_a_single_name_may_be_a_string():
    fwd = lambda p, x: (x * p["scale"][None], x)
    one = funnet.layer(_scale_init, fwd, _scale_backward, decay="scale")
    assert one.decay_mask({"scale": jnp.ones(3)}) == {"scale": True}
    typo = funnet.layer(_scale_init, fwd, _scale_backward, decay=("W",), name="Typo")
    with pytest.raises(funnet.ParamsError, match=r"Typo: decay names \['W'\].*keys \['s'\]"):
        typo.decay_mask({"s": jnp.ones(3)})


def test_check_layer_fails_when_backward_drops_a_real_gradient():
    drops = funnet.layer(_scale_init, lambda p, x: (x * p["s"][None], x),
                         lambda p, x, dy: ({"s": (dy * x).sum(0)}, None), name="DropsDx")
    params = {"s": jnp.full(3, 2.0)}
    with pytest.raises(funnet.GradientCheckError, match=r"DropsDx returns no gradient .*x, but"):
        funnet.check_layer(drops, params, jnp.ones((4, 3)))
    wrong_shape = funnet.layer(_scale_init, lambda p, x: (x * p["s"][None], x),
                               lambda p, x, dy: ({"s": dy}, dy), name="WrongShape")
    with pytest.raises(funnet.GradientCheckError, match="WrongShape.*shape"):
        funnet.check_layer(wrong_shape, params, jnp.ones((4, 3)))


def test_training_entry_points_refuse_a_stateful_model_without_its_state():
    import optax

    net = funnet.serial(funnet.Dense(2), RunningMean())
    _, params, state = net.init_with_state(KEY, (-1, 3))
    data = (jnp.ones((4, 3)), jnp.ones((4, 2)))
    calls = {
        "fit": lambda: funnet.fit(net, params, data, loss=funnet.mse, optimizer=optax.sgd(0.1),
                                  epochs=1, batch_size=2, key=KEY),
        "make_step": lambda: funnet.make_step(net, funnet.mse, optax.sgd(0.1))(
            funnet.TrainState.create(params, optax.sgd(0.1), KEY), data),
        "evaluate": lambda: funnet.evaluate(net, params, data, loss=funnet.mse),
        "predict": lambda: funnet.predict(net, params, data[0]),
        "check_model": lambda: funnet.check_model(net, params, *data, funnet.mse),
    }
    for what, call in calls.items():
        with pytest.raises(funnet.StatefulModelError, match=rf"{what}: serial\[1\] › RunningMean"):
            call()
    with pytest.raises(funnet.StatefulModelError, match=r"check_model: .* pass state="):
        funnet.check_model(net, params, *data, funnet.mse)
    with pytest.raises(funnet.StatefulModelError, match="pass state="):
        funnet.check_layer(net, params, data[0])
    assert funnet.check_layer(net, params, data[0], state=state, train=True).ok


def test_check_model_carries_state_held_fixed_and_calls_batch_statistics_coupled():
    # given state=, check_model differentiates R(params) = loss(apply_with_state(params,
    # state, x)[0], y): the state is an input held fixed, the new state is dropped
    net = funnet.serial(funnet.Dense(2), RunningMean())
    _, params, state = net.init_with_state(KEY, (-1, 3))
    state = (state[0], {"mean": jnp.asarray([0.5, -1.0]), "count": state[1]["count"]})
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 3)))
    y = jnp.asarray(np.random.default_rng(4).standard_normal((4, 2)))
    fast = {"methods": ("hand", "formula", "numerical"), "batch": True}
    train = funnet.check_model(net, params, x, y, funnet.mse, state=state, train=True, **fast)
    # centring by the batch mean couples the rows: a batch of one is centred to 0
    assert train.ok and train.batch.verdict == "coupled"
    assert not train.batch.per_example.ok and train.batch.shuffled.ok
    evaluation = funnet.check_model(net, params, x, y, funnet.mse, state=state, **fast)
    assert evaluation.ok and evaluation.batch.verdict == "consistent"
    # the held state is the one given: R is the mse of x W + b − running mean
    h = x @ params[0]["W"] + params[0]["b"][None]
    np.testing.assert_allclose(evaluation.value, funnet.mse(h - state[1]["mean"][None], y),
                               **TIGHT)


def test_small_mistakes_get_helpful_errors():
    with pytest.raises(TypeError, match=r"not called on data: use Dense\(3\)\.apply"):
        funnet.Dense(3)(jnp.ones((1, 2)))
    with pytest.raises(TypeError, match="must be True or False"):
        funnet.Dropout(0.5).apply((), jnp.ones(3), key=KEY, train="no")
    with pytest.raises(funnet.LayerError, match="Reshape: shape must be a tuple of ints"):
        funnet.Reshape("ab")
    assert funnet.contract.as_layer(stax.Dense(3)).name == "Dense (stax pair)"


# --- gaps found by the mutation review -------------------------------------------------------


def test_twins_are_shared_whatever_order_they_are_made_in():
    for first in ("formula", "jvp"):
        a = funnet.define_activation("fresh", jnp.tanh, lambda x, y: 1 - y**2)
        a.rewired(first)
        assert a.formula.jvp_twin is a.jvp_twin and a.jvp_twin.formula is a.formula
        assert a.jvp_twin.rewired("vjp") is a and a.formula.rewired("vjp") is a


def test_direct_backward_calls_with_a_none_cotangent():
    _, dxs = funnet.backprop.backward(funnet.FanInConcat(), (), (jnp.ones((2, 1)), jnp.ones((2, 3))),
                                      None)
    assert dxs == (None, None)
    p = funnet.parallel(funnet.Dense(2), funnet.Dense(3))
    params = init_params(p, ((-1, 2), (-1, 2)))
    dparams, dx = funnet.backprop.backward(p, params, (jnp.ones((2, 2)), jnp.ones((2, 2))), None)
    assert dx == (None, None)
    assert all(float(jnp.abs(g).max()) == 0 for g in jax.tree_util.tree_leaves(dparams))
    assert jax.tree_util.tree_structure(dparams) == jax.tree_util.tree_structure(params)


def test_serial_gives_each_child_its_own_key():
    net = funnet.serial(funnet.Dropout(0.5), funnet.Dropout(0.5))
    y = net.apply(((), ()), jnp.ones((1, 4000)), key=KEY, train=True)
    kept = float(jnp.mean(y != 0))
    assert abs(kept - 0.25) < 0.03, kept  # two independent masks keep a quarter
    k0, k1 = jax.random.split(KEY, 2)
    first = funnet.Dropout(0.5).apply((), jnp.ones((1, 4000)), key=k0, train=True)
    np.testing.assert_array_equal(y, funnet.Dropout(0.5).apply((), first, key=k1, train=True))


def test_dense_refuses_a_w_of_another_width():
    with pytest.raises(funnet.ParamsError, match="5 outputs.*out_dim 4"):
        funnet.Dense(4).apply({"W": jnp.ones((2, 5)), "b": jnp.ones(5)}, jnp.ones((1, 2)))


def test_a_kwargs_forward_receives_every_keyword():
    seen = {}

    def forward(params, x, **kw):
        seen.update(kw)
        return x, None

    lay = funnet.layer(lambda k, s: (s, ()), forward, lambda p, r, dy: ((), dy))
    lay.apply((), jnp.ones(2), key=KEY, train=True)
    assert seen["train"] is True and seen["key"] is KEY


def test_stax_dropout_inside_funnet_gets_the_key():
    net = funnet.serial(funnet.Dense(30), stax.Dropout(0.5, mode="train"))
    _, params = net.init(KEY, (-1, 3))
    y = net.apply(params, jnp.ones((4, 3)), key=KEY, train=True)
    assert 0.2 < float(jnp.mean(y == 0)) < 0.8


def test_check_layer_uses_the_given_cotangent_and_state():
    dense = funnet.Dense(3)

    def wrong_below_zero(p, r, dy):
        return dense.backward(p, r, jnp.maximum(dy, 0))

    import dataclasses

    bad = dataclasses.replace(dense, backward=wrong_below_zero, name="HalfDense")
    params = init_params(bad, (-1, 2))
    x = jnp.ones((4, 2))
    assert funnet.check_layer(bad, params, x, dy=jnp.ones((4, 3))).ok
    with pytest.raises(funnet.GradientCheckError, match="HalfDense"):
        funnet.check_layer(bad, params, x, dy=-jnp.ones((4, 3)))
    rm = RunningMean()
    _, _, st = rm.init_with_state(KEY, (-1, 3))
    st = {"mean": jnp.full(3, 0.5), "count": st["count"]}
    xs = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)))
    for train in (False, True):
        assert funnet.check_layer(rm, (), xs, state=st, train=train).ok


def test_prelu_twin_keeps_its_options_and_its_formula_has_no_custom_rule():
    layer = funnet.PRelu(slope_init=0.1)
    twin = funnet.forward_twin(layer)
    assert twin.name == "PRelu(slope_init=0.1)"
    assert float(twin.init(KEY, (-1, 2))[1]["slope"][0]) == pytest.approx(0.1)
    # the formula wiring is differentiable in forward mode: no custom rule inside
    x, s = jnp.array([-2.0, 3.0]), jnp.array([0.3, 0.3])
    _, t = jax.jvp(lambda a: funnet.prelu.formula(a, s), (x,), (jnp.ones(2),))
    assert t.tolist() == pytest.approx([0.3, 1.0])
