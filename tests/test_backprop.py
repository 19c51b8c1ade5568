"""Hand-derived backprop (docs/math.md §5) == jax.value_and_grad == central differences."""

from __future__ import annotations

import chex
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import ACTIVATION_CASES, assert_trees_close, init_params, plain_l2
from hypothesis import given
from jax.example_libraries import stax
from jax.flatten_util import ravel_pytree

import funnet

EPS64 = np.finfo(np.float64).eps
# hand backprop vs jax.grad in float64: the same products summed in another order, through
# a dozen layers; values O(1e-3..1): agreement to ~1e-14 absolute, 1e-10 relative is ample.
TIGHT = {"rtol": 1e-10, "atol": 1e-13}

#: every activation layer of the registry except step (gradient identically 0, tested apart)
SMOOTH_ENOUGH = [c.layer for c in ACTIVATION_CASES
                 if c.id != "step" and not c.id.startswith("prelu")]


def _deep_net(width: int = 4, classes: int = 3):
    layers = []
    for act in [*SMOOTH_ENOUGH[:5], funnet.PRelu, *SMOOTH_ENOUGH[5:]]:
        layers += [funnet.Dense(width), act]
    return funnet.serial(*layers, funnet.Dense(classes))


def _data(n: int, d: int, classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.standard_normal((n, d))), jnp.asarray(rng.integers(0, classes, n))


def _pre_activations(net, params, x):
    """The inputs of every activation layer (what its kinks must stay away from)."""
    _, residuals = net.forward(params, x)
    return [r[0] for layer, r in zip(net.children, residuals) if not layer.name.startswith(
        ("Dense", "PRelu"))] + [r for layer, r in zip(net.children, residuals)
                                if layer.name == "PRelu"]


def test_deep_net_mixes_every_activation():
    names = {layer.name for layer in _deep_net().children}
    expected = {c.layer.name for c in ACTIVATION_CASES if c.id != "step"
                and not c.id.startswith("prelu")} | {"PRelu", "Dense(4)", "Dense(3)"}
    assert names == expected


def test_value_and_grad_equals_jax_and_central_differences():
    net, lam = _deep_net(), 0.05
    params = init_params(net, (-1, 3), seed=1)
    x, y = _data(8, 3, 3)
    # central differences below need every pre-activation ≥ 1e-5 from a kink (0, ±1, ±2):
    # a perturbation h = 1e-6 of a parameter moves them by far less than that.
    for z in jax.jit(lambda p: _pre_activations(net, p, x))(params):
        assert np.min(np.abs(np.asarray(z)[..., None] - np.array([0, 1, -1, 2, -2]))) > 1e-5

    def objective(p):  # R = L + ½ λ Σ ||W||², docs/math.md §4
        return funnet.softmax_cross_entropy(net.apply(p, x), y) + plain_l2(p, lam)

    hand_fn = chex.assert_max_traces(funnet.backprop.value_and_grad(
        net, funnet.softmax_cross_entropy, l2=lam), n=1)
    step = jax.jit(hand_fn)
    value, grads = step(params, x, y)
    step(params, x + 1.0, y)  # same shapes: no second trace
    value_ad, grads_ad = jax.jit(jax.value_and_grad(objective))(params)
    np.testing.assert_allclose(value, value_ad, rtol=1e-14)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert_trees_close(grads, grads_ad, **TIGHT)

    flat, unravel = ravel_pytree(params)
    h = 1e-6
    shifts = h * jnp.eye(flat.size)
    f = jax.jit(jax.vmap(lambda v: objective(unravel(v))))
    numeric = (f(flat[None, :] + shifts) - f(flat[None, :] - shifts)) / (2 * h)
    # Central difference error: rounding ε·|R|/h ≈ 2.2e-10·|R| (each R(θ ± h) is rounded to ε
    # relative) plus truncation h²/6·|∂³R| ≲ 1e-12·|∂³R|; |R| ≈ 1-3 and |∂³R| ≲ 10³ here.
    # Tolerance: ten times that bound.
    tol = 10 * (EPS64 * (abs(float(value)) + 1) / h + h**2 / 6 * 1e3)
    hand_flat = ravel_pytree(grads)[0]
    assert np.max(np.abs(hand_flat - numeric)) < tol, np.max(np.abs(hand_flat - numeric))
    assert np.abs(grads[0]["W"]).max() > 1e-4  # the gradient reaches the first layer


def test_step_blocks_the_gradient_upstream():
    net = funnet.serial(funnet.Dense(4), funnet.Step, funnet.Dense(2))
    params = init_params(net, (-1, 3))
    x, y = _data(6, 3, 2)
    _, grads = jax.jit(funnet.backprop.value_and_grad(net, funnet.softmax_cross_entropy))(
        params, x, y)
    np.testing.assert_array_equal(grads[0]["W"], 0.0)  # step' = 0: nothing passes the step
    np.testing.assert_array_equal(grads[0]["b"], 0.0)
    assert np.abs(grads[2]["W"]).max() > 1e-3  # the layer after the step still learns
    ad = jax.jit(jax.grad(lambda p: funnet.softmax_cross_entropy(net.apply(p, x), y)))(params)
    assert_trees_close(grads, ad, **TIGHT)
    # with L2 the weights upstream get exactly the penalty's gradient λW, nothing more
    _, grads_l2 = jax.jit(funnet.backprop.value_and_grad(
        net, funnet.softmax_cross_entropy, l2=0.5))(params, x, y)
    np.testing.assert_array_equal(grads_l2[0]["W"], 0.5 * params[0]["W"])


def test_return_deltas_are_gradients_at_each_layer_output():
    net = funnet.serial(funnet.Dense(4), funnet.Tanh, funnet.Dense(4), funnet.PRelu,
                        funnet.Dense(3), funnet.Elu, funnet.Dense(2))
    params = init_params(net, (-1, 3), seed=2)
    x, y = _data(5, 3, 2)
    vg = funnet.backprop.value_and_grad(net, funnet.softmax_cross_entropy, l2=0.1,
                                        return_deltas=True)
    value, grads, deltas = vg(params, x, y)  # eager
    value_plain, grads_plain = jax.jit(funnet.backprop.value_and_grad(
        net, funnet.softmax_cross_entropy, l2=0.1))(params, x, y)
    np.testing.assert_allclose(value, value_plain, rtol=1e-15)
    assert_trees_close(grads, grads_plain, **TIGHT)

    # deltas[i] = ∂L/∂(output of layer i): the gradient w.r.t. an additive perturbation ε_i,
    # at ε = 0, of the output of layer i (for a Dense layer, its error term δ = ∂L/∂z).
    def perturbed(eps):
        a = x
        for layer, p, e in zip(net.children, params, eps):
            a = layer.apply(p, a) + e
        return funnet.softmax_cross_entropy(a, y) + plain_l2(params, 0.1)

    outputs, a = [], x
    for layer, p in zip(net.children, params):
        a = layer.apply(p, a)
        outputs.append(jnp.zeros_like(a))
    expected = jax.jit(jax.grad(perturbed))(outputs)
    assert len(deltas) == len(net.children)
    for i, (d, e) in enumerate(zip(deltas, expected)):
        np.testing.assert_allclose(d, e, **TIGHT, err_msg=f"deltas[{i}]")
    np.testing.assert_allclose(deltas[-1], funnet.softmax_cross_entropy.grad(a, y), **TIGHT)
    # δ(l) = f'(z(l)) ⊙ (δ(l+1) W(l+1)ᵀ): the recursion links neighbouring deltas
    z2 = net.children[0].apply(params[0], x)
    np.testing.assert_allclose(deltas[0], funnet.tanh.derivative(z2) * deltas[1], **TIGHT)
    np.testing.assert_allclose(deltas[1], deltas[2] @ params[2]["W"].T, **TIGHT)
    with pytest.raises(TypeError, match="return_deltas needs a serial model"):
        funnet.backprop.value_and_grad(funnet.Dense(2), funnet.mse, return_deltas=True)


def test_combinators_softmax_flatten_in_backprop():
    net = funnet.serial(
        funnet.Flatten, funnet.fanout(2),
        funnet.parallel(funnet.Dense(4), funnet.serial(funnet.Dense(4), funnet.Tanh)),
        funnet.FanInSum, funnet.PRelu, funnet.fanout(2),
        funnet.parallel(funnet.Dense(2), funnet.Softmax), funnet.FanInConcat(),
        funnet.Dense(3), funnet.LogSoftmax,
    )
    params = init_params(net, (-1, 2, 3), seed=3)
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 2, 3)))
    t = jnp.asarray(np.random.default_rng(4).standard_normal((4, 3)))
    (value, grads), (value_ad, grads_ad) = jax.jit(lambda p: (
        funnet.backprop.value_and_grad(net, funnet.mse, l2=0.01)(p, x, t),
        jax.value_and_grad(lambda p: funnet.mse(net.apply(p, x), t) + plain_l2(p, 0.01))(
            p),
    ))(params)
    np.testing.assert_allclose(value, value_ad, rtol=1e-14)
    assert_trees_close(grads, grads_ad, **TIGHT)


# --- layers without a backward rule --------------------------------------------------------


def test_layer_without_backward_is_named():
    net = funnet.serial(funnet.Dense(3), stax.Tanh, funnet.Dense(2))
    params = init_params(net, (-1, 2))
    x, y = _data(4, 2, 2)
    assert net.apply(params, x).shape == (4, 2)  # apply works: the stax pair is fine there
    with pytest.raises(funnet.NoBackwardRuleError, match=r"serial\[1\].*no hand-derived backward"):
        funnet.backprop.value_and_grad(net, funnet.softmax_cross_entropy)(params, x, y)
    with pytest.raises(funnet.NoBackwardRuleError, match="no hand-derived backward"):
        funnet.backprop.value_and_grad(stax.Tanh, funnet.mse)
    with pytest.raises(funnet.NoBackwardRuleError):
        funnet.backprop.backward(stax.Tanh, (), x, x)
    init, apply = funnet.Relu
    bare = funnet.layer(init, apply=apply, name="BareRelu")  # init/apply only
    nested = funnet.serial(funnet.Dense(2), funnet.fanout(1), funnet.parallel(bare))
    with pytest.raises(funnet.NoBackwardRuleError, match=r"parallel\[0\] BareRelu"):
        funnet.backprop.backward(nested, init_params(nested, (-1, 2)), x, x)
    assert issubclass(funnet.NoBackwardRuleError, TypeError)


def test_loss_must_be_a_funnet_loss():
    with pytest.raises(TypeError, match="funnet Loss"):
        funnet.backprop.value_and_grad(funnet.Dense(2), lambda a, b: jnp.sum(a - b))


# --- random architectures ---------------------------------------------------------------------

ACTIVATION_LAYERS = [c.layer for c in ACTIVATION_CASES]
LOSSES = {
    "ce": (funnet.softmax_cross_entropy, lambda rng, n, k: rng.integers(0, k, n)),
    "mse": (funnet.mse, lambda rng, n, k: rng.standard_normal((n, k))),
    "bce": (funnet.binary_cross_entropy, lambda rng, n, k: rng.integers(0, 2, (n, k)) * 1.0),
}


@given(
    widths=st.lists(st.sampled_from([1, 3, 4]), min_size=1, max_size=3),
    acts=st.lists(st.sampled_from(range(len(ACTIVATION_LAYERS))), min_size=3, max_size=3),
    batch=st.sampled_from([1, 5]),
    loss_name=st.sampled_from(sorted(LOSSES)),
    lam=st.sampled_from([0.0, 0.1]),
    seed=st.integers(0, 2**16),
)
def test_random_architectures(widths, acts, batch, loss_name, lam, seed):
    layers = []
    for w, a in zip(widths, acts):
        layers += [funnet.Dense(w), ACTIVATION_LAYERS[a]]
    net = funnet.serial(*layers, funnet.Dense(2))
    params = init_params(net, (-1, 3), seed=seed)
    rng = np.random.default_rng(seed)
    loss, target = LOSSES[loss_name]
    x, y = jnp.asarray(rng.standard_normal((batch, 3))), jnp.asarray(target(rng, batch, 2))
    (value, grads), (value_ad, grads_ad) = jax.jit(lambda p: (
        funnet.backprop.value_and_grad(net, loss, l2=lam)(p, x, y),
        jax.value_and_grad(lambda p: loss(net.apply(p, x), y) + plain_l2(p, lam))(p),
    ))(params)
    np.testing.assert_allclose(value, value_ad, rtol=1e-14)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(params)
    assert_trees_close(grads, grads_ad, **TIGHT)
