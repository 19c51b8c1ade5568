"""Tests for funnet.signature: what a model's signature records, and the first difference.

Params come from ``jax.eval_shape`` of the models' ``init`` (no arrays are allocated, no
program compiled per case); the signature reads only shapes and dtypes.
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import pytest
from jax.example_libraries import stax

import funnet
from funnet.signature import SIGNATURE_VERSION, model_signature, signature_difference

KEY = jax.random.PRNGKey(0)


def abstract(model, input_shape):
    """``(params, state)`` of ``model`` as ShapeDtypeStructs."""
    _, params, state = jax.eval_shape(lambda k: model.init_with_state(k, input_shape), KEY)
    return params, state


def sig(model, input_shape, *, record_input=False):
    params, state = abstract(model, input_shape)
    return model_signature(model, params, state=state,
                           input_shape=input_shape if record_input else None)


def diff(a_model, b_model, a_in=(-1, 4), b_in=(-1, 4), **kw):
    return signature_difference(sig(a_model, a_in, **kw), sig(b_model, b_in, **kw))


def counter():
    """A stateful layer (counts its calls): its state is ``{"count": int32 scalar}``."""
    def init(key, input_shape):
        return input_shape, (), {"count": jnp.zeros((), jnp.int32)}

    def forward(params, state, x):
        return x, {"count": state["count"] + 1}, None

    return funnet.layer(init, forward, lambda p, r, dy: ((), dy), stateful=True, name="Counter")


# ----------------------------------------------------------------------------- what it records


def test_records_the_layer_tree_paths_shapes_dtypes_and_version():
    net = funnet.serial(funnet.Dense(3), funnet.LeakyRelu(slope=0.2),
                        funnet.serial(funnet.Dense(2), funnet.PRelu))
    s = sig(net, (-1, 4), record_input=True)
    assert s["funnet_signature"] == SIGNATURE_VERSION == 1
    assert s["model"] == {
        "name": "serial(Dense(3), LeakyRelu(slope=0.2), serial(Dense(2), PRelu))",
        "kind": "serial",
        "children": [
            {"name": "Dense(3)"},
            {"name": "LeakyRelu(slope=0.2)"},  # the option is part of the name
            {"name": "serial(Dense(2), PRelu)", "kind": "serial",
             "children": [{"name": "Dense(2)"}, {"name": "PRelu"}]},
        ],
    }
    assert s["input_shape"] == [-1, 4]
    dt = str(jnp.zeros(()).dtype)  # float64 here (the suite runs with jax_enable_x64)
    assert s["params"] == [
        {"path": "serial[0].W", "shape": [4, 3], "dtype": dt},
        {"path": "serial[0].b", "shape": [3], "dtype": dt},
        {"path": "serial[2] › serial[0].W", "shape": [3, 2], "dtype": dt},
        {"path": "serial[2] › serial[0].b", "shape": [2], "dtype": dt},
        {"path": "serial[2] › serial[1].slope", "shape": [2], "dtype": dt},
    ]
    assert s["state"] == []
    assert json.loads(json.dumps(s)) == s  # JSON types only


def test_records_state_and_works_for_a_single_layer_and_a_stax_pair():
    s = sig(funnet.serial(funnet.Dense(2), counter()), (-1, 3))
    assert s["state"] == [{"path": "serial[1].count", "shape": [], "dtype": "int32"}]
    assert sig(funnet.Dense(2), (-1, 3))["params"][0]["path"] == "W"  # no combinator: the key
    init, apply = stax.Dense(2)
    _, params = init(KEY, (-1, 3))
    s = model_signature((init, apply), params)
    assert s["model"] == {"name": "Dense (stax pair)"}
    assert [e["path"] for e in s["params"]] == ["[0]", "[1]"]  # stax's (W, b) tuple


def test_params_that_do_not_fit_the_combinator_get_plain_paths():
    net = funnet.serial(funnet.Dense(2), funnet.Tanh)
    params, _ = abstract(funnet.serial(funnet.Dense(2)), (-1, 3))  # one entry, not two
    assert [e["path"] for e in model_signature(net, params)["params"]] == ["[0].W", "[0].b"]


def test_a_leaf_that_is_not_an_array_is_named():
    with pytest.raises(TypeError, match=r"params leaf serial\[0\].W is not an array: object"):
        model_signature(funnet.serial(funnet.Dense(2)), ({"W": object(), "b": 1.0},))


# ----------------------------------------------------------------------------- differences


def test_the_same_model_agrees_also_through_json():
    net = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(1))
    s = sig(net, (-1, 4), record_input=True)
    assert signature_difference(s, s) is None
    assert signature_difference(json.loads(json.dumps(s)), s) is None


def test_same_shapes_another_activation_differ():
    a = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(1))
    b = funnet.serial(funnet.Dense(3), funnet.Relu, funnet.Dense(1))
    assert sig(a, (-1, 4))["params"] == sig(b, (-1, 4))["params"]
    assert diff(a, b) == "serial[1]: saved Tanh, this model has Relu"


@pytest.mark.parametrize("saved, current, message", [
    (funnet.LeakyRelu(slope=0.2), funnet.LeakyRelu(slope=0.1),
     "serial[1]: saved LeakyRelu(slope=0.2), this model has LeakyRelu(slope=0.1)"),
    (funnet.Elu, funnet.Elu(alpha=0.5), "serial[1]: saved Elu, this model has Elu(alpha=0.5)"),
    (funnet.Dropout(0.5), funnet.Dropout(0.25),
     "serial[1]: saved Dropout(0.5), this model has Dropout(0.25)"),
    (funnet.PRelu, funnet.PRelu(slope_init=0.1),
     "serial[1]: saved PRelu, this model has PRelu(slope_init=0.1)"),
])
def test_options_are_part_of_the_architecture(saved, current, message):
    assert diff(funnet.serial(funnet.Dense(3), saved), funnet.serial(funnet.Dense(3), current)) \
        == message


@pytest.mark.parametrize("plain, spelled", [
    (funnet.LeakyRelu, funnet.LeakyRelu(slope=0.01)),
    (funnet.Elu, funnet.Elu(alpha=1)),
    (funnet.Gelu, funnet.Gelu(approximate=False)),
    (funnet.Conv(4, (3, 3)), funnet.Conv(4, (3, 3), strides=(1, 1), dilation=[1, 1],
                                         padding="VALID", groups=1)),
    (funnet.MaxPool((2, 2)), funnet.MaxPool((2, 2), strides=(2, 2))),
    (funnet.MaxPool((2, 2)), funnet.MaxPool((2, 2), strides=2)),
    (funnet.MaxPool((2, 2)), funnet.MaxPool([2, 2], strides=[2, 2])),
    (funnet.AvgPool((2, 2), strides=1), funnet.AvgPool([2, 2], strides=(1, 1))),
    (funnet.SumPool((3, 3), padding=((1, 1), (1, 1))),
     funnet.SumPool((3, 3), padding=[[1, 1], [1, 1]], strides=3)),
    (funnet.Conv(4, (3, 3), strides=2), funnet.Conv(4, (3, 3), strides=(2, 2))),
    (funnet.Conv(4, (3, 3), strides=2, dilation=2),
     funnet.Conv(4, [3, 3], strides=[2, 2], dilation=(2, 2))),
    (funnet.Conv(4, (3, 3), padding=((1, 1), (1, 1))),
     funnet.Conv(4, (3, 3), padding=[(1, 1), (1, 1)])),
    (funnet.Conv(4, (3, 3), padding=((1, 1), (1, 1))),
     funnet.Conv(4, (3, 3), padding=[[1, 1], [1, 1]])),
    (funnet.ConvTranspose(4, (2, 2), strides=2),
     funnet.ConvTranspose(4, [2, 2], strides=[2, 2])),
    (funnet.BatchNorm(), funnet.BatchNorm(momentum=0.9, epsilon=1e-5)),
])
def test_an_option_spelled_out_at_its_default_is_the_same_architecture(plain, spelled):
    # one name for one computation: a checkpoint saved with `LeakyRelu` loads into a model
    # written `LeakyRelu(slope=0.01)`
    assert spelled.name == plain.name
    shape = (-1, 6, 6, 4) if "Pool" in plain.name or "Conv" in plain.name else (-1, 4)
    a = funnet.serial(plain, funnet.Flatten, funnet.Dense(2))
    b = funnet.serial(spelled, funnet.Flatten, funnet.Dense(2))
    assert diff(a, b, shape, shape) is None


def test_a_nested_difference_is_named_by_its_path():
    a = funnet.serial(funnet.Dense(3), funnet.serial(funnet.Dense(2), funnet.Tanh))
    b = funnet.serial(funnet.Dense(3), funnet.serial(funnet.Dense(2), funnet.Relu))
    assert diff(a, b) == "serial[1] › serial[1]: saved Tanh, this model has Relu"


def test_the_first_difference_is_reported():
    a = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(1), funnet.Tanh)
    b = funnet.serial(funnet.Dense(3), funnet.Relu, funnet.Dense(2), funnet.Relu)
    assert diff(a, b) == "serial[1]: saved Tanh, this model has Relu"


def test_a_missing_or_extra_layer():
    a = funnet.serial(funnet.Dense(3), funnet.Tanh, funnet.Dense(1))
    b = funnet.serial(funnet.Dense(3), funnet.Tanh)
    assert diff(a, b) == "serial[2]: saved Dense(1), this model has no layer there"
    assert diff(b, a) == "serial[2]: saved no layer there, this model has Dense(1)"


def test_another_combinator_or_a_single_layer():
    a = funnet.serial(funnet.fanout(2), funnet.parallel(funnet.Dense(2), funnet.Dense(2)),
                      funnet.FanInSum)
    b = funnet.serial(funnet.fanout(2), funnet.serial(funnet.Dense(2), funnet.Dense(2)),
                      funnet.FanInSum)
    params, _ = abstract(a, (-1, 3))  # the layer tree is compared before any params
    assert signature_difference(model_signature(a, params), model_signature(b, params)) == (
        "serial[1]: saved parallel(Dense(2), Dense(2)), this model has serial(Dense(2), Dense(2))")
    assert diff(funnet.Dense(3), funnet.Dense(4)) == (
        "model: saved Dense(3), this model has Dense(4)")


def test_params_shapes_and_dtypes():
    net = funnet.serial(funnet.Dense(128), funnet.Tanh)
    dt = str(jnp.zeros(()).dtype)
    assert diff(net, net, a_in=(-1, 64), b_in=(-1, 32)) == (
        f"params serial[0].W: saved shape (64, 128) {dt}, this model (32, 128) {dt}")
    params, _ = abstract(net, (-1, 64))
    as_f32 = jax.tree_util.tree_map(lambda p: jax.ShapeDtypeStruct(p.shape, jnp.float32), params)
    assert signature_difference(model_signature(net, params), model_signature(net, as_f32)) == (
        f"params serial[0].W: saved shape (64, 128) {dt}, this model (64, 128) float32")


def test_the_input_shape_is_compared_when_both_record_it():
    net = funnet.serial(funnet.Dense(2), funnet.Tanh)
    assert diff(net, net, a_in=(-1, 4), b_in=(-1, 5), record_input=True) == (
        "input shape: saved (-1, 4), this model (-1, 5)")
    saved = sig(net, (-1, 4), record_input=True)
    params, _ = abstract(net, (-1, 4))
    assert signature_difference(saved, model_signature(net, params)) is None  # not recorded


def test_extra_missing_and_renamed_leaves():
    net = funnet.serial(funnet.Dense(2))
    params, _ = abstract(net, (-1, 3))
    (layer,) = params
    more = ({**layer, "c": layer["b"]},)
    assert signature_difference(model_signature(net, params), model_signature(net, more)) == (
        "params serial[0].c: not in the saved model, this model has (2,) "
        f"{layer['b'].dtype}")
    assert signature_difference(model_signature(net, more), model_signature(net, params)) == (
        f"params serial[0].c: saved (2,) {layer['b'].dtype}, this model has no such leaf")
    renamed = ({"V": layer["W"], "b": layer["b"]},)
    assert signature_difference(model_signature(net, params),
                                model_signature(net, renamed)).startswith(
        "params: saved serial[0].W (3, 2)")


def test_state_differences():
    net = funnet.serial(funnet.Dense(2), counter())
    params, state = abstract(net, (-1, 3))
    wider = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, jnp.int64), state)
    assert signature_difference(model_signature(net, params, state=state),
                                model_signature(net, params, state=wider)) == (
        "state serial[1].count: saved shape () int32, this model () int64")


def test_not_a_signature_or_another_version():
    net = funnet.serial(funnet.Dense(2))
    s = sig(net, (-1, 3))
    assert signature_difference({"layers": []}, s) == (
        "the saved signature is not a funnet model signature")
    assert signature_difference({**s, "funnet_signature": 99}, s) == (
        "the saved signature has format version 99; this funnet compares version 1")
    assert signature_difference(s, "Dense(2)") == (
        "the current signature is not a funnet model signature")
