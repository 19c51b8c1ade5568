"""The worked examples of the source texts (docs/math.md §1, §3, §5), recomputed by hand in NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _registry import init_shapes

import funnet

# float64 NumPy vs funnet: the same few products and sums, a few ulp apart.
TIGHT = {"rtol": 1e-12, "atol": 1e-15}


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_2_4_1_network_has_17_parameters():
    net = funnet.serial(funnet.Dense(4), funnet.Logistic, funnet.Dense(1))
    out_shape, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    assert out_shape == (-1, 1)
    assert funnet.param_count(params) == 2 * 4 + 4 + 4 * 1 + 1 == 17  # M0·M1 + M1 + M1·M2 + M2
    assert funnet.summary(net, (-1, 2), print_fn=None).splitlines()[-1].split() == ["total", "17"]


# --- the 2-4-3 TwoLayerNet (Affine → Sigmoid → Affine → SoftmaxWithLoss) -----------------

RNG = np.random.default_rng(2024)
N = 10
X = RNG.standard_normal((N, 2))
T = np.eye(3)[RNG.integers(0, 3, N)]  # one-hot targets
W1, B1 = 0.5 * RNG.standard_normal((2, 4)), 0.1 * RNG.standard_normal(4)
W2, B2 = 0.5 * RNG.standard_normal((4, 3)), 0.1 * RNG.standard_normal(3)
TWO_LAYER_NET = funnet.serial(funnet.Dense(4), funnet.Logistic, funnet.Dense(3))
PARAMS = ({"W": jnp.asarray(W1), "b": jnp.asarray(B1)}, (),
          {"W": jnp.asarray(W2), "b": jnp.asarray(B2)})


def _numpy_two_layer_net():
    """The textbook's TwoLayerNet, forward and backward, in plain NumPy (row form)."""
    a1 = X @ W1 + B1  # Affine
    z1 = _sigmoid(a1)  # Sigmoid
    scores = z1 @ W2 + B2  # Affine
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)  # Softmax
    loss = -np.sum(T * np.log(y)) / N  # cross-entropy, mean over the batch
    dscores = (y - T) / N  # SoftmaxWithLoss backward
    dW2, db2 = z1.T @ dscores, dscores.sum(axis=0)  # Affine backward: dW = xᵀ dy, db = Σ dy
    dz1 = dscores @ W2.T  # dx = dy Wᵀ
    da1 = dz1 * z1 * (1 - z1)  # Sigmoid backward: dx = dy ⊙ y(1 - y)
    dW1, db1 = X.T @ da1, da1.sum(axis=0)
    return scores, loss, dscores, (dW1, db1, dW2, db2)


def test_two_layer_net_scores_match_numpy():
    assert init_shapes(TWO_LAYER_NET, (-1, 2))[0] == (-1, 3)
    scores = TWO_LAYER_NET.apply(PARAMS, jnp.asarray(X))
    assert scores.shape == (N, 3)
    np.testing.assert_allclose(scores, _numpy_two_layer_net()[0], **TIGHT)


def test_two_layer_net_softmax_with_loss_backward_is_y_minus_t_over_n():
    scores, loss, dscores, (dW1, db1, dW2, db2) = _numpy_two_layer_net()
    np.testing.assert_allclose(funnet.softmax_cross_entropy.grad(jnp.asarray(scores), T),
                               dscores, **TIGHT)
    vg = funnet.backprop.value_and_grad(TWO_LAYER_NET, funnet.softmax_cross_entropy,
                                        return_deltas=True)
    value, grads, deltas = vg(PARAMS, jnp.asarray(X), jnp.asarray(T))
    np.testing.assert_allclose(value, loss, **TIGHT)
    np.testing.assert_allclose(deltas[2], dscores, **TIGHT)  # δ at the scores: (y - t)/N
    for got, expected in zip([grads[0]["W"], grads[0]["b"], grads[2]["W"], grads[2]["b"]],
                             [dW1, db1, dW2, db2]):
        np.testing.assert_allclose(got, expected, **TIGHT)
    assert grads[1] == ()


# --- the window scorer s = Uᵀ f(Wx + b) (max-margin NER example) --------------------------


def test_window_scorer_gradient():
    rng = np.random.default_rng(7)
    x = rng.standard_normal(20)  # a window of 5 words × 4-dimensional vectors
    W, b, U = 0.3 * rng.standard_normal((20, 8)), 0.1 * rng.standard_normal(8), rng.standard_normal(8)
    net = funnet.serial(funnet.Dense(8), funnet.Logistic, funnet.Dense(1))
    params = ({"W": jnp.asarray(W), "b": jnp.asarray(b)}, (),
              {"W": jnp.asarray(U[:, None]), "b": jnp.zeros(1)})  # s = Uᵀ a: no bias

    z = x @ W + b  # row form: W has shape (20, 8), z_i = Σ_j x_j W[j, i] + b_i
    a = _sigmoid(z)
    fprime = a * (1 - a)
    s = a @ U
    # ∂s/∂W[j, i] = U_i f'(z_i) x_j  (column form: ∂s/∂W_ij = U_i f'(z_i) x_j)
    dW = np.outer(x, U * fprime)
    assert dW.shape == (20, 8)

    def score(p, x):
        return net.apply(p, x)[..., 0]

    np.testing.assert_allclose(score(params, jnp.asarray(x)), s, **TIGHT)  # one window, rank 1
    grads = jax.jit(jax.grad(lambda p: score(p, jnp.asarray(x))))(params)
    np.testing.assert_allclose(grads[0]["W"], dW, **TIGHT)
    np.testing.assert_allclose(grads[0]["b"], U * fprime, **TIGHT)  # ∂s/∂b_i = U_i f'(z_i)
    np.testing.assert_allclose(grads[2]["W"][:, 0], a, **TIGHT)  # ∂s/∂U = a
    # the hand backward with ds = 1 gives the same, and ∂s/∂x = W (U ⊙ f'(z))
    dparams, dx = jax.jit(lambda p: funnet.backprop.backward(net, p, jnp.asarray(x)[None],
                                                            jnp.ones((1, 1))))(params)
    np.testing.assert_allclose(dparams[0]["W"], dW, **TIGHT)
    np.testing.assert_allclose(dx[0], W @ (U * fprime), **TIGHT)


# --- the MP neuron: threshold θ = 40 ----------------------------------------------------------


def test_mp_neuron_with_threshold_40():
    neuron = funnet.serial(funnet.Dense(1), funnet.Step)
    params = ({"W": jnp.ones((3, 1)), "b": jnp.array([-40.0])}, ())  # θ = 40 is a bias of -40
    inputs = jnp.array([
        [10.0, 10.0, 10.0],  # Σ = 30: does not fire
        [20.0, 20.0, 10.0],  # Σ = 50: fires
        [10.0, 20.0, 10.0],  # Σ = 40: z = 0, does not fire (step(0) = 0)
        [0.0, 0.0, 40.5],  # Σ = 40.5: fires
    ])
    np.testing.assert_array_equal(neuron.apply(params, inputs)[:, 0], [0.0, 1.0, 0.0, 1.0])
    # and it cannot learn by gradient descent: step' = 0
    grads = jax.grad(lambda p: jnp.sum(neuron.apply(p, inputs)))(params)
    np.testing.assert_array_equal(grads[0]["W"], 0.0)
