"""Tests for funnet.train: the step, masking, fit (epochs, early stopping, checkpoints,
non-finite losses, input checks, optimizers), evaluate/predict and History."""

from __future__ import annotations

import math
import re
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _registry import assert_trees_close
from jax.sharding import SingleDeviceSharding

import funnet
from funnet import checkpoint, train
from funnet.train import History, NonFiniteLossError, TrainState, evaluate, fit, make_step, predict

CE = funnet.softmax_cross_entropy


def blobs(n: int = 60, d: int = 6, k: int = 3, *, seed: int = 0, dtype=np.float64):
    """``k`` separable Gaussian blobs: x ``[n, d]``, integer labels ``[n]``."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n).astype(np.int32)
    centres = rng.normal(0, 3, (k, d))
    return (centres[y] + rng.normal(0, 1, (n, d))).astype(dtype), y


def mlp(k: int = 3, act=funnet.Tanh, hidden: int = 8):
    return funnet.serial(funnet.Dense(hidden), act, funnet.Dense(k))


def init(model, d: int = 6, seed: int = 0, dtype=jnp.float64):
    _, params = model.init(jax.random.PRNGKey(seed), (-1, d))
    return jax.tree.map(lambda a: a.astype(dtype), params)


def leaves_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(u), np.asarray(v))
                                      for u, v in zip(la, lb))


MLP = mlp()  # shared, with ADAM: fits of the same shapes reuse one compiled epoch
ADAM = optax.adam(0.05)


def quiet_fit(model, params, data, **kw):
    kw.setdefault("loss", CE)
    kw.setdefault("optimizer", ADAM)
    kw.setdefault("epochs", 3)
    kw.setdefault("batch_size", 16)
    kw.setdefault("key", jax.random.PRNGKey(1))
    return fit(model, params, data, progress=False, **kw)


# --- TrainState and make_step ----------------------------------------------------------


def test_train_state_create_takes_raw_or_typed_keys():
    params = {"W": jnp.ones((2, 2)), "b": jnp.zeros(2)}
    raw = TrainState.create(params, optax.adam(0.1), jax.random.PRNGKey(3))
    typed = TrainState.create(params, optax.adam(0.1), jax.random.key(3))
    assert jnp.issubdtype(raw.key.dtype, jax.dtypes.prng_key)  # stored typed, any impl
    assert np.array_equal(jax.random.key_data(raw.key), jax.random.key_data(typed.key))
    rbg = TrainState.create(params, optax.adam(0.1), jax.random.key(3, impl="rbg"))
    assert str(jax.random.key_impl(rbg.key)) == "rbg"
    assert int(raw.step) == 0 and raw.step.dtype == jnp.int32
    assert jax.tree.structure(raw.opt_state) == jax.tree.structure(optax.adam(0.1).init(params))
    with pytest.raises(TypeError, match="PRNG key"):
        TrainState.create(params, optax.adam(0.1), jnp.ones(3))


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_hand_and_reverse_steps_agree_over_several_steps(l2):
    x, y = blobs(24)
    model = mlp(act=funnet.Elu)
    params = init(model)
    tx = optax.adam(0.05)
    states = {g: TrainState.create(params, tx, jax.random.PRNGKey(0)) for g in train.GRADS}
    steps = {g: make_step(model, CE, tx, l2=l2, grad=g) for g in train.GRADS}
    for i in range(5):
        batch = (x[4 * i: 4 * i + 8], y[4 * i: 4 * i + 8])
        out = {g: steps[g](states[g], batch) for g in train.GRADS}
        states = {g: out[g][0] for g in train.GRADS}
        np.testing.assert_allclose(out["hand"][1]["loss"], out["reverse"][1]["loss"], rtol=1e-12)
        assert out["hand"][1]["accuracy"] == out["reverse"][1]["accuracy"]
    assert_trees_close(states["hand"].params, states["reverse"].params, rtol=1e-10, atol=1e-12)
    assert int(states["hand"].step) == 5
    assert not np.array_equal(states["hand"].key, jax.random.PRNGKey(0))  # the key advances


# (loss, targets of the real rows, model output width)
MASK_CASES = {
    "labels-ce": (CE, lambda y, k: y, 3),
    "onehot-ce": (CE, lambda y, k: np.eye(k)[y], 3),
    "mse": (funnet.mse, lambda y, k: np.eye(k)[y] * 2.0 - 1.0, 3),
    "bce": (funnet.binary_cross_entropy, lambda y, k: (y[:, None] == 1).astype(np.float64), 1),
}


@pytest.mark.parametrize("grad", train.GRADS)
@pytest.mark.parametrize("case", sorted(MASK_CASES))
def test_masked_batch_gives_exactly_the_gradient_of_the_real_rows(case, grad):
    loss, targets, k = MASK_CASES[case]
    x, labels = blobs(11, k=3, seed=1)
    t = targets(labels, 3)
    junk_x, junk_labels = blobs(5, k=3, seed=2)
    junk_t = targets((junk_labels + 1) % 3, 3)  # padding rows with other targets
    x_pad, t_pad = np.concatenate([x, 10 * junk_x]), np.concatenate([t, junk_t])
    mask = np.r_[np.ones(11), np.zeros(5)]
    model = mlp(k=k)
    params = init(model)
    tx = optax.sgd(1.0)  # new params = params - ∇R: compares the gradients themselves
    step = make_step(model, loss, tx, l2=0.01, grad=grad)
    state = TrainState.create(params, tx, jax.random.PRNGKey(0))
    ref_state, ref = step(state, (x, t))
    got_state, got = step(state, (x_pad, t_pad, mask))
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-13)
    assert_trees_close(got_state.params, ref_state.params, rtol=1e-12, atol=1e-14)
    half_mask_state, _ = step(state, (x_pad, t_pad, np.r_[np.ones(13), np.zeros(3)]))
    assert not np.allclose(half_mask_state.params[0]["W"], ref_state.params[0]["W"])
    if "accuracy" in ref:
        np.testing.assert_allclose(got["accuracy"], ref["accuracy"], rtol=1e-12)


def test_make_step_metrics_without_accuracy_for_regression():
    model = mlp(k=2)
    tx = optax.sgd(0.1)
    state = TrainState.create(init(model), tx, jax.random.PRNGKey(0))
    _, metrics = make_step(model, funnet.mse, tx)(state, (np.ones((4, 6)), np.ones((4, 2))))
    assert sorted(metrics) == ["loss"]


def test_make_step_rejects_bad_options():
    with pytest.raises(ValueError, match="grad must be one of"):
        make_step(mlp(), CE, optax.sgd(0.1), grad="symbolic")
    with pytest.raises(ValueError, match="l2 must be"):
        make_step(mlp(), CE, optax.sgd(0.1), l2=-1.0)
    with pytest.raises(funnet.NoBackwardRuleError):
        stax_pair = (lambda k, s: (s, ()), lambda p, x, **kw: x)
        make_step(stax_pair, CE, optax.sgd(0.1), grad="hand")


# --- fit: epochs, padding, shuffling ---------------------------------------------------


def test_every_sample_counts_once_per_epoch_with_a_padded_last_batch():
    # lr 0: params never change, so epoch 1's train loss (averaged over the scan, the last
    # batch padded: 50 = 3·16 + 2) must be the plain mean over the whole training set.
    x, y = blobs(50)
    model = mlp()
    params = init(model)
    out, history = quiet_fit(model, params, (x, y), optimizer=optax.sgd(0.0), epochs=2)
    full = evaluate(model, params, (x, y), loss=CE)
    for record in history:
        np.testing.assert_allclose(record["train_loss"], full["loss"], rtol=1e-6)
        np.testing.assert_allclose(record["train_accuracy"], full["accuracy"], rtol=1e-6)
    assert leaves_equal(out, params)


def _counting_mlp(traces: list):
    """mlp() with an identity layer that records each time it is traced."""

    def forward(params, x):
        traces.append(1)
        return x, None

    count = funnet.layer(lambda key, shape: (shape, ()), forward, lambda p, r, dy: ((), dy),
                         name="Count")
    return funnet.serial(funnet.Dense(8), count, funnet.Tanh, funnet.Dense(3))


def test_fit_traces_the_epoch_once_not_per_epoch():
    x, y = blobs(40)
    opt = optax.inject_hyperparams(optax.adam)(learning_rate=0.01)
    counts = []
    for epochs in (1, 4):
        traces = []
        model = _counting_mlp(traces)
        _, history = quiet_fit(model, init(model), (x, y), valid=(x[:10], y[:10]),
                               epochs=epochs, optimizer=opt)
        assert len(history) == epochs
        counts.append(len(traces))
    assert counts[0] == counts[1] > 0  # four epochs trace the model as often as one


def test_fit_then_check_model_then_fit_again(monkeypatch):
    # contract v2: no forward-mode switch, no cache clearing, no trace guard in the library:
    # a gradient check between two fits of the same objects neither breaks nor recompiles
    made = []
    original = train.step._make_epoch
    monkeypatch.setattr(train.step, "_make_epoch",
                        lambda *a, **k: made.append(1) or original(*a, **k))
    x, y = blobs(40)
    model, opt = mlp(), optax.sgd(0.1)
    params = init(model)
    first, _ = quiet_fit(model, params, (x, y), optimizer=opt, epochs=2)
    result = funnet.check_model(model, params, x[:8], y[:8], CE)  # all methods, forward too
    assert result.ok and ("forward", "formula") in result.reports
    jax.clear_caches()  # even a user's own cache clearing is not an error any more
    second, _ = quiet_fit(model, params, (x, y), optimizer=opt, epochs=2)
    assert_trees_close(first, second, rtol=0, atol=0)
    assert len(made) == 1  # the compiled epoch of the first fit was reused


def test_a_legitimate_retrace_of_the_epoch_is_not_an_error():
    x, y = blobs(32)
    model = mlp()
    lag = train.objective.loss_and_grads(model, CE, l2=0.0, grad="reverse")
    run = train.step._make_epoch(lag, optax.sgd(0.1), CE, n=32, batch_size=8,
                                 acc_kind="labels", valid_kind=None, model=model,
                                 placement=None, eval_chunk=None)
    start = train.step.start_function(optax.sgd(0.1), SingleDeviceSharding(jax.devices()[0]))
    state = start(init(model), (), jax.random.key(0))
    _, state, _ = run(state, jnp.asarray(x), jnp.asarray(y), None, None, None, None)
    _, state, metrics = run(state, jnp.asarray(x[:16]), jnp.asarray(y[:16]), None, None, None, None)
    assert np.isfinite(metrics["train_loss"])


def test_local_data_on_one_device_puts_the_rows_on_it_once(monkeypatch):
    # found by the mutation review (h-mut16): nothing failed when fit(local_data=True) on
    # one device handed the host arrays to every epoch (copied to the device each time)
    x, y = blobs()
    held = []
    one_epoch = train.loop._one_epoch

    def spy(run_state, model, loss, optimizer, options, data, *rest):
        held.append([isinstance(a, jax.Array) for a in data[:4]] + list(data[4:]))
        return one_epoch(run_state, model, loss, optimizer, options, data, *rest)

    monkeypatch.setattr(train.loop, "_one_epoch", spy)
    local, history = quiet_fit(MLP, init(MLP), (x, y), valid=(x[:20], y[:20]),
                               local_data=True)
    assert held == [[True] * 4 + [None, None]] * 3  # on the device; no row map: as they are
    full, same = quiet_fit(MLP, init(MLP), (x, y), valid=(x[:20], y[:20]))
    assert leaves_equal(local, full) and history.column("valid_loss") == same.column(
        "valid_loss")


@pytest.mark.parametrize("grad", ["reverse", "hand"])
def test_a_loss_declaring_per_row_trains_masked_rows_as_the_per_row_evaluation(grad):
    # the declared per-row form replaces the per-row vmap of the loss: the same objective
    # and gradient, and a different per_row would change them (it is what is used)
    x, y = blobs(8)
    model, params = mlp(), init(mlp())
    w = (jnp.array([1, 1, 0, 1, 1, 1, 0, 1]), 6)
    undeclared = funnet.Loss("ce", CE.value, CE.grad, task="multiclass")
    doubled = funnet.Loss("ce", CE.value, CE.grad, task="multiclass",
                          per_row=lambda o, t: 2 * CE.per_row(o, t))
    out = {}
    for name, loss in (("declared", CE), ("undeclared", undeclared), ("doubled", doubled)):
        lag = train.objective.loss_and_grads(model, loss, l2=0.0, grad=grad)
        data, _, _, grads = lag(params, (), jnp.asarray(x), jnp.asarray(y), w, None)
        out[name] = (data, grads)
    assert_trees_close(out["declared"], out["undeclared"], rtol=1e-12, atol=1e-14)
    assert float(out["doubled"][0]) == pytest.approx(2 * float(out["declared"][0]), rel=1e-12)


def test_grad_autodiff_is_the_old_name_of_reverse():
    x, y = blobs(16)
    model = mlp()
    with pytest.warns(DeprecationWarning, match='grad="reverse"'):
        old, _ = quiet_fit(model, init(model), (x, y), grad="autodiff", epochs=1)
    new, _ = quiet_fit(model, init(model), (x, y), grad="reverse", epochs=1)
    assert_trees_close(old, new, rtol=0, atol=0)
    with pytest.raises(ValueError, match="grad must be one of"):
        make_step(model, CE, optax.sgd(0.1), grad="backprop")


def test_fit_leaves_the_callers_params_alone_and_is_deterministic():
    x, y = blobs(40)
    model = funnet.serial(funnet.Dense(8), funnet.Relu, funnet.Dropout(0.3), funnet.Dense(3))
    params = init(model)
    before = jax.tree.map(np.array, params)
    a, ha = quiet_fit(model, params, (x, y))
    b, hb = quiet_fit(model, params, (x, y))
    assert leaves_equal(params, before)  # not donated away, not modified
    assert leaves_equal(a, b) and ha.column("train_loss") == hb.column("train_loss")
    c, _ = quiet_fit(model, params, (x, y), key=jax.random.PRNGKey(2))
    assert not leaves_equal(a, c)


def test_fit_with_hand_gradients_matches_reverse():
    x, y = blobs(45)
    model = mlp(act=funnet.Logistic)
    params = init(model)
    # 45 = 5·8 + 5: the last batch is padded
    kw = {"valid": (x[:9], y[:9]), "l2": 0.01, "epochs": 3, "batch_size": 8}
    a, ha = quiet_fit(model, params, (x, y), grad="reverse", **kw)
    h, hh = quiet_fit(model, params, (x, y), grad="hand", **kw)
    assert_trees_close(h, a, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(hh.column("train_loss"), ha.column("train_loss"), rtol=1e-10)


def test_zero_epochs_returns_the_params():
    x, y = blobs(10)
    params = init(mlp())
    out, history = quiet_fit(mlp(), params, (x, y), epochs=0, batch_size=5)
    assert leaves_equal(out, params) and len(history) == 0


# --- optimizers ------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd": optax.sgd(0.1),
    "momentum": optax.sgd(0.05, momentum=0.9),
    "adagrad": optax.adagrad(0.1),
    "adadelta": optax.adadelta(1.0),
    "rmsprop": optax.rmsprop(0.01),
    "adam": optax.adam(0.01),
    "adam-cosine": optax.adam(optax.cosine_decay_schedule(0.02, decay_steps=40)),
    "sgd-step": optax.sgd(optax.exponential_decay(0.2, 10, 0.5, staircase=True)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_fit_decreases_the_loss_with_every_optimizer(name):
    x, y = blobs(64, seed=3)
    model = mlp()
    _, history = quiet_fit(model, init(model), (x, y), optimizer=OPTIMIZERS[name], epochs=5)
    losses = history.column("train_loss")
    assert losses[-1] < 0.7 * losses[0], losses
    assert all(math.isfinite(v) for v in losses)


def test_learning_rate_shows_with_inject_hyperparams_only():
    x, y = blobs(32)
    schedule = optax.exponential_decay(0.1, transition_steps=2, decay_rate=0.5)
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=schedule)
    _, history = quiet_fit(mlp(), init(mlp()), (x, y), optimizer=tx, epochs=2, batch_size=16)
    # the rate used by the last step of each epoch: steps 1 and 3
    expected = [0.1 * 0.5 ** 0.5, 0.1 * 0.5 ** 1.5]
    np.testing.assert_allclose(history.column("learning_rate"), expected, rtol=1e-6)
    _, plain = quiet_fit(mlp(), init(mlp()), (x, y), epochs=1)
    assert plain.column("learning_rate") == [None]
    assert "lr" in history.table() and "lr" not in plain.table()


# --- early stopping --------------------------------------------------------------------


def test_early_stopping_returns_the_best_params():
    x, y = blobs(80, seed=4)
    valid = blobs(12, seed=5)
    model = mlp()
    params, history = quiet_fit(model, init(model), (x, y), valid=valid, patience=2,
                                epochs=60, optimizer=optax.adam(0.1))
    assert history.stopped_early and len(history) < 60
    best = history.best_epoch
    errors = [1 - r["valid_accuracy"] for r in history]
    assert best == 1 + int(np.argmin(errors))  # first epoch with the lowest error
    assert len(history) == best + 2  # exactly `patience` epochs without improvement
    np.testing.assert_allclose(evaluate(model, params, valid, loss=CE)["loss"],
                               history[best - 1]["valid_loss"], rtol=1e-6)
    assert "stopped early; best epoch" in history.table()


def test_early_stopping_on_the_validation_loss_without_accuracy():
    x, _ = blobs(40)
    t = np.sin(x[:, :2])
    model = mlp(k=2)
    params, history = quiet_fit(model, init(model), (x, t), valid=(x[:8], t[:8]), patience=1,
                                epochs=30, loss=funnet.mse, optimizer=optax.sgd(1.5))
    losses = history.column("valid_loss")
    assert history.column("valid_accuracy") == [None] * len(history)
    assert history.best_epoch == 1 + int(np.argmin(losses))
    if history.stopped_early:
        assert len(history) == history.best_epoch + 1
    got = evaluate(model, params, (x[:8], t[:8]), loss=funnet.mse)
    assert "accuracy" not in got
    np.testing.assert_allclose(got["loss"], min(losses), rtol=1e-6)


def test_without_patience_all_epochs_run_and_the_last_params_return():
    x, y = blobs(40)
    last, history = quiet_fit(MLP, init(MLP), (x, y), valid=(x[:8], y[:8]), epochs=4)
    assert len(history) == 4 and not history.stopped_early and history.best_epoch is not None
    np.testing.assert_allclose(evaluate(MLP, last, (x[:8], y[:8]), loss=CE)["loss"],
                               history[-1]["valid_loss"], rtol=1e-6)


# --- non-finite losses -----------------------------------------------------------------


def test_non_finite_loss_stops_with_the_last_good_state(tmp_path):
    x, _ = blobs(32, dtype=np.float32)
    t = np.ones((32, 2), np.float32)
    model = mlp(k=2)
    params = init(model, dtype=jnp.float32)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1 \(global step 1\)") as info:
        quiet_fit(model, params, (x, t), loss=funnet.mse, optimizer=optax.sgd(1e30),
                  batch_size=8, checkpoint=tmp_path / "run")
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert (err.epoch, err.step, err.global_step) == (1, 1, 1)
    assert int(err.last_good_state.step) == 1
    chex.assert_tree_all_finite(err.last_good_params)
    assert err.last_good_params is err.last_good_state.params
    assert len(err.history) == 0
    like = err.last_good_state._replace(key=jax.random.key_data(err.last_good_state.key))
    saved, meta = checkpoint.load_step(err.path, like=like)
    assert leaves_equal(saved, like) and (meta["epoch"], meta["step"]) == (1, 1)
    assert checkpoint.latest_step(tmp_path / "run") is None  # no epoch completed


def test_non_finite_in_a_later_epoch_keeps_the_history(tmp_path):
    x, y = blobs(24, dtype=np.float32)
    model = mlp()
    params = init(model, dtype=jnp.float32)
    # lr grows 1e6× per epoch: fine in epoch 1, explodes later
    tx = optax.sgd(optax.exponential_decay(1e-3, transition_steps=3, decay_rate=1e6))
    with pytest.raises(NonFiniteLossError) as info:
        quiet_fit(model, params, (x, y), optimizer=tx, batch_size=8, epochs=10,
                  checkpoint=tmp_path)
    err = info.value
    assert err.epoch >= 2 and len(err.history) == err.epoch - 1
    assert checkpoint.latest_step(tmp_path) == err.epoch - 1
    chex.assert_tree_all_finite(err.last_good_state._replace(key=()))
    assert err.best_params is None and err.best_epoch is None  # no validation data


def test_non_finite_error_carries_the_best_params_so_far():
    x, y = blobs(24, dtype=np.float32)
    model = mlp()
    params = init(model, dtype=jnp.float32)
    tx = optax.sgd(optax.exponential_decay(1e-3, transition_steps=3, decay_rate=1e6))
    with pytest.raises(NonFiniteLossError) as info:
        quiet_fit(model, params, (x, y), valid=(x[:8], y[:8]), patience=100, optimizer=tx,
                  batch_size=8, epochs=10)
    err = info.value
    losses = [r["valid_loss"] for r in err.history]  # the default monitor
    assert err.best_epoch == 1 + losses.index(min(losses))
    chex.assert_tree_all_finite(err.best_params)
    # they are the params of that epoch: a rerun stopped there returns the same
    again, _ = quiet_fit(model, params, (x, y), valid=(x[:8], y[:8]), optimizer=tx,
                         batch_size=8, epochs=err.best_epoch)
    assert leaves_equal(err.best_params, again)


# --- checkpoints -----------------------------------------------------------------------


def test_resume_is_bitwise_identical_to_an_uninterrupted_run(tmp_path):
    x, y = blobs(50)
    model = funnet.serial(funnet.Dense(8), funnet.Relu, funnet.Dropout(0.2), funnet.Dense(3))
    params = init(model)
    kw = {"valid": (x[:10], y[:10]), "patience": 50, "batch_size": 16,
          "optimizer": optax.inject_hyperparams(optax.adam)(learning_rate=0.02)}
    full, h_full = quiet_fit(model, params, (x, y), epochs=4, **kw)
    _, h_half = quiet_fit(model, params, (x, y), epochs=2, checkpoint=tmp_path, **kw)
    assert len(h_half) == 2 and checkpoint.latest_step(tmp_path) == 2
    resumed, h_res = quiet_fit(model, params, (x, y), epochs=4, checkpoint=tmp_path,
                               resume=True, key=jax.random.PRNGKey(99), **kw)
    assert leaves_equal(resumed, full)
    assert h_res.column("train_loss") == h_full.column("train_loss")
    assert h_res.column("valid_loss") == h_full.column("valid_loss")
    assert h_res.best_epoch == h_full.best_epoch
    assert sorted(p.name for p in tmp_path.iterdir() if p.name[0] != ".") == [
        "2", "3", "4"]  # keep=3: orbax's numbered step directories


def test_resume_keeps_the_early_stopping_bookkeeping(tmp_path):
    x, y = blobs(60, seed=4)
    valid = blobs(12, seed=5)
    model = mlp()
    kw = {"valid": valid, "patience": 2, "epochs": 60, "optimizer": optax.adam(0.1)}
    best, h = quiet_fit(model, init(model), (x, y), **kw)
    assert h.stopped_early
    stop = len(h)
    # interrupted one epoch before the end, then resumed: same stop, same best params
    quiet_fit(model, init(model), (x, y), **{**kw, "epochs": stop - 1}, checkpoint=tmp_path)
    resumed, h2 = quiet_fit(model, init(model), (x, y), **kw, checkpoint=tmp_path, resume=True)
    assert h2.stopped_early and len(h2) == stop and h2.best_epoch == h.best_epoch
    assert leaves_equal(resumed, best)
    # resuming a finished run trains no more and returns the best params again
    again, h3 = quiet_fit(model, init(model), (x, y), **kw, checkpoint=tmp_path, resume=True)
    assert leaves_equal(again, best) and len(h3) == stop


def test_checkpoint_directory_rules(tmp_path):
    x, y = blobs(20)
    model = mlp()
    quiet_fit(model, init(model), (x, y), epochs=1, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="already holds checkpoints"):
        quiet_fit(model, init(model), (x, y), epochs=1, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="different fit: batch_size=16 there, 8 here"):
        quiet_fit(model, init(model), (x, y), epochs=2, checkpoint=tmp_path, resume=True,
                  batch_size=8)
    with pytest.raises(ValueError, match="resume=True needs checkpoint"):
        quiet_fit(model, init(model), (x, y), resume=True)
    # resume=True with nothing saved yet starts afresh
    _, h = quiet_fit(model, init(model), (x, y), epochs=1, checkpoint=tmp_path / "new",
                     resume=True)
    assert len(h) == 1
    # resuming with fewer epochs than are saved: an error, not a silent longer run
    quiet_fit(model, init(model), (x, y), epochs=3, checkpoint=tmp_path / "three")
    with pytest.raises(ValueError, match=r"is at epoch 3, past epochs=2: resume with epochs ≥ 3"):
        quiet_fit(model, init(model), (x, y), epochs=2, checkpoint=tmp_path / "three",
                  resume=True)
    # a checkpoint path that is a file: refused before any training
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        quiet_fit(model, init(model), (x, y), epochs=1, checkpoint=tmp_path / "file")


def test_weakly_typed_data_reuses_the_compiled_epoch():
    x, y = blobs(32)  # float64, as jax's weak floats are here (x64 on)
    model = mlp()
    xw = jnp.broadcast_to(jnp.asarray(0.5), x.shape)
    assert xw.weak_type and xw.dtype == x.dtype
    quiet_fit(model, init(model), (x, y), epochs=1)
    b, _ = quiet_fit(model, init(model), (xw, y), epochs=1)  # same compiled epoch, no retrace
    chex.assert_tree_all_finite(b)


# --- input checks ----------------------------------------------------------------------


def _nan_x(x, y):
    x = x.copy()
    x[3, 1] = np.nan
    return x, y


BAD_INPUTS = {
    "nan in train.x": (lambda x, y: (_nan_x(x, y), None), ValueError, r"train\.x: 1 non-finite"),
    "label out of range": (lambda x, y: ((x, np.r_[y[:-1], 3]), None), ValueError,
                           r"train\.y: 1 label outside \[0, 3\)"),
    "length mismatch": (lambda x, y: ((x, y[:-1]), None), ValueError,
                        r"train\.x has 20 samples but train\.y has 19"),
    "nan in valid.x": (lambda x, y: ((x, y), _nan_x(x, y)), ValueError, r"valid\.x"),
    "one-hot of the wrong width": (lambda x, y: ((x, np.eye(4)[y]), None), ValueError,
                                   r"train\.y has shape \(20, 4\).*\(16, 3\)"),
    "wrong input width": (lambda x, y: ((x[:, :4], y), None), ValueError,
                          r"train\.x of shape \(20, 4\) does not fit the model"),
    "not a pair": (lambda x, y: ((x,), None), TypeError, r"train must be an \(x, y\) pair"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_data_is_rejected_before_compiling(case):
    make, error, message = BAD_INPUTS[case]
    x, y = blobs(20)
    train_data, valid = make(x, y)
    with pytest.raises(error, match=message):
        quiet_fit(mlp(), init(mlp()), train_data, valid=valid)


BAD_OPTIONS = {
    "batch_size 0": ({"batch_size": 0}, r"batch_size must be an int ≥ 1, got 0"),
    "negative epochs": ({"epochs": -1}, r"epochs must be an int ≥ 0"),
    "patience without valid": ({"patience": 3}, r"patience .* needs validation data"),
    "patience 0": ({"patience": 0, "valid": blobs(5)}, r"patience must be an int ≥ 1"),
    "negative l2": ({"l2": -0.5}, r"l2 must be a finite number ≥ 0"),
    "unknown grad": ({"grad": "numerical"}, r"grad must be one of"),
    "devices and batch": ({"devices": jax.devices() * 3, "batch_size": 16},
                          r"batch_size 16 must be divisible by the number of devices \(3\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_OPTIONS))
def test_bad_options_are_rejected(case):
    options, message = BAD_OPTIONS[case]
    x, y = blobs(20)
    with pytest.raises(ValueError, match=message):
        quiet_fit(mlp(), init(mlp()), (x, y), **options)


# --- evaluate, predict, History, progress ----------------------------------------------


def test_evaluate_and_predict_in_chunks_agree_with_one_pass():
    x, y = blobs(37)
    model = mlp()
    params = init(model)
    whole = evaluate(model, params, funnet.Dataset(x, y), loss=CE)
    chunked = evaluate(model, params, (x, y), loss=CE, batch_size=10)
    assert whole.keys() == chunked.keys() == {"loss", "accuracy"}
    np.testing.assert_allclose(chunked["loss"], whole["loss"], rtol=1e-12)
    np.testing.assert_allclose(chunked["accuracy"], whole["accuracy"], rtol=1e-12)
    logits = model.apply(params, x)
    np.testing.assert_allclose(whole["accuracy"], funnet.accuracy(logits, y), rtol=1e-12)
    np.testing.assert_allclose(predict(model, params, x, batch_size=8), logits, rtol=1e-12)
    np.testing.assert_allclose(predict(model, params, x), logits, rtol=1e-12)
    with pytest.raises(ValueError, match="batch_size must be an int ≥ 1 or None"):
        predict(model, params, x, batch_size=0)
    with pytest.raises(ValueError, match="37 samples but data.y has 36"):
        evaluate(model, params, (x, y[:-1]), loss=CE)


def test_history_table_and_plot(tmp_path, monkeypatch):
    x, y = blobs(40)
    _, history = quiet_fit(MLP, init(MLP), (x, y), valid=(x[:8], y[:8]), epochs=3)
    assert isinstance(history, History) and len(history) == 3
    assert set(history[0]) == {"epoch", "train_loss", "train_accuracy", "valid_loss",
                               "valid_accuracy", "learning_rate", "seconds"}
    lines = history.table().splitlines()
    assert lines[0].split() == ["epoch", "train", "loss", "train", "acc", "valid", "loss",
                                "valid", "acc", "seconds"]
    assert len(lines) == 4 and f"{history.best_epoch}*" in history.table()
    path = history.plot(tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"funnet\[plot\]"):
        history.plot(tmp_path / "again.png")


class _FakeTTY:
    def __init__(self, stream):
        self.stream = stream

    def isatty(self):
        return True

    def __getattr__(self, name):
        return getattr(self.stream, name)


def test_progress_only_on_a_terminal_and_without_tqdm_one_line_per_epoch(capsys, monkeypatch):
    x, y = blobs(20)
    model, sgd = mlp(), optax.sgd(0.1)
    fit(model, init(model), (x, y), loss=CE, optimizer=sgd, epochs=2,
        batch_size=8, key=jax.random.PRNGKey(0), progress=True)
    assert capsys.readouterr().err == ""  # stderr is not a terminal here
    monkeypatch.setattr(sys, "stderr", _FakeTTY(sys.stderr))
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # tqdm missing
    fit(model, init(model), (x, y), loss=CE, optimizer=sgd, epochs=2,
        batch_size=8, key=jax.random.PRNGKey(0), progress=True)
    err = capsys.readouterr().err.splitlines()
    assert [line.split()[:2] for line in err] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert re.search(r"2  loss [0-9.]+  acc [0-9.]+  [0-9.]+ m?s$", err[0])


def test_on_epoch_gets_each_epoch_record_and_a_non_callable_is_refused_before_training():
    x, y = blobs(20)
    model, sgd = mlp(), optax.sgd(0.1)
    seen = []
    _, history = fit(model, init(model), (x, y), loss=CE, optimizer=sgd, epochs=3,
                     batch_size=8, key=jax.random.PRNGKey(0), progress=False,
                     on_epoch=seen.append)
    assert seen == list(history) and [r["epoch"] for r in seen] == [1, 2, 3]
    seen[0]["epoch"] = 99  # a copy: the history is not the caller's to change
    assert history[0]["epoch"] == 1
    with pytest.raises(TypeError, match="on_epoch must be a callable.*got list"):
        fit(model, init(model), (x, y), loss=CE, optimizer=sgd, epochs=1, batch_size=8,
            key=jax.random.PRNGKey(0), progress=False, on_epoch=[])


def test_training_runs_in_train_mode_and_evaluation_in_eval_mode():
    # found by the mutation review: nothing failed when a step ran with train=False
    x, y = blobs(24)
    drop = funnet.serial(funnet.Dense(8), funnet.Dropout(0.5), funnet.Dense(3))
    plain = funnet.serial(funnet.Dense(8), funnet.Identity, funnet.Dense(3))
    params = init(drop)
    tx = optax.sgd(0.5)
    after = {}
    for grad in ("hand", "reverse"):
        for name, model in (("drop", drop), ("plain", plain)):
            step = make_step(model, CE, tx, grad=grad)
            state, _ = step(TrainState.create(params, tx, jax.random.PRNGKey(3)), (x, y))
            after[name, grad] = state.params
    assert_trees_close(after["drop", "hand"], after["drop", "reverse"], rtol=1e-10, atol=1e-12)
    delta = jax.tree_util.tree_map(lambda a, b: jnp.max(jnp.abs(a - b)), after["drop", "hand"],
                                   after["plain", "hand"])
    assert max(jax.tree_util.tree_leaves(delta)) > 1e-3  # dropout was active in the step
    # evaluation: Dropout is the identity
    scores = evaluate(drop, params, (x, y), loss=CE)
    assert scores["loss"] == pytest.approx(float(CE(drop.apply(params, x), y)), rel=1e-12)
    np.testing.assert_allclose(predict(drop, params, x), plain.apply(params, x), rtol=1e-12)


def test_the_old_grad_name_still_means_reverse_mode():
    from jax.example_libraries import stax

    net = funnet.serial(stax.Dense(3))  # no hand rule: only reverse mode can train it
    _, params = net.init(jax.random.PRNGKey(0), (-1, 6))
    tx = optax.sgd(0.1)
    with pytest.warns(DeprecationWarning):
        step = make_step(net, funnet.mse, tx, grad="autodiff")
    x = jnp.ones((4, 6))
    with jax.numpy_rank_promotion("allow"):  # stax.Dense broadcasts its bias
        state, metrics = step(TrainState.create(params, tx, jax.random.PRNGKey(1)),
                              (x, jnp.zeros((4, 3))))
    assert int(state.step) == 1 and np.isfinite(float(metrics["loss"]))


# --- defects of the training issue, fixed early -------------------------------------------------


def test_an_optimizer_that_is_not_optax_is_named():
    x, y = blobs(16)
    model = mlp()
    for call in (lambda: quiet_fit(model, init(model), (x, y), optimizer="adam"),
                 lambda: make_step(model, CE, "adam"),
                 lambda: TrainState.create(init(model), "adam", jax.random.PRNGKey(0))):
        with pytest.raises(TypeError, match="optimizer must be an optax GradientTransformation"):
            call()


def test_a_loss_that_returns_a_vector_is_refused_before_training():
    x, y = blobs(20)
    model = mlp()
    per_row = lambda out, t: CE.value(out, t) * jnp.ones(out.shape[0])
    with pytest.raises(ValueError, match=r"must return a scalar .*got shape \(8,\)"):
        quiet_fit(model, init(model), (x, y), loss=per_row, batch_size=8)


def test_a_batch_larger_than_the_data_is_capped_with_a_warning():
    x, y = blobs(12)
    model = mlp()
    with pytest.warns(UserWarning, match="batch_size 100000000 is larger than the 12 training"):
        capped, _ = quiet_fit(model, init(model), (x, y), batch_size=10**8, epochs=1)
    exact, _ = quiet_fit(model, init(model), (x, y), batch_size=12, epochs=1)
    assert_trees_close(capped, exact, rtol=0, atol=0)


def test_int64_labels_beyond_int32_are_refused_not_wrapped():
    x, _ = blobs(8)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 2**32], dtype=np.int64)  # 2**32 would wrap to 0
    model = mlp()
    with pytest.raises(ValueError, match=r"train\.y: label 4294967296 does not fit in int32"):
        quiet_fit(model, init(model), (x, y), epochs=1)


def test_evaluate_refuses_labels_out_of_range():
    x, y = blobs(10)
    model = mlp()
    bad = np.asarray(y).copy()
    bad[3] = 7  # three classes
    with pytest.raises(ValueError, match=r"data\.y: 1 label outside \[0, 3\)"):
        evaluate(model, init(model), (x, bad), loss=CE)


# --- model state (BatchNorm) through make_step, fit, evaluate, predict, resume -------------


def bn_net():
    return funnet.serial(funnet.Dense(8), funnet.BatchNorm(momentum=0.5), funnet.Tanh,
                         funnet.Dense(3))


def bn_init(dtype=jnp.float64):
    _, params, state = bn_net().init_with_state(jax.random.PRNGKey(0), (-1, 6))
    cast = lambda t: jax.tree.map(lambda a: a.astype(dtype), t)
    return cast(params), cast(state)


def test_make_step_carries_the_model_state_and_masked_rows_leave_the_statistics_alone():
    net, (params, state) = bn_net(), bn_init()
    x, y = blobs(8)
    tx = optax.sgd(0.1)
    step = make_step(net, CE, tx)
    start = TrainState.create(params, tx, jax.random.key(0), model_state=state)
    # rows 6, 7 are padding (repeats of real rows with other values): masked, they must not
    # change the batch statistics, so the running mean equals a step on rows 0..5 alone
    x_pad = np.concatenate([x[:6], x[:2] * 10.0])
    masked, _ = step(start, (x_pad, y[:8], np.array([1.0] * 6 + [0.0] * 2)))
    alone, _ = step(start, (x[:6], y[:6]))
    assert_trees_close(masked.model_state, alone.model_state, rtol=1e-12, atol=1e-14)
    assert_trees_close(masked.params, alone.params, rtol=1e-10, atol=1e-12)
    assert not leaves_equal(masked.model_state, state)  # the statistics did move


@pytest.mark.parametrize("grad", ["reverse", "hand"])
def test_fit_trains_a_batchnorm_model_and_returns_its_state(grad):
    net, (params, state) = bn_net(), bn_init()
    x, y = blobs(50)  # 50 rows, batch 16: the last batch is padded and masked
    p, s, history = quiet_fit(net, params, (x, y), state=state, epochs=8, grad=grad,
                              valid=(x[:10], y[:10]))
    assert history[-1]["train_accuracy"] > 0.9
    mean = s[1]["mean"]
    assert not np.allclose(mean, 0.0)  # running statistics were updated
    # evaluation uses the running statistics: evaluate equals the last validation record
    scores = evaluate(net, p, (x[:10], y[:10]), loss=CE, state=s)
    np.testing.assert_allclose(scores["loss"], history[-1]["valid_loss"], rtol=1e-10)
    out = predict(net, p, x[:10], state=s)
    ref = net.apply_with_state(p, s, jnp.asarray(x[:10]))[0]
    np.testing.assert_allclose(out, ref, rtol=1e-12)
    with pytest.raises(funnet.StatefulModelError, match="pass its state"):
        predict(net, p, x[:10])


def test_hand_and_reverse_fits_of_a_batchnorm_model_agree():
    net, (params, state) = bn_net(), bn_init()
    x, y = blobs(40)
    # plain SGD: the Dense bias before BatchNorm has a true gradient of 0, whose rounding
    # noise (1e-12) Adam would blow up to full-size steps
    runs = [quiet_fit(net, params, (x, y), state=state, epochs=3, grad=g,
                      optimizer=optax.sgd(0.1)) for g in ("reverse", "hand")]
    assert_trees_close(runs[0][0], runs[1][0], rtol=1e-9, atol=1e-11)
    assert_trees_close(runs[0][1], runs[1][1], rtol=1e-9, atol=1e-11)


def test_resume_with_model_state_is_bitwise(tmp_path):
    net, (params, state) = bn_net(), bn_init()
    x, y = blobs(40)
    kw = {"state": state, "valid": (x[:8], y[:8]), "patience": 10}
    full = quiet_fit(net, params, (x, y), epochs=4, **kw)
    quiet_fit(net, params, (x, y), epochs=2, checkpoint=tmp_path, **kw)
    resumed = quiet_fit(net, params, (x, y), epochs=4, checkpoint=tmp_path, resume=True, **kw)
    assert leaves_equal(resumed[0], full[0]) and leaves_equal(resumed[1], full[1])


# --- early stopping ----------------------------------------------------------------------


def test_early_stopping_is_an_immutable_value_that_breaks_ties_by_loss():
    es = funnet.EarlyStopping(patience=2, monitor="valid_error")
    es = es.update(1, valid_loss=0.5, valid_accuracy=0.9)
    es = es.update(2, valid_loss=0.3, valid_accuracy=1.0)
    tie = es.update(3, valid_loss=0.1, valid_accuracy=1.0)  # same error, lower loss
    assert (es.best_epoch, tie.best_epoch, tie.bad_epochs) == (2, 3, 0)
    worse = tie.update(4, valid_loss=0.2, valid_accuracy=1.0)  # same error, higher loss
    assert worse.best_epoch == 3 and worse.bad_epochs == 1 and not worse.should_stop
    assert worse.update(5, valid_loss=float("nan"), valid_accuracy=1.0).should_stop
    by_loss = funnet.EarlyStopping(patience=1).update(1, valid_loss=0.2).update(
        2, valid_loss=0.2)  # an equal loss does not improve
    assert by_loss.best_epoch == 1 and by_loss.should_stop
    assert funnet.EarlyStopping.from_json(tie.to_json()) == tie
    with pytest.raises(ValueError, match="monitor must be one of"):
        funnet.EarlyStopping(monitor="accuracy")


def test_patience_does_not_return_the_first_epoch_of_an_accuracy_tie():
    # separable data: validation accuracy reaches 100 % early and stays there; the loss keeps
    # falling, so the best epoch must be a late one (the old rule kept the first of the tie)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 80).astype(np.int32)
    x = np.eye(3, 6)[y] * 6.0 + rng.normal(0, 0.5, (80, 6))  # far apart: separable
    valid = (x[:20], y[:20])
    for monitor in ("valid_loss", "valid_error"):
        _, history = quiet_fit(MLP, init(MLP), (x, y), valid=valid, patience=10, epochs=12,
                               monitor=monitor)
        accs = history.column("valid_accuracy")
        first_perfect = 1 + accs.index(1.0)
        assert history.best_epoch > first_perfect, (monitor, accs, history.best_epoch)
        losses = history.column("valid_loss")
        assert losses[history.best_epoch - 1] == min(
            v for v, a in zip(losses, accs) if a == 1.0)


def test_accuracy_comes_from_the_loss_task():
    x, y = blobs(30)
    mine = funnet.Loss("my_ce", CE.value, CE.grad, task="multiclass")
    _, history = quiet_fit(MLP, init(MLP), (x, y), loss=mine, epochs=1)
    assert history[0]["train_accuracy"] is not None
    plain = funnet.Loss("my_ce", CE.value, CE.grad)  # regression by default: no accuracy
    _, history = quiet_fit(MLP, init(MLP), (x, y), loss=plain, epochs=1)
    assert history[0]["train_accuracy"] is None
    with pytest.raises(ValueError, match="task must be one of"):
        funnet.Loss("x", CE.value, CE.grad, task="ranking")


def test_non_threefry_keys_train(monkeypatch):
    x, y = blobs(30)
    for impl in ("rbg", "unsafe_rbg", "threefry2x32"):
        _, history = quiet_fit(MLP, init(MLP), (x, y), key=jax.random.key(0, impl=impl),
                               epochs=2)
        assert len(history) == 2


def test_make_step_refuses_out_of_range_labels_of_a_concrete_batch():
    x, y = blobs(8)
    tx = optax.sgd(0.1)
    step = make_step(MLP, CE, tx)
    state = TrainState.create(init(MLP), tx, jax.random.key(0))
    bad = y.copy()
    bad[3] = 7  # 3 classes: under jit one_hot would silently make this row a zero target
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\).*\[7\]"):
        step(state, (x, bad))
    step(state, (x, y))  # in range: fine


def test_fit_keeps_integer_inputs_for_an_embedding():
    # integer ids reach the model as integers (an Embedding refuses floats); bool inputs are
    # still made floats. The label is the first id: learnable from the embedding alone.
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, (64, 3)).astype(np.int32)
    y = ids[:, 0].copy()
    model = funnet.serial(funnet.Embedding(4, 4), funnet.Flatten, funnet.Dense(4))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 3))
    seen = []
    spy = funnet.layer(lambda key, shape: (shape, ()),
                       lambda p, x: (seen.append(x.dtype) or x, None),
                       lambda p, r, dy: ((), None), name="spy")
    trained, history = fit(funnet.serial(spy, model), ((), params), (ids, y), loss=CE,
                           optimizer=optax.adam(0.1), epochs=30, batch_size=16,
                           key=jax.random.key(0), valid=(ids, y), progress=False)
    assert seen and all(d == np.int32 for d in seen)
    assert history[-1]["train_accuracy"] == 1.0 and history[-1]["valid_accuracy"] == 1.0
    assert evaluate(model, trained[1], (ids, y), loss=CE)["accuracy"] == 1.0
    assert train.inputs.as_inputs(np.array([True, False])).dtype == jnp.result_type(float)
    assert train.inputs.as_inputs(np.array([1, 2], np.uint8)).dtype == np.uint8
# --- found by the mutation review (h-mut11) -----------------------------------------------


def test_binary_accuracy_thresholds_the_logit_at_zero():
    # kills: a binary loss scored by arg-max (one logit: every row "correct", accuracy 1.0)
    net = funnet.Dense(1)
    params = {"W": jnp.ones((1, 1)), "b": jnp.zeros(1)}  # the logit is x itself
    x = jnp.array([[2.0], [-1.0], [0.5], [-3.0]])
    y = jnp.array([[1.0], [1.0], [0.0], [0.0]])  # rows 0 and 3 right, rows 1 and 2 wrong
    bce = funnet.binary_cross_entropy
    assert evaluate(net, params, (x, y), loss=bce)["accuracy"] == 0.5
    tx = optax.sgd(0.0)
    _, metrics = make_step(net, bce, tx)(TrainState.create(params, tx, jax.random.key(0)), (x, y))
    assert float(metrics["accuracy"]) == 0.5


def test_a_plain_function_with_integer_labels_gets_an_accuracy():
    # kills: accuracy only for a Loss that declares a task (evaluate's docstring: a plain
    # function gets one for integer labels)
    x, y = blobs(20)
    params = init(MLP)
    plain = lambda out, t: CE(out, t)
    got = evaluate(MLP, params, (x, y), loss=plain)
    ref = evaluate(MLP, params, (x, y), loss=CE)
    np.testing.assert_allclose(got["accuracy"], ref["accuracy"], rtol=1e-12)
    _, history = quiet_fit(MLP, params, (x, y), loss=plain, epochs=1)
    assert history[0]["train_accuracy"] is not None


def test_make_step_advances_the_key():
    # kills: make_step returning the old key (every step the same dropout mask); the older
    # check compared a typed key with a raw one, which is never equal
    tx = optax.sgd(0.0)
    model = funnet.serial(funnet.Dense(8), funnet.Dropout(0.5), funnet.Dense(3))
    state = TrainState.create(init(model), tx, jax.random.key(0))
    step = make_step(model, CE, tx)
    x, y = blobs(16)
    new, first = step(state, (x, y))
    assert np.array_equal(jax.random.key_data(new.key),
                          jax.random.key_data(jax.random.split(state.key)[0]))
    _, second = step(new, (x, y))  # lr 0: only the dropout mask differs
    assert float(first["loss"]) != float(second["loss"])


@pytest.mark.parametrize("label", [3, -1])
def test_make_step_refuses_the_first_label_past_either_end(label):
    # kills: the range check off by one (label k accepted) or blind to negative labels
    x, y = blobs(8)
    tx = optax.sgd(0.1)
    step = make_step(MLP, CE, tx)
    state = TrainState.create(init(MLP), tx, jax.random.key(0))
    bad = y.copy()
    bad[5] = label
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, 3\).*\[{label}\]"):
        step(state, (x, bad))


def test_fit_is_sgd_over_the_batches_of_the_documented_shuffle():
    # kills: another shuffle key (e.g. the next epoch's key reused), batches in another order.
    # The epoch splits its key into (next key, shuffle key, one key per step): the same
    # updates by make_step in that order give the same params, bit for bit
    x, y = blobs(32)
    model, tx = mlp(), optax.sgd(0.3)
    params = init(model)
    got, _ = quiet_fit(model, params, (x, y), optimizer=tx, epochs=1, batch_size=8,
                       key=jax.random.key(5))
    keys = jax.random.split(jax.random.key(5), 4 + 2)
    order = np.asarray(train.shuffle(keys[1], 32))
    step = make_step(model, CE, tx)  # no dropout: the step keys do not matter
    state = TrainState.create(params, tx, jax.random.key(0))
    for i in range(4):
        rows = order[8 * i: 8 * i + 8]
        state, _ = step(state, (x[rows], y[rows]))
    assert_trees_close(got, state.params, rtol=1e-12, atol=1e-14)


def _poisoned_state_layer(at_step: int):
    """An identity layer whose state turns NaN in training from update ``at_step`` on."""

    def init_fn(key, shape):
        return shape, (), {"n": jnp.zeros(()), "v": jnp.zeros(())}

    def apply_fn(params, state, x, *, train=False):
        if not train:
            return x, state
        n = state["n"] + 1
        return x, {"n": n, "v": jnp.where(n > at_step, jnp.nan, 0.0)}

    return funnet.layer(init_fn, apply=apply_fn, stateful=True, name="Poison")


def test_a_non_finite_model_state_alone_stops_fit_at_its_step():
    # kills: the epoch's finiteness check (fast path or per-step guard) leaving out the
    # model state: NaN running statistics with finite params and loss trained on silently
    x, y = blobs(32)
    model = funnet.serial(funnet.Dense(8), _poisoned_state_layer(at_step=1), funnet.Tanh,
                          funnet.Dense(3))
    _, params, state = model.init_with_state(jax.random.PRNGKey(0), (-1, 6))
    with pytest.raises(NonFiniteLossError, match=r"epoch 1, step 1 \(global step 1\)") as info:
        quiet_fit(model, params, (x, y), state=state, batch_size=8, epochs=2)
    good = info.value.last_good_state
    assert int(good.step) == 1
    chex.assert_tree_all_finite(good.model_state)


def test_early_stopping_min_delta_and_nan():
    # kills: min_delta added instead of subtracted; NaN counted as an improvement; from_json
    # leaving best_loss None
    es = funnet.EarlyStopping(patience=2, min_delta=0.1).update(1, valid_loss=1.0)
    small = es.update(2, valid_loss=0.95)  # lower, but by less than min_delta
    assert (small.best_epoch, small.bad_epochs, small.best_value) == (1, 1, 1.0)
    big = small.update(3, valid_loss=0.85)
    assert (big.best_epoch, big.bad_epochs) == (3, 0)
    first_nan = funnet.EarlyStopping(patience=1).update(1, valid_loss=float("nan"))
    assert first_nan.best_epoch is None and first_nan.should_stop
    later_nan = funnet.EarlyStopping(patience=1).update(1, valid_loss=0.5).update(
        2, valid_loss=float("nan"))
    assert later_nan.best_epoch == 1 and later_nan.should_stop
    for fresh in (funnet.EarlyStopping(), funnet.EarlyStopping(3, "valid_error")):
        assert funnet.EarlyStopping.from_json(fresh.to_json()) == fresh
        back = funnet.EarlyStopping.from_json(fresh.to_json())
        assert back.update(1, valid_loss=0.3, valid_accuracy=0.5).best_epoch == 1


def _worsening_valid(x, y):
    """Validation rows with shifted labels: training makes their loss rise from epoch 1."""
    return x[:12], (y[:12] + 1) % 3


def test_without_patience_the_last_params_return_even_when_an_earlier_epoch_was_best():
    # kills: the best epoch's params returned without patience
    x, y = blobs(40)
    valid = _worsening_valid(x, y)
    last, history = quiet_fit(MLP, init(MLP), (x, y), valid=valid, epochs=4)
    assert history.best_epoch < 4  # so the last params are not the best ones
    np.testing.assert_allclose(evaluate(MLP, last, valid, loss=CE)["loss"],
                               history[-1]["valid_loss"], rtol=1e-10)


def test_patience_returns_the_best_epochs_model_state_with_its_params():
    # kills: the best params returned with the last epoch's model state
    net, (params, state) = bn_net(), bn_init()
    x, y = blobs(40)
    valid = _worsening_valid(x, y)
    p, s, history = quiet_fit(net, params, (x, y), state=state, valid=valid, patience=2,
                              epochs=10)
    best = history.best_epoch
    assert best < len(history)
    np.testing.assert_allclose(evaluate(net, p, valid, loss=CE, state=s)["loss"],
                               history[best - 1]["valid_loss"], rtol=1e-10)


def test_a_batch_of_exactly_all_rows_gives_no_warning(recwarn):
    # kills: the cap warning for batch_size == number of rows
    x, y = blobs(12)
    quiet_fit(MLP, init(MLP), (x, y), batch_size=12, epochs=1)
    assert not [w for w in recwarn if "larger than" in str(w.message)]


def test_resume_with_a_non_threefry_key_is_bitwise(tmp_path):
    # kills: resume rebuilding the key with the default implementation
    x, y = blobs(32)
    model = funnet.serial(funnet.Dense(8), funnet.Dropout(0.3), funnet.Dense(3))
    params = init(model)
    kw = {"key": jax.random.key(4, impl="rbg"), "batch_size": 16}
    full, _ = quiet_fit(model, params, (x, y), epochs=2, **kw)
    quiet_fit(model, params, (x, y), epochs=1, checkpoint=tmp_path, **kw)
    resumed, _ = quiet_fit(model, params, (x, y), epochs=2, checkpoint=tmp_path, resume=True,
                           **kw)
    assert leaves_equal(resumed, full)


def test_early_stopping_saves_a_checkpoint_between_checkpoint_every(tmp_path):
    # kills: no checkpoint when early stopping ends the run off the checkpoint_every grid
    x, y = blobs(40)
    _, history = quiet_fit(MLP, init(MLP), (x, y), valid=_worsening_valid(x, y), patience=1,
                           epochs=20, checkpoint=tmp_path, checkpoint_every=100)
    assert history.stopped_early and len(history) < 20
    assert checkpoint.latest_step(tmp_path) == len(history)


@pytest.mark.parametrize("change", [{"l2": 0.01}, {"grad": "hand"}, {"patience": 3},
                                    {"monitor": "valid_error"}, {"valid": None, "patience": None}])
def test_resume_refuses_every_other_configuration(tmp_path, change):
    # kills: a configuration field left out of the resume comparison
    x, y = blobs(20)
    kw = {"valid": (x[:5], y[:5]), "patience": 2, "epochs": 1}
    quiet_fit(MLP, init(MLP), (x, y), checkpoint=tmp_path, **kw)
    name = next(iter(change))
    with pytest.raises(ValueError, match=rf"different fit: .*{name}="):
        quiet_fit(MLP, init(MLP), (x, y), checkpoint=tmp_path, resume=True,
                  **{**kw, "epochs": 2, **change})


def test_negative_int64_labels_beyond_int32_are_refused_not_wrapped():
    # kills: the int32 range check looking at the maximum only (-2**32 would wrap to 0)
    x, _ = blobs(8)
    y = np.array([0, 1, 2, 0, 1, 2, 0, -2**32], dtype=np.int64)
    with pytest.raises(ValueError, match=r"train\.y: label -4294967296 does not fit in int32"):
        quiet_fit(MLP, init(MLP), (x, y), epochs=1)


def test_sequence_accuracy_counts_each_step_of_a_row():
    # kills: a row of a sequence scored all-or-nothing instead of by its fraction of right steps
    x = jnp.array([[[5.0, 0, 0], [5.0, 0, 0]], [[0, 5.0, 0], [0, 0, 5.0]]])  # logits [2, 2, 3]
    y = jnp.array([[0, 1], [1, 2]], jnp.int32)  # row 0: one of two steps right; row 1: both
    assert evaluate(funnet.Identity, (), (x, y), loss=CE)["accuracy"] == 0.75


def _running_sum_layer():
    """A stateful layer whose state is one bare array (a valid pytree), not a container."""

    def init_fn(key, shape):
        return shape, {"w": jnp.ones(shape[-1])}, jnp.zeros(shape[-1])

    def apply_fn(params, state, x, *, train=False):
        return x * params["w"][None, :], state + (jnp.mean(x, axis=0) if train else 0.0)

    return funnet.layer(init_fn, apply=apply_fn, stateful=True, name="RunningSum")


def test_a_model_state_that_is_one_array_trains_and_evaluates():
    net = _running_sum_layer()
    _, params, state = net.init_with_state(jax.random.PRNGKey(0), (-1, 3))
    x, t = np.ones((4, 3)), np.zeros((4, 3))
    tx = optax.sgd(0.1)
    new, _ = make_step(net, funnet.mse, tx)(
        TrainState.create(params, tx, jax.random.key(0), model_state=state), (x, t))
    np.testing.assert_allclose(new.model_state, np.ones(3))
    evaluate(net, params, (x, t), loss=funnet.mse, state=state)
    predict(net, params, x, state=state)
    quiet_fit(net, params, (x, t), state=state, loss=funnet.mse, batch_size=2, epochs=1)


def _masked_sequences(n: int = 37, t: int = 6, vocab: int = 5, seed: int = 0):
    """Ids ``[n, t]`` of random lengths, their ``[n, t]`` bool mask, the parity of each
    sequence's last real id as the label, and the ids with every padding step changed."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (n, t)).astype(np.int32)
    lengths = rng.integers(1, t + 1, n)
    mask = np.arange(t)[None] < lengths[:, None]
    y = (ids[np.arange(n), lengths - 1] % 2).astype(np.int32)
    garbage = np.where(mask, ids, (ids + 1 + rng.integers(0, vocab - 1, (n, t))) % vocab)
    return ids, mask, y, garbage.astype(np.int32)


def _sequence_model(t: int = 6, vocab: int = 5):
    net = funnet.serial(funnet.parallel(funnet.Embedding(vocab, 4), funnet.Identity),
                        funnet.GRU(8, return_sequences=False), funnet.Dense(2))
    _, params = net.init(jax.random.PRNGKey(0), ((-1, t), (-1, t)))
    return net, params


def test_fit_takes_a_tuple_of_inputs_shuffled_and_batched_together():
    """``x = (ids, mask)``: the rows of both arrays travel together through the shuffle and
    the padded last batch. Changing the ids on the padding steps changes nothing (they are
    masked), while a mask shuffled apart from its ids would expose them; hand == reverse."""
    ids, mask, y, garbage = _masked_sequences()
    net, params = _sequence_model()
    kw = {"loss": CE, "optimizer": optax.adam(0.01), "epochs": 2, "batch_size": 8,
              "key": jax.random.key(1), "progress": False}
    runs = {(g, name): fit(net, params, ((x, mask), y), grad=g, **kw)
            for g in ("reverse", "hand") for name, x in (("ids", ids), ("garbage", garbage))}
    ref, ref_hist = runs["reverse", "ids"]
    assert ref_hist[-1]["train_loss"] < ref_hist[0]["train_loss"]
    for key, (p, hist) in runs.items():
        assert_trees_close(p, ref, rtol=1e-10, atol=1e-12)
        assert [r["train_loss"] for r in hist] == pytest.approx(
            [r["train_loss"] for r in ref_hist], rel=1e-10), key
    changed = fit(net, params, ((garbage, np.ones_like(mask)), y), **kw)[0]
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                                            changed, ref))) > 1e-3


def test_evaluate_and_predict_take_a_tuple_of_inputs_in_chunks():
    ids, mask, y, _ = _masked_sequences()
    net, params = _sequence_model()
    x = (jnp.asarray(ids), jnp.asarray(mask, jnp.float64))
    whole = net.apply(params, x)
    np.testing.assert_allclose(predict(net, params, (ids, mask), batch_size=10), whole,
                               rtol=1e-12, atol=1e-12)
    ref = {"loss": float(CE(whole, jnp.asarray(y))),
           "accuracy": float(np.mean(np.argmax(whole, -1) == y))}
    got = evaluate(net, params, ((ids, mask), y), loss=CE, batch_size=10)
    assert got == pytest.approx(ref, rel=1e-12)


@pytest.mark.parametrize("bad, message", [
    (lambda ids, mask: (ids, mask[:-1]),
     r"train\.x\[1\] has 36 rows but train\.x\[0\] has 37"),
    (lambda ids, mask: (ids, np.where(mask, np.nan, 0.0)),
     r"train\.x\[1\]: \d+ non-finite values"),
])
def test_a_bad_array_of_a_tuple_of_inputs_is_named_before_training(bad, message):
    ids, mask, y, _ = _masked_sequences()
    net, params = _sequence_model()
    with pytest.raises(ValueError, match=message):
        fit(net, params, (bad(ids, mask), y), loss=CE, optimizer=optax.adam(0.01),
            epochs=1, batch_size=8, key=jax.random.key(1), progress=False)


# --- Embedding ids are checked on the concrete data (fit, evaluate, predict) -------------------

_FIT = {"loss": CE, "optimizer": optax.adam(0.01), "epochs": 1, "batch_size": 8,
        "key": jax.random.key(1), "progress": False}


def test_out_of_range_embedding_ids_in_a_tuple_of_inputs_are_named_before_training():
    """Padding ids of -1 under a mask (or any id outside 0 … V-1) index no row of the table:
    under jit they give NaN rows, so fit stopped with a NonFiniteLossError advising a lower
    learning rate, and predict returned whatever the model made of them. Now the concrete
    data is checked first: a ValueError naming the array, the layer, the id and its index."""
    ids, mask, y, _ = _masked_sequences()
    net, params = _sequence_model()
    padded = np.where(mask, ids, -1).astype(np.int32)
    row, step = np.argwhere(~mask)[0]
    message = (rf"train\.x\[0\]: id -1 at index \({row}, {step}\) is out of range for "
               r"Embedding\(5, 4\) \(ids 0 … 4\)")
    with pytest.raises(ValueError, match=message) as info:
        fit(net, params, ((padded, mask), y), grad="hand", **_FIT)
    assert not isinstance(info.value, NonFiniteLossError)
    assert "e.g. 0" in str(info.value)  # what to pad with
    bad = ids.copy()
    bad[5, 0] = 5
    with pytest.raises(ValueError, match=r"valid\.x\[0\]: id 5 at index \(5, 0\)"):
        fit(net, params, ((ids, mask), y), valid=((bad, mask), y), **_FIT)
    with pytest.raises(ValueError, match=r"data\.x\[0\]: id 5 at index \(5, 0\)"):
        evaluate(net, params, ((bad, mask), y), loss=CE)
    with pytest.raises(ValueError, match=r"predict\.x\[0\]: id 5 at index \(5, 0\)"):
        predict(net, params, (bad, mask))
    fit(net, params, ((np.where(mask, ids, 0).astype(np.int32), mask), y), **_FIT)  # pad 0


def test_out_of_range_embedding_ids_of_a_single_input_are_named_before_training():
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 4, (16, 3)).astype(np.int32)
    ids[3, 1], ids[9, 2] = 9, -2
    model = funnet.serial(funnet.Embedding(4, 4), funnet.Flatten, funnet.Dense(4))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 3))
    with pytest.raises(ValueError, match=r"train\.x: id 9 at index \(3, 1\) is out of range "
                                         r"for Embedding\(4, 4\) \(ids 0 … 3\); 2 of 48 ids "
                                         r"are out of range: -2, 9"):
        fit(model, params, (ids, ids[:, 0] % 4), **_FIT)


def test_input_checks_follow_serial_to_its_first_layer_and_parallel_to_each_part():
    """The contract's host-side hook (Layer.check_inputs): ``serial`` hands the inputs to
    its first layer, ``parallel`` each part to its layer with the part's label; layers
    without a check (Dense, Identity, a stax pair) accept anything."""
    seen = []

    def init(key, shape):
        return shape, ()

    probe = funnet.layer(init, lambda p, x: (x, None), lambda p, r, dy: ((), dy),
                         name="probe", input_check=lambda x, label: seen.append(
                             (label, np.shape(x))))
    net = funnet.serial(funnet.parallel(funnet.Identity, probe, probe), funnet.FanInSum,
                        probe)
    net.check_inputs((np.ones((2, 3)), np.ones((2, 4)), np.ones((2, 5))), "train.x")
    assert seen == [("train.x[1]", (2, 4)), ("train.x[2]", (2, 5))]
    funnet.Dense(2).check_inputs(np.ones(3), "x")  # no check: nothing happens
    funnet.serial(funnet.Dense(2), probe).check_inputs(np.ones(3), "x")  # not the first
    assert len(seen) == 2
