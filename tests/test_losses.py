"""Losses (docs/math.md §4): values vs the formulas in NumPy, hand ``.grad`` vs ``jax.grad``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _registry import assert_trees_close, init_params

import funnet

RNG = np.random.default_rng(0)
N, K = 6, 4
LOGITS = RNG.standard_normal((N, K)) * 2
LABELS = np.array([0, 3, 1, 1, 2, 0])
ONE_HOT = np.eye(K)[LABELS]
# float64, O(1) values, sums of ~24 terms: rounding ≲ 1e-15; 1e-12 leaves a wide margin.
TIGHT = {"rtol": 1e-12, "atol": 1e-14}


def _np_log_softmax(s):
    s = s - s.max(axis=-1, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=-1, keepdims=True))


def _np_sigmoid(z):
    return 1 / (1 + np.exp(-z))


# --- values vs the formulas -------------------------------------------------------------


def test_mse_value():
    pred, target = RNG.standard_normal((N, 3)), RNG.standard_normal((N, 3))
    expected = np.sum((pred - target) ** 2) / (2 * N)  # C = 1/(2n) Σ (ŷ - y)²
    np.testing.assert_allclose(funnet.mse(pred, target), expected, **TIGHT)
    assert float(funnet.mse(jnp.array([[1.0], [3.0]]), jnp.array([[0.0], [1.0]]))) == 1.25


def test_cross_entropy_value_and_label_forms():
    expected = -np.sum(ONE_HOT * _np_log_softmax(LOGITS)) / N  # -1/N Σ_n Σ_k t log y
    ints = funnet.softmax_cross_entropy(LOGITS, LABELS)
    one_hot = funnet.softmax_cross_entropy(LOGITS, ONE_HOT)
    np.testing.assert_allclose(ints, expected, **TIGHT)
    assert float(ints) == float(one_hot)  # int and one-hot labels: identical
    np.testing.assert_array_equal(funnet.softmax_cross_entropy.grad(LOGITS, LABELS),
                                  funnet.softmax_cross_entropy.grad(LOGITS, ONE_HOT))
    # mean over every axis but the class axis
    logits3 = RNG.standard_normal((2, 3, K))
    labels3 = np.array([[0, 1, 2], [3, 0, 1]])
    expected3 = -np.sum(np.eye(K)[labels3] * _np_log_softmax(logits3)) / 6
    np.testing.assert_allclose(funnet.softmax_cross_entropy(logits3, labels3), expected3, **TIGHT)
    np.testing.assert_allclose(funnet.softmax_cross_entropy(np.zeros((2, 4)), [0, 3]), np.log(4),
                               **TIGHT)


def test_binary_cross_entropy_value():
    z, y = RNG.standard_normal((N, 2)) * 3, RNG.integers(0, 2, (N, 2)).astype(float)
    s = _np_sigmoid(z)
    expected = -np.sum(y * np.log(s) + (1 - y) * np.log(1 - s)) / N
    np.testing.assert_allclose(funnet.binary_cross_entropy(z, y), expected, **TIGHT)


def test_max_margin_value():
    s, s_c = np.array([2.0, 1.0, 0.2, 3.0]), np.array([0.5, 0.5, 0.9, 1.0])
    # J = max(0, Δ + s_c - s), mean over the batch: [0, 0.5, 1.7, 0] / 4
    np.testing.assert_allclose(funnet.max_margin(s, s_c), (0 + 0.5 + 1.7 + 0) / 4, **TIGHT)
    np.testing.assert_allclose(funnet.max_margin(s, s_c, margin=2.0), (0.5 + 1.5 + 2.7) / 4,
                               **TIGHT)
    assert float(funnet.max_margin(2.0, 0.5)) == 0.0 and float(funnet.max_margin(1.0, 0.5)) == 0.5


def test_l2_penalty_counts_weights_only():
    net = funnet.serial(funnet.Dense(4), funnet.PRelu, funnet.Dense(2))
    params = init_params(net, (-1, 3))
    lam = 0.3
    W = [np.asarray(params[0]["W"]), np.asarray(params[2]["W"])]
    expected = 0.5 * lam * sum(np.sum(w**2) for w in W)  # ½ λ Σ_l ||W(l)||_F²
    np.testing.assert_allclose(funnet.l2_penalty(params, lam, model=net), expected, **TIGHT)
    assert net.decay_mask(params) == ({"W": True, "b": False}, {"slope": False},
                                      {"W": True, "b": False})
    # biases and PReLU slopes are not penalised: changing them changes nothing
    moved = (
        {**params[0], "b": params[0]["b"] + 5}, {"slope": params[1]["slope"] + 5}, params[2]
    )
    assert float(funnet.l2_penalty(moved, lam, model=net)) == float(
        funnet.l2_penalty(params, lam, model=net))
    grad = funnet.losses.l2_penalty_grad(params, lam, model=net)
    assert_trees_close(grad, jax.grad(lambda p: funnet.l2_penalty(p, lam, model=net))(params),
                       **TIGHT)
    np.testing.assert_array_equal(grad[1]["slope"], 0.0)
    np.testing.assert_array_equal(grad[0]["b"], 0.0)
    np.testing.assert_allclose(grad[2]["W"], lam * W[1], **TIGHT)
    assert float(funnet.l2_penalty((), lam, mask=())) == 0.0
    # an explicit mask decides, whatever the leaves are called
    mask = ({"W": False, "b": True}, {"slope": True}, {"W": False, "b": False})
    expected = 0.5 * lam * (np.sum(np.asarray(params[0]["b"]) ** 2)
                            + np.sum(np.asarray(params[1]["slope"]) ** 2))
    np.testing.assert_allclose(funnet.l2_penalty(params, lam, mask=mask), expected, **TIGHT)
    with pytest.raises(TypeError, match="exactly one of model= .* or mask="):
        funnet.l2_penalty(params, lam)


def test_weight_decay_is_declared_not_guessed_from_names():
    # a user layer whose weight matrix is not called W is decayed because it says so
    def init(key, input_shape):
        return input_shape[:-1] + (2,), {"kernel": jnp.ones((input_shape[-1], 2)),
                                         "W": jnp.ones(2)}

    def forward(params, x):
        return x @ params["kernel"] + params["W"][None], x

    def backward(params, x, dy):
        return {"kernel": x.T @ dy, "W": dy.sum(0)}, dy @ params["kernel"].T

    custom = funnet.layer(init, forward, backward, name="Custom", decay=("kernel",))
    _, params = custom.init(jax.random.PRNGKey(0), (-1, 3))
    assert custom.decay_mask(params) == {"kernel": True, "W": False}
    assert float(funnet.l2_penalty(params, 1.0, model=custom)) == 3.0  # ½ · 6 entries of 1


def test_accuracy():
    assert float(funnet.accuracy(jnp.array([[2.0, 1.0], [0.0, 3.0]]), jnp.array([0, 0]))) == 0.5
    expected = np.mean(LOGITS.argmax(-1) == LABELS)
    assert 0 < expected < 1
    np.testing.assert_allclose(funnet.accuracy(LOGITS, ONE_HOT), expected, rtol=1e-7)  # float32
    np.testing.assert_allclose(funnet.accuracy(LOGITS, LABELS), expected, rtol=1e-7)


# --- hand gradients vs jax.grad -----------------------------------------------------------

LOSS_CASES = [
    ("mse", funnet.mse, RNG.standard_normal((N, 3)), RNG.standard_normal((N, 3))),
    ("ce-int", funnet.softmax_cross_entropy, LOGITS, LABELS),
    ("ce-onehot", funnet.softmax_cross_entropy, LOGITS, ONE_HOT),
    ("ce-soft", funnet.softmax_cross_entropy, LOGITS, np.exp(_np_log_softmax(RNG.standard_normal(
        (N, K))))),
    ("bce", funnet.binary_cross_entropy, RNG.standard_normal((N, 2)) * 3,
     RNG.integers(0, 2, (N, 2)).astype(float)),
]


@pytest.mark.parametrize("loss, pred, target", [pytest.param(*c[1:], id=c[0]) for c in LOSS_CASES])
def test_hand_grad_matches_jax_grad(loss, pred, target):
    pred = jnp.asarray(pred)
    hand = loss.grad(pred, target)
    assert hand.dtype == jnp.float64 and hand.shape == pred.shape
    np.testing.assert_allclose(hand, jax.grad(loss)(pred, target), **TIGHT)
    np.testing.assert_allclose(jax.jit(loss.grad)(pred, target), hand, **TIGHT)


ROW_CASES = [*LOSS_CASES,
             ("mse-3d", funnet.mse, RNG.standard_normal((N, 2, 3)), RNG.standard_normal((N, 2, 3))),
             ("ce-sequence", funnet.softmax_cross_entropy, RNG.standard_normal((N, 3, K)),
              RNG.integers(0, K, (N, 3)))]


@pytest.mark.parametrize("loss, pred, target", [pytest.param(*c[1:], id=c[0]) for c in ROW_CASES])
def test_per_row_is_each_rows_loss_alone_and_the_loss_is_their_mean(loss, pred, target):
    pred, target = jnp.asarray(pred), jnp.asarray(target)
    rows = loss.per_row(pred, target)
    alone = np.array([float(loss(pred[i:i + 1], target[i:i + 1])) for i in range(N)])
    assert rows.shape == (N,)
    np.testing.assert_allclose(rows, alone, **TIGHT)
    np.testing.assert_allclose(jnp.mean(rows), loss(pred, target), **TIGHT)
    # what the declaration promises training: row i's gradient alone is N · grad[i]
    row_grads = np.stack([np.asarray(jax.grad(loss)(pred[i:i + 1], target[i:i + 1]))[0]
                          for i in range(N)])
    np.testing.assert_allclose(N * loss.grad(pred, target), row_grads, **TIGHT)


def test_softmax_cross_entropy_grad_is_y_minus_t_over_n():
    y = np.exp(_np_log_softmax(LOGITS))
    np.testing.assert_allclose(funnet.softmax_cross_entropy.grad(LOGITS, LABELS),
                               (y - ONE_HOT) / N, **TIGHT)


@pytest.mark.parametrize("margin", [0.5, 2.0])
def test_max_margin_grads_with_other_margins(margin):
    s = jnp.array([2.0, 1.0, 0.2, 3.0, 1.5, 2.5])
    s_c = jnp.array([0.5, 0.5, 0.9, 1.0, 0.5, 0.5])  # Δ + s_c - s = 0 in the last row for Δ 2
    hand = funnet.max_margin.grad(s, s_c, margin=margin)
    violated = (margin + s_c - s > 0).astype(s.dtype) / len(s)
    np.testing.assert_array_equal(hand[1], violated)
    ad = jax.grad(lambda a, b: funnet.max_margin(a, b, margin=margin), argnums=(0, 1))(s, s_c)
    assert_trees_close(hand, ad, rtol=0, atol=1e-15)


def test_max_margin_grads():
    s = jnp.array([2.0, 1.0, 0.2, 3.0, 1.5])
    s_c = jnp.array([0.5, 0.5, 0.9, 1.0, 0.5])  # margins 1+s_c-s: -0.5, 0.5, 1.7, -1, 0
    ds, ds_c = funnet.max_margin.grad(s, s_c)
    violated = np.array([0, 1, 1, 0, 0])  # exactly on the margin (last): not violated
    np.testing.assert_array_equal(ds, -violated / 5)  # ∂J/∂s = -1/N while violated
    np.testing.assert_array_equal(ds_c, violated / 5)  # ∂J/∂s_c = +1/N while violated
    # jax.grad of the value agrees everywhere, on the margin too (the same convention)
    ad = jax.grad(funnet.max_margin, argnums=(0, 1))(s, s_c)
    assert_trees_close((ds, ds_c), ad, rtol=0, atol=1e-15)


# --- stability at extreme logits ----------------------------------------------------------


def test_cross_entropy_stable_at_extreme_logits():
    logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]])
    right, wrong = jnp.array([0, 1]), jnp.array([1, 0])
    assert float(funnet.softmax_cross_entropy(logits, right)) == 0.0
    np.testing.assert_allclose(funnet.softmax_cross_entropy(logits, wrong), 2e4, rtol=1e-15)
    for labels in (right, wrong):
        hand = funnet.softmax_cross_entropy.grad(logits, labels)
        y = np.array([[1.0, 0, 0], [0, 1.0, 0]])  # softmax: exactly one-hot here
        np.testing.assert_array_equal(hand, (y - np.eye(3)[np.asarray(labels)]) / 2)
        np.testing.assert_array_equal(jax.grad(funnet.softmax_cross_entropy)(logits, labels),
                                      hand)


def test_binary_cross_entropy_stable_at_extreme_logits():
    z = jnp.array([1e4, -1e4, 1e4, -1e4])
    y = jnp.array([0.0, 1.0, 1.0, 0.0])
    per_sample = [1e4, 1e4, 0.0, 0.0]  # softplus(z) - y z
    np.testing.assert_allclose(funnet.binary_cross_entropy(z, y), sum(per_sample) / 4, rtol=1e-15)
    hand = funnet.binary_cross_entropy.grad(z, y)
    np.testing.assert_array_equal(hand, np.array([1.0, -1.0, 0.0, 0.0]) / 4)  # (σ(z) - y)/N
    np.testing.assert_array_equal(jax.grad(funnet.binary_cross_entropy)(z, y), hand)
    for dtype in (jnp.float32, jnp.float64):
        v = funnet.binary_cross_entropy(z.astype(dtype), y.astype(dtype))
        assert v.dtype == dtype and np.isfinite(v)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize("call, fragments", [
    pytest.param(lambda: funnet.mse(np.zeros((3, 2)), np.zeros((3, 1))),
                 ["mse", "(3, 2)", "(3, 1)"], id="mse"),
    pytest.param(lambda: funnet.mse.grad(np.zeros((3, 2)), np.zeros((2, 2))),
                 ["mse", "(3, 2)", "(2, 2)"], id="mse.grad"),
    pytest.param(lambda: funnet.softmax_cross_entropy(np.zeros((3, 4)), np.zeros(5, int)),
                 ["softmax_cross_entropy", "(5,)", "(3, 4)"], id="ce-int"),
    pytest.param(lambda: funnet.softmax_cross_entropy(np.zeros((3, 4)), np.zeros((3, 5))),
                 ["softmax_cross_entropy", "(3, 5)", "(3, 4)"], id="ce-onehot"),
    pytest.param(lambda: funnet.softmax_cross_entropy.grad(np.zeros((3, 4)), np.zeros((3, 4, 1))),
                 ["softmax_cross_entropy", "(3, 4, 1)"], id="ce.grad"),
    pytest.param(lambda: funnet.binary_cross_entropy(np.zeros((3, 1)), np.zeros(3)),
                 ["binary_cross_entropy", "(3, 1)", "(3,)"], id="bce"),
    pytest.param(lambda: funnet.max_margin(np.zeros(3), np.zeros(4)),
                 ["max_margin", "(3,)", "(4,)"], id="max_margin"),
])
def test_shape_mismatch_names_the_shapes(call, fragments):
    with pytest.raises(ValueError) as info:
        call()
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


@pytest.mark.parametrize("labels", [[0, 1, 2, 3, 0], [0, -1, 2, 1, 0]], ids=["k", "negative"])
@pytest.mark.parametrize("fn", ["value", "grad"])
def test_cross_entropy_rejects_labels_out_of_range(labels, fn):
    loss = funnet.softmax_cross_entropy
    call = loss.grad if fn == "grad" else loss
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: integer labels must lie in "
                                         r"\[0, 3\) for 3 classes, got \[(3|-1)\]"):
        call(jnp.ones((5, 3)), jnp.array(labels))
    concrete = jnp.array(labels)
    with pytest.raises(ValueError, match="must lie in"):  # concrete labels under jit too
        jax.jit(lambda z: call(z, concrete))(jnp.ones((5, 3)))


def test_a_ranking_loss_is_refused_as_a_model_loss():
    with pytest.raises(TypeError, match="max_margin ranks two score arrays"):
        funnet.backprop.value_and_grad(funnet.Dense(1), funnet.max_margin)


def test_l2_refuses_matrices_it_would_not_penalise():
    from jax.example_libraries import stax
    net = funnet.serial(stax.Dense(3), funnet.Tanh, funnet.Dense(1))
    _, params = net.init(jax.random.PRNGKey(0), (-1, 2))
    for fn in (funnet.l2_penalty, funnet.losses.l2_penalty_grad):
        with pytest.raises(funnet.ParamsError, match=r"serial\[0\] › .*declares no "
                                                    r"weight-decayed params"):
            fn(params, 0.1, model=net)
    funnet.l2_penalty(params, 0.0)  # no penalty asked for: nothing to refuse
    # a stax layer without params declares nothing and needs nothing
    assert funnet.serial(stax.Tanh, funnet.Dense(1)).decay_mask(
        ((), {"W": jnp.ones((2, 1)), "b": jnp.ones(1)})) == ((), {"W": True, "b": False})


def test_softmax_cross_entropy_with_masked_minus_inf_logits():
    # the -inf masking idiom: optax and torch give log 2 here, and so must we (not NaN)
    logits = jnp.array([[-jnp.inf, 0.0, 0.0]])
    value = funnet.softmax_cross_entropy(logits, jnp.array([1]))
    assert float(value) == pytest.approx(np.log(2.0), rel=1e-12)
    grad = funnet.softmax_cross_entropy.grad(logits, jnp.array([1]))
    np.testing.assert_allclose(grad, [[0.0, -0.5, 0.5]], atol=1e-15)
    ref = jax.grad(lambda s: funnet.softmax_cross_entropy(s, jnp.array([1])))(logits)
    np.testing.assert_allclose(ref, grad, atol=1e-15)
    nan = funnet.softmax_cross_entropy(jnp.array([[jnp.nan, 0.0]]), jnp.array([1]))
    assert np.isnan(float(nan))  # NaN in still gives NaN out


def test_softmax_cross_entropy_hand_gradient_for_targets_not_summing_to_one():
    """The hand gradient is ``(softmax(s) Σ_k t_k - t)/N``: for target rows summing to 0 (a
    row left out of the loss), 0.5 or 2 it equals jax.grad of the plain formula ``-1/N Σ t
    log softmax(s)`` written here. It used ``(softmax(s) - t)/N``, right only when every row
    sums to 1: an all-zero row has loss 0 but got the gradient softmax(s)/N."""
    rng = np.random.default_rng(0)
    s = jnp.asarray(rng.standard_normal((4, 3)))
    t = jnp.asarray([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [1.0, 0.0, 1.0], [0.2, 0.3, 0.5]])

    def plain(s):
        return -jnp.sum(t * jax.nn.log_softmax(s, axis=-1)) / s.shape[0]

    np.testing.assert_allclose(funnet.softmax_cross_entropy.grad(s, t), jax.grad(plain)(s),
                               rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(funnet.softmax_cross_entropy.grad(s, t)[0], 0.0, atol=0)
