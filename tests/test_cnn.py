"""Random CNNs mixing every new layer with every activation (issue 12), checked whole.

Three small CNNs on ``[3, 6, 6, 2]`` images, in float64, with seeded random params and
inputs, together use every layer of the convolutional family (``Conv`` with strides,
every padding form, dilation and groups; ``ConvTranspose``; ``MaxPool``; ``AvgPool``
counting padding and not; ``SumPool``; ``GlobalAvgPool``; ``BatchNorm`` in training mode
with its state; ``LayerNorm``; ``GroupNorm``) and every activation of
``funnet.activations.ACTIVATIONS`` plus ``PRelu``. For each, :func:`funnet.check_model`
must find hand backprop == formula witness == reverse == forward == kink-aware central
differences, every layer's own hand backward right at its inputs, and tolerances tight
enough to notice a 1e-6 relative error. The check is made meaningful, and that is
asserted: every activation sees inputs on every side of each of its kinks (no dead or
all-saturated layer), every params leaf gets a gradient, and the numerical witness speaks
for almost every coordinate. A backward made wrong on purpose (``Conv``'s ``dW`` 1 % too
large, and likewise in other layers) must fail the same check, naming the layer.

Tolerances are :func:`funnet.check.default_tolerances` for float64 (the check's
defaults, not loosened): analytic pairs ``rtol = 1e-9``, ``atol = 1e-12 · max|g|`` (the
same sums in another order differ by rounding, ``~1e-16`` absolute here); the numerical
pair ``rtol = 1e-5``, ``atol = 1e-8 · max(max|g|, |R|)`` (central differences with step
``8.7e-6``: rounding ``~4e-11 |R|`` plus an ``O(Δ²)`` truncation on these O(1)
functions). Measured on these networks, the worst element sits at ``4e-5`` of its
tolerance for the analytic pairs and at ``2e-3`` for the numerical one, while a 1 % error
(the faults below) is ``10⁷`` times the analytic tolerance.

The numerical witness runs one coordinate at a time (``batch_size=1``): vmapped over
many perturbed kernels, a convolution is one grouped convolution, and XLA's CPU backend at
the test suite's ``-O0`` runs one padded on both sides in time growing with the square of
the chunk (256 coordinates of a two-conv network took 40 s per evaluation; optimised, 0.2
s), while one at a time the whole numerical gradient of a network here takes a second.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import funnet
from funnet.activations import ACTIVATIONS

F = funnet
SHAPE = (3, 6, 6, 2)  # [batch, H, W, C]
LABELS = jnp.asarray([0, 2, 1])


def _branch(a, b):
    """``a(x) + b(x)``: ``Step`` has derivative 0, so it sits beside a path that carries
    the gradient on."""
    return [F.fanout(2), F.parallel(a, b), F.FanInSum]


# Each network: (layers, seed, gain). Every activation follows a layer whose outputs take
# both signs; Exp sits after GlobalAvgPool of bounded values; the gain scales the random
# kernels so that HardLogistic sees inputs beyond ±2 (checked by
# test_every_activation_sees_every_side_of_its_kinks).
NETWORKS = {
    "batchnorm_maxpool_groupnorm": (lambda: [
        F.Conv(4, 3, padding="SAME"), F.BatchNorm(), F.Relu, F.MaxPool(2),
        F.Conv(6, 2, padding=1, groups=2), F.GroupNorm(3), F.Elu,
        F.AvgPool(3, strides=1, padding="SAME", count_padding=True), F.Swish, F.Flatten,
        F.Dense(3),
    ], 0, 1.0),
    "dilation_layernorm_transpose_sumpool": (lambda: [
        F.Conv(4, 2, dilation=2), F.LayerNorm(), F.HardTanh, *_branch(F.Step, F.Softplus),
        F.ConvTranspose(3, 3, strides=2, padding="SAME"), F.Logistic,
        F.SumPool(2, padding=((1, 1), (1, 1))), F.Conv(2, 3, strides=2), F.Gelu,
        F.Flatten, F.Dense(3),
    ], 1, 1.0),
    "strided_pairs_transpose_global": (lambda: [
        F.Conv(4, (3, 2), strides=(2, 1), padding=((1, 1), (0, 1))), F.HardLogistic,
        F.Conv(6, 3, padding="SAME", groups=2), F.PRelu,
        F.AvgPool(2, strides=1, padding=((0, 1), (1, 0))), F.Selu, F.ConvTranspose(4, 2),
        F.Tanh, F.LeakyRelu, F.GlobalAvgPool, F.Exp, F.Dense(3),
    ], 2, 2.0),
}


def _draw(shapes, rng: np.random.Generator, gain: float):
    """Every leaf of a params (or state) pytree of shapes drawn afresh, in NumPy: kernels
    ``N(0, gain²/fan_in)``, norm scales ``1 + N(0, 0.3²)``, PReLU slopes
    ``0.25 + N(0, 0.1²)``, running variances ``exp N(0, 0.3²)``, biases, offsets and
    running means ``N(0, 0.3²)`` (init's zeros and ones would hide a missing term)."""
    def draw(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        z = rng.standard_normal(leaf.shape)
        if len(leaf.shape) >= 2:
            value = z * gain / math.sqrt(math.prod(leaf.shape[:-1]))
        elif "scale" in name:
            value = 1 + 0.3 * z
        elif "slope" in name:
            value = 0.25 + 0.1 * z
        elif "var" in name:
            value = np.exp(0.3 * z)
        else:
            value = 0.3 * z
        return jnp.asarray(value, jnp.float64)

    return jax.tree_util.tree_map_with_path(draw, shapes)


@functools.cache
def problem(name: str):
    """``(model, params, state, x)`` of one network, from its seed (shapes from
    ``jax.eval_shape`` of its init, values from NumPy: no eager compiles)."""
    layers, seed, gain = NETWORKS[name]
    model = F.serial(*layers())
    shapes = jax.eval_shape(
        lambda k: model.init_with_state(k, (-1, *SHAPE[1:]))[1:], jax.random.PRNGKey(seed))
    rng = np.random.default_rng(seed)
    params, state = _draw(shapes, rng, gain)
    x = jnp.asarray(rng.standard_normal(SHAPE))
    return model, params, state, x


def _leaves(model):
    """The leaf layers of a serial/parallel tree, in forward order."""
    if model.kind in ("serial", "parallel"):
        return [leaf for child in model.children for leaf in _leaves(child)]
    return [model]


@functools.cache
def layer_inputs(name: str) -> list[tuple[str, np.ndarray]]:
    """``(layer name, input)`` of every leaf layer in the training-mode forward pass,
    recorded by a walk written here (one compile)."""
    model, params, state, x = problem(name)
    names: list[str] = []

    def run(params, x):
        seen = []

        def go(m, p, s, v):
            if m.kind and s == ():  # a stateless subtree: one () for all of it
                s = ((),) * len(m.children)
            if m.kind == "serial":
                for c, pc, sc in zip(m.children, p, s):
                    v = go(c, pc, sc, v)
                return v
            if m.kind == "parallel":
                return tuple(go(c, pc, sc, vc) for c, pc, sc, vc in zip(m.children, p, s, v))
            seen.append((m.name, v))
            return m.apply_with_state(p, s, v, train=True)[0]

        go(model, params, state, x)
        names[:] = [n for n, _ in seen]
        return [v for _, v in seen]

    values = jax.jit(run)(params, x)
    return [(n, jax.tree_util.tree_map(np.asarray, v)) for n, v in zip(names, values)]


def check(name: str, model=None, **options):
    base, params, state, x = problem(name)
    return F.check_model(base if model is None else model, params, x, LABELS,
                         F.softmax_cross_entropy, state=state, train=True, batch_size=1,
                         **options)


# --- coverage ----------------------------------------------------------------------------


def _layer_name(activation: str) -> str:
    return "".join(part.capitalize() for part in activation.split("_"))


def test_the_networks_use_every_new_layer_and_every_activation():
    names = [leaf.name for n in NETWORKS for leaf in _leaves(problem(n)[0])]
    kinds = {name.split("(")[0] for name in names}
    wanted = {"Conv", "ConvTranspose", "MaxPool", "AvgPool", "SumPool", "GlobalAvgPool",
              "BatchNorm", "LayerNorm", "GroupNorm", "Flatten", "Dense", "PRelu"}
    wanted |= {_layer_name(a) for a in ACTIVATIONS}
    assert len(ACTIVATIONS) == 13 and wanted <= kinds, sorted(wanted - kinds)
    convs = [n for n in names if n.startswith("Conv(")]
    for option in ("strides=2", "strides=(2, 1)", "padding='SAME'", "padding=1",
                   "padding=((1, 1), (0, 1))", "dilation=2", "groups=2"):
        assert any(option in n for n in convs), option
    assert any(n.startswith("Conv(") and "padding" not in n for n in names)  # VALID
    transposes = [n for n in names if n.startswith("ConvTranspose(")]
    assert any("strides=2" in n for n in transposes) and any(
        "strides" not in n for n in transposes)
    pools = [n for n in names if n.startswith("AvgPool(")]
    # both counting modes, each with padding (where they differ)
    assert any("count_padding=True" in n for n in pools)
    assert any("count_padding" not in n and "padding=" in n for n in pools)
    model, _, state, _ = problem("batchnorm_maxpool_groupnorm")
    assert model.stateful and jax.tree_util.tree_leaves(state)


# The regions an activation's input must visit: between its kinks (0 if it has none).
def _regions(kinks: tuple[float, ...]) -> list[tuple[float, float]]:
    cuts = sorted(set(kinks) or {0.0})
    edges = [-math.inf, *cuts, math.inf]
    return list(itertools.pairwise(edges))


@pytest.mark.parametrize("name", list(NETWORKS))
def test_every_activation_sees_every_side_of_its_kinks(name):
    # a ReLU network whose units are all dead, or a hard tanh always saturated, checks
    # nothing of the activation's other branch: require ≥ 5 % of the inputs in each region
    activations = {_layer_name(a) for a in ACTIVATIONS} | {"PRelu"}
    kinks = {leaf.name: leaf.kinks for leaf in _leaves(problem(name)[0])
             if leaf.name.split("(")[0] in activations}
    seen = 0
    for layer, v in layer_inputs(name):
        if layer not in kinks:
            continue
        seen += 1
        for lo, hi in _regions(kinks[layer]):
            share = float(np.mean((v > lo) & (v < hi)))
            assert share >= 0.05, (layer, (lo, hi), share)
    assert seen == len(kinks)  # every activation layer of the network was looked at


# --- the whole-network check --------------------------------------------------------------


@pytest.mark.parametrize("name", list(NETWORKS))
def test_hand_backprop_equals_every_witness(name):
    stateful = name == "batchnorm_maxpool_groupnorm"
    result = check(name, sensitivity_error=1e-6, batch=stateful)
    assert result.ok, str(result)
    assert result.reference == "formula" and sorted(result.reports) == [
        ("forward", "formula"), ("hand", "formula"), ("numerical", "formula"),
        ("reverse", "formula")]
    assert result.dtype == "float64"
    # every leaf layer has a hand rule and it is right at the inputs it saw
    assert len(result.layers) == len(_leaves(problem(name)[0]))
    assert all(v.status == "ok" for v in result.layers), [
        (v.path, v.status) for v in result.layers]
    assert result.deltas is not None and result.deltas.ok
    # a 1e-6 relative error in the hand gradient's largest leaf would have been noticed
    assert result.sensitivity[0]
    # the numerical witness speaks for ≥ 97 % of the coordinates (the rest straddle a kink)
    assert result.kinks is not None and result.kinks.count <= 0.03 * result.kinks.total
    # every params leaf gets a gradient (no dead branch), except the bias of a conv right
    # before BatchNorm in training: the batch mean removes it, so its gradient is 0 exactly
    ref = result.grads["formula"]
    for path, g in jax.tree_util.tree_flatten_with_path(ref)[0]:
        where = jax.tree_util.keystr(path)
        if stateful and where == "[0]['b']":
            assert float(np.max(np.abs(g))) < 1e-15
        else:
            assert float(np.max(np.abs(g))) > 1e-4, where
    if stateful:  # BatchNorm's batch statistics couple the rows: coupled, not wrong
        assert result.batch.verdict == "coupled"
        assert not result.batch.per_example.ok and result.batch.shuffled.ok


# --- a wrong backward fails the same check, naming the layer -------------------------------


def _scale_grad(key: str, factor: float):
    def corrupt(backward):
        def wrong(params, res, dy):
            dparams, dx = backward(params, res, dy)
            if key == "dx":
                return dparams, dx * factor
            return {**dparams, key: dparams[key] * factor}, dx
        return wrong
    return corrupt


FAULTS = [  # (network, index of the top-level layer made wrong, which gradient × 1.01)
    ("batchnorm_maxpool_groupnorm", 0, "W"),  # Conv's dW
    ("dilation_layernorm_transpose_sumpool", 6, "W"),  # ConvTranspose's dW
    ("strided_pairs_transpose_global", 4, "dx"),  # AvgPool's dx (no params of its own)
]


@pytest.mark.parametrize("name, index, key", FAULTS)
def test_a_wrong_backward_fails_naming_the_layer(name, index, key):
    model = problem(name)[0]
    children = list(model.children)
    bad = children[index]
    children[index] = dataclasses.replace(bad, backward=_scale_grad(key, 1.01)(bad.backward))
    wrong = F.serial(*children)
    with pytest.raises(F.check.GradientCheckError) as info:
        check(name, wrong, methods=("hand", "formula"))
    result, path = info.value.result, f"serial[{index}] › {bad.name}"
    assert result.first_wrong_layer.path == path
    assert [v.path for v in result.layers if not v.ok] == [path]
    assert f"the first wrong layer is {path}" in str(info.value)
    (pair, row) = result.first_failure
    assert pair == ("hand", "formula")
    if key != "dx":  # the wrong leaf itself, 1 % off
        assert row.leaf == f"[{index}]['{key}']"
        assert 0.9e-2 < row.rel_err < 1.1e-2
        assert result.deltas.ok  # the δ it passes down is right
    else:  # a wrong dx reaches the params below the layer only, and the δ below it
        assert row.leaf.startswith("[0]")
        assert result.deltas.first_divergence == f"serial[{index - 1}] › {children[index - 1].name}"


# --- summary and param_count of every new layer ------------------------------------------


def _rows(text: str) -> list[tuple[str, str, list[str]]]:
    """``(layer, output shape, [params, state…])`` per row of a summary table."""
    rows = []
    for line in text.splitlines()[1:-1]:
        _, rest = line.split(maxsplit=1)
        name, shape = rest.rsplit(" (", 1)[0].rstrip(), "(" + rest.rsplit(" (", 1)[1]
        shape, counts = shape.rsplit(")", 1)
        rows.append((name, shape + ")", counts.split()))
    return rows


def test_summary_shows_shapes_and_parameter_counts_of_every_new_layer():
    net = F.serial(F.Conv(4, 3, padding="SAME", groups=2), F.BatchNorm(), F.MaxPool(2),
                   F.ConvTranspose(6, (3, 2), strides=2, padding="SAME"), F.GroupNorm(3),
                   F.AvgPool(3, strides=1, padding="SAME"), F.SumPool(2), F.LayerNorm(),
                   F.PRelu, F.GlobalAvgPool, F.Dense(3))
    text = F.summary(net, (-1, 8, 8, 2), print_fn=None)
    assert text.splitlines()[0].split() == ["#", "layer", "output", "shape", "params", "state"]
    expected = [  # (layer, output shape, params, state), the counts by their formulas
        ("Conv(4, 3, padding='SAME', groups=2)", (-1, 8, 8, 4), 3 * 3 * 2 * 4 // 2 + 4, 0),
        ("BatchNorm", (-1, 8, 8, 4), 2 * 4, 2 * 4),  # scale, offset; running mean, var
        ("MaxPool(2)", (-1, 4, 4, 4), 0, 0),
        ("ConvTranspose(6, (3, 2), strides=2, padding='SAME')", (-1, 8, 8, 6),
         3 * 2 * 4 * 6 + 6, 0),
        ("GroupNorm(3)", (-1, 8, 8, 6), 2 * 6, 0),
        ("AvgPool(3, strides=1, padding='SAME')", (-1, 8, 8, 6), 0, 0),
        ("SumPool(2)", (-1, 4, 4, 6), 0, 0),
        ("LayerNorm", (-1, 4, 4, 6), 2 * 6, 0),
        ("PRelu", (-1, 4, 4, 6), 6, 0),
        ("GlobalAvgPool", (-1, 6), 0, 0),
        ("Dense(3)", (-1, 3), 6 * 3 + 3, 0),
    ]
    assert _rows(text) == [(n, str(s), [str(p), str(st)]) for n, s, p, st in expected]
    total = text.splitlines()[-1].split()
    assert total == ["total", str(sum(e[2] for e in expected)), "8"]
    params = jax.eval_shape(lambda k: net.init_with_state(k, (-1, 8, 8, 2))[1],
                            jax.random.PRNGKey(0))
    assert F.param_count(params) == sum(e[2] for e in expected) == 249


def test_summary_of_the_recurrent_layers():
    net = F.serial(F.Embedding(20, 4), F.RNN(5), F.LSTM(3), F.GRU(2, return_sequences=False),
                   F.Dense(2))
    text = F.summary(net, (-1, 7), print_fn=None)
    expected = [  # W_x [D, gH], W_h [H, gH] and the biases, g gates (GRU: b_x and b_h)
        ("Embedding(20, 4)", (-1, 7, 4), 20 * 4),
        ("RNN(5)", (-1, 7, 5), 4 * 5 + 5 * 5 + 5),
        ("LSTM(3)", (-1, 7, 3), 4 * (5 * 3 + 3 * 3 + 3)),
        ("GRU(2, return_sequences=False)", (-1, 2), 3 * (3 * 2 + 2 * 2 + 2 + 2)),
        ("Dense(2)", (-1, 2), 2 * 2 + 2),
    ]
    assert text.splitlines()[0].split() == ["#", "layer", "output", "shape", "params"]
    assert _rows(text) == [(n, str(s), [str(p)]) for n, s, p in expected]
    assert text.splitlines()[-1].split() == ["total", str(sum(e[2] for e in expected))]


@pytest.mark.parametrize("kernel, c_in, c_out, groups", [
    ((3, 3), 4, 6, 1), ((3, 2), 4, 6, 2), ((5,), 6, 4, 2), ((2, 2, 2), 4, 8, 4),
    ((1, 1), 6, 6, 6)])
def test_conv_param_count_is_the_formula(kernel, c_in, c_out, groups):
    # k_h·k_w·C_in·C_out/groups + C_out (any rank: the product of the kernel's sizes)
    conv = F.Conv(c_out, kernel, groups=groups)
    shape = (-1, *(6,) * len(kernel), c_in)
    params = jax.eval_shape(lambda k: conv.init(k, shape)[1], jax.random.PRNGKey(0))
    assert F.param_count(params) == math.prod(kernel) * c_in * c_out // groups + c_out
    assert F.summary(F.serial(conv), shape, print_fn=None).splitlines()[1].split()[-1] == str(
        math.prod(kernel) * c_in * c_out // groups + c_out)
