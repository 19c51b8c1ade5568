"""The digits CNN trained by funnet, flax linen, haiku and equinox, each in its own style.

The network (input ``[N, 8, 8, 1]``, the embedded digits as images)::

    Conv(16, 3×3, SAME) – BatchNorm – ReLU – MaxPool(2)
    Conv(32, 3×3, SAME) – BatchNorm – ReLU – MaxPool(2) – Flatten – Dense(10)

BatchNorm: momentum 0.9 (weight of the old running statistic), ε = 1e-5, batch statistics
in training. Every peer starts from one numpy init (:func:`cnn_init`) converted into its
own parameter structure, checked against the structure and shapes of the library's own
init; loss: softmax cross-entropy (mean over the batch); optimiser: the optax
transformation given. Each peer handles BatchNorm's running statistics its own way (flax
``batch_stats`` as a mutable collection, haiku ``transform_with_state``, equinox
``eqx.nn.State``, funnet ``TrainState.model_state``). Interface (as ``_peers.StepPeer``):

- ``step(x, y)``: one optimiser step on numpy batches ``x [B, 8, 8, 1]``, ``y [B]``;
  returns the batch loss before the update (a device scalar, not fetched);
- ``epoch(xb, yb)``: a Python loop of steps; returns the list of losses;
- ``logits(x)``: outputs in evaluation mode (running statistics), for the accuracy check.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._peers import LossesPeer, xent

CHANNELS = (16, 32)
CLASSES = 10
MOMENTUM = 0.9
EPSILON = 1e-5
IMAGE = (8, 8, 1)
FLAT = 2 * 2 * CHANNELS[-1]  # 8×8 pooled twice by 2: 2×2×32 = 128

Init = dict[str, np.ndarray]


def cnn_init(*, seed: int = 0) -> Init:
    """The shared numpy init: ``W ~ N(0, 1/fan_in)`` (``fan_in = 3·3·C_in``, or 128 for the
    dense layer), ``b = 0``, BatchNorm scale 1 and offset 0. Layouts are funnet's (and
    flax's, haiku's): conv ``W [3, 3, C_in, C_out]``, dense ``W [128, 10]`` whose rows are
    the flattened ``[2, 2, 32]`` (row-major, channels last)."""
    rng = np.random.default_rng(seed)
    out: Init = {}
    c_in = IMAGE[-1]
    for i, c in enumerate(CHANNELS, start=1):
        fan_in = 9 * c_in
        out[f"conv{i}_W"] = (rng.standard_normal((3, 3, c_in, c)) / np.sqrt(fan_in)
                             ).astype(np.float32)
        out[f"conv{i}_b"] = np.zeros(c, np.float32)
        out[f"bn{i}_scale"] = np.ones(c, np.float32)
        out[f"bn{i}_offset"] = np.zeros(c, np.float32)
        c_in = c
    out["dense_W"] = (rng.standard_normal((FLAT, CLASSES)) / np.sqrt(FLAT)).astype(np.float32)
    out["dense_b"] = np.zeros(CLASSES, np.float32)
    return out


def _replace(name: str, ref: Any, built: Any) -> Any:
    """``built`` if its structure and shapes equal those of the library's own init ``ref``,
    else a ValueError: API drift shows up as an error, never as a wrong benchmark."""
    want, got = jax.tree.map(jnp.shape, ref), jax.tree.map(jnp.shape, built)
    if jax.tree.structure(ref) != jax.tree.structure(built) or want != got:
        raise ValueError(f"{name}: library init has {want}, benchmark built {got}")
    return built


class CnnPeer(LossesPeer):
    """Base: an epoch is a Python loop of jitted steps; losses kept on the device."""

    def logits(self, x: Any) -> Any:
        raise NotImplementedError

    def compiled_text(self, x: Any, y: Any) -> str:
        """The optimised HLO of the compiled step for batches shaped like ``x``, ``y``."""
        raise NotImplementedError


# ----------------------------------------------------------------------- flax linen


class Linen(CnnPeer):
    """``flax.linen`` module, ``TrainState`` with a ``batch_stats`` field, per-step jit,
    ``apply(..., train=True, mutable=["batch_stats"])``."""

    name = "flax linen (per-step)"

    def __init__(self, init: Init, tx: optax.GradientTransformation, *,
                 fast_variance: bool = True):
        import flax.linen as nn

        if not fast_variance:
            self.name = "flax linen, two-pass variance (use_fast_variance=False)"
        from flax.training import train_state

        class CNN(nn.Module):
            @nn.compact
            def __call__(self, x, train: bool):
                for c in CHANNELS:
                    x = nn.Conv(c, (3, 3), padding="SAME")(x)
                    x = nn.BatchNorm(use_running_average=not train, momentum=MOMENTUM,
                                     epsilon=EPSILON, use_fast_variance=fast_variance)(x)
                    x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2), padding="VALID")
                x = x.reshape((x.shape[0], -1))
                return nn.Dense(CLASSES)(x)

        class TrainState(train_state.TrainState):
            batch_stats: Any

        model = CNN()
        ref = model.init(jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE)), train=False)
        params = {"Dense_0": {"kernel": init["dense_W"], "bias": init["dense_b"]}}
        stats = {}
        for i in range(len(CHANNELS)):
            params[f"Conv_{i}"] = {"kernel": init[f"conv{i + 1}_W"],
                                   "bias": init[f"conv{i + 1}_b"]}
            params[f"BatchNorm_{i}"] = {"scale": init[f"bn{i + 1}_scale"],
                                        "bias": init[f"bn{i + 1}_offset"]}
            stats[f"BatchNorm_{i}"] = {"mean": np.zeros(CHANNELS[i], np.float32),
                                       "var": np.ones(CHANNELS[i], np.float32)}
        params = jax.tree.map(jnp.asarray, _replace(self.name, ref["params"], params))
        stats = jax.tree.map(jnp.asarray, _replace(self.name, ref["batch_stats"], stats))
        self.state = TrainState.create(apply_fn=model.apply, params=params, tx=tx,
                                       batch_stats=stats)

        @jax.jit
        def step(state, x, y):
            def loss_fn(params):
                logits, updates = state.apply_fn(
                    {"params": params, "batch_stats": state.batch_stats}, x, train=True,
                    mutable=["batch_stats"])
                return xent(logits, y), updates

            (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
            state = state.apply_gradients(grads=grads)
            return state.replace(batch_stats=updates["batch_stats"]), loss

        self._step = step

    def step(self, x, y):
        self.state, loss = self._step(self.state, x, y)
        return loss

    def logits(self, x):
        s = self.state
        return s.apply_fn({"params": s.params, "batch_stats": s.batch_stats},
                          jnp.asarray(x), train=False)

    def compiled_text(self, x, y):
        return self._step.lower(self.state, x, y).compile().as_text()


# ----------------------------------------------------------------------------- haiku


class Haiku(CnnPeer):
    """``hk.transform_with_state`` (``hk.Conv2D``, ``hk.BatchNorm``, ``hk.MaxPool``,
    ``hk.Linear``) + optax, per-step ``jax.jit`` over ``(params, state, opt_state)``."""

    name = "haiku + optax (per-step)"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        import haiku as hk

        def forward(x, is_training):
            for c in CHANNELS:
                x = hk.Conv2D(c, 3, padding="SAME")(x)
                x = hk.BatchNorm(True, True, decay_rate=MOMENTUM, eps=EPSILON)(x, is_training)
                x = hk.MaxPool(2, 2, "VALID")(jax.nn.relu(x))
            return hk.Linear(CLASSES)(hk.Flatten()(x))

        self.model = hk.without_apply_rng(hk.transform_with_state(forward))
        ref, self.state = self.model.init(jax.random.PRNGKey(0), jnp.zeros((1, *IMAGE)), True)
        params = {"linear": {"w": init["dense_W"], "b": init["dense_b"]}}
        for i, c in enumerate(CHANNELS):
            sfx = f"_{i}" if i else ""
            params[f"conv2_d{sfx}"] = {"w": init[f"conv{i + 1}_W"], "b": init[f"conv{i + 1}_b"]}
            params[f"batch_norm{sfx}"] = {  # haiku keeps them as [1, 1, 1, C]
                "scale": init[f"bn{i + 1}_scale"].reshape(1, 1, 1, c),
                "offset": init[f"bn{i + 1}_offset"].reshape(1, 1, 1, c)}
        self.params = jax.tree.map(jnp.asarray, _replace(self.name, ref, params))
        self.opt_state = tx.init(self.params)
        apply = self.model.apply

        @jax.jit
        def step(params, state, opt_state, x, y):
            def loss_fn(params):
                logits, state_ = apply(params, state, x, True)
                return xent(logits, y), state_

            (loss, state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), state, opt_state, loss

        self._step = step

    def step(self, x, y):
        self.params, self.state, self.opt_state, loss = self._step(
            self.params, self.state, self.opt_state, x, y)
        return loss

    def logits(self, x):
        return self.model.apply(self.params, self.state, jnp.asarray(x), False)[0]

    def compiled_text(self, x, y):
        return self._step.lower(self.params, self.state, self.opt_state, x, y).compile(
        ).as_text()


# --------------------------------------------------------------------------- equinox


class Equinox(CnnPeer):
    """``eqx.nn.Conv2d``/``BatchNorm(mode="batch")``/``MaxPool2d``/``Linear`` on one sample
    (channels first), ``jax.vmap(..., axis_name="batch")`` over the batch with the
    ``eqx.nn.State`` broadcast, ``@eqx.filter_jit`` step."""

    name = "equinox (filter_jit step)"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        import equinox as eqx

        class CNN(eqx.Module):
            convs: list
            norms: list
            pool: eqx.nn.MaxPool2d
            dense: eqx.nn.Linear

            def __init__(self, key):
                keys = jax.random.split(key, len(CHANNELS) + 1)
                c_in, self.convs, self.norms = IMAGE[-1], [], []
                for c, k in zip(CHANNELS, keys, strict=False):
                    self.convs.append(eqx.nn.Conv2d(c_in, c, 3, padding="SAME", key=k))
                    self.norms.append(eqx.nn.BatchNorm(c, axis_name="batch", eps=EPSILON,
                                                       momentum=MOMENTUM, mode="batch"))
                    c_in = c
                self.pool = eqx.nn.MaxPool2d(2, stride=2)
                self.dense = eqx.nn.Linear(FLAT, CLASSES, key=keys[-1])

            def __call__(self, x, state):  # x [8, 8, 1]: one sample, channels last
                x = jnp.transpose(x, (2, 0, 1))  # equinox convolutions are channels first
                for conv, norm in zip(self.convs, self.norms, strict=True):
                    x, state = norm(conv(x), state)
                    x = self.pool(jax.nn.relu(x))
                return self.dense(x.reshape(-1)), state  # flattened [C, H, W]

        model, self.mstate = eqx.nn.make_with_state(CNN)(jax.random.PRNGKey(0))
        new = []
        for i, c in enumerate(CHANNELS, start=1):
            new += [jnp.asarray(np.transpose(init[f"conv{i}_W"], (3, 2, 0, 1))),  # OIHW
                    jnp.asarray(init[f"conv{i}_b"].reshape(c, 1, 1)),
                    jnp.asarray(init[f"bn{i}_scale"]), jnp.asarray(init[f"bn{i}_offset"])]
        # funnet's flattened row (h·2 + w)·32 + c is equinox's column c·4 + h·2 + w
        dense_w = init["dense_W"].reshape(2, 2, CHANNELS[-1], CLASSES).transpose(3, 2, 0, 1)
        new += [jnp.asarray(dense_w.reshape(CLASSES, FLAT)), jnp.asarray(init["dense_b"])]

        def where(m):
            out = []
            for conv, norm in zip(m.convs, m.norms, strict=True):
                out += [conv.weight, conv.bias, norm.weight, norm.bias]
            return [*out, m.dense.weight, m.dense.bias]

        _replace(self.name, where(model), new)
        self.model = eqx.tree_at(where, model, new)
        self.opt_state = tx.init(eqx.filter(self.model, eqx.is_array))
        self._eqx = eqx

        def batched(model, state, x):
            return jax.vmap(model, axis_name="batch", in_axes=(0, None),
                            out_axes=(0, None))(x, state)

        self._batched = batched

        @eqx.filter_jit
        def step(model, state, opt_state, x, y):
            def loss_fn(model, state):
                logits, state = batched(model, state, x)
                return xent(logits, y), state

            (loss, state), grads = eqx.filter_value_and_grad(loss_fn, has_aux=True)(
                model, state)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), state, opt_state, loss

        self._step = step

    def step(self, x, y):
        self.model, self.mstate, self.opt_state, loss = self._step(
            self.model, self.mstate, self.opt_state, x, y)
        return loss

    def logits(self, x):
        model = self._eqx.nn.inference_mode(self.model)
        return self._batched(model, self.mstate, jnp.asarray(x))[0]

    def compiled_text(self, x, y):
        compiled = self._step.lower(self.model, self.mstate, self.opt_state, x, y).compile()
        return compiled.compiled.as_text()  # equinox's Compiled wraps jax's


# --------------------------------------------------------------------------- funnet


def funnet_cnn(fn: ModuleType) -> Any:
    """The CNN as ``fn.serial`` of funnet layers."""
    layers: list[Any] = []
    for c in CHANNELS:
        layers += [fn.Conv(c, (3, 3), padding="SAME"),
                   fn.BatchNorm(momentum=MOMENTUM, epsilon=EPSILON), fn.Relu, fn.MaxPool(2)]
    return fn.serial(*layers, fn.Flatten, fn.Dense(CLASSES))


def funnet_cnn_params(fn: ModuleType, model: Any, init: Init) -> tuple[Any, Any]:
    """The shared init as funnet ``(params, state)``, checked against ``init_with_state``."""
    _, ref_params, ref_state = model.init_with_state(jax.random.PRNGKey(0), (-1, *IMAGE))
    params: list[Any] = []
    state: list[Any] = []
    for i, c in enumerate(CHANNELS, start=1):
        params += [{"W": init[f"conv{i}_W"], "b": init[f"conv{i}_b"]},
                   {"scale": init[f"bn{i}_scale"], "offset": init[f"bn{i}_offset"]}, (), ()]
        state += [(), {"mean": np.zeros(c, np.float32), "var": np.ones(c, np.float32)},
                  (), ()]
    params += [(), {"W": init["dense_W"], "b": init["dense_b"]}]
    state += [(), ()]
    name = "funnet"
    return (jax.tree.map(jnp.asarray, _replace(name, ref_params, tuple(params))),
            jax.tree.map(jnp.asarray, _replace(name, ref_state, tuple(state))))


class Funnet(CnnPeer):
    """``fn.make_step(model, fn.softmax_cross_entropy, tx, grad=...)`` on
    ``fn.TrainState.create(params, tx, key, model_state=state)``."""

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation, *,
                 grad: str):
        self.name = f"funnet make_step, grad={grad!r}"
        self.model = funnet_cnn(fn)
        params, state = funnet_cnn_params(fn, self.model, init)
        self._step = fn.make_step(self.model, fn.softmax_cross_entropy, tx, grad=grad)
        self.state = fn.TrainState.create(params, tx, jax.random.key(0), model_state=state)

    def step(self, x, y):
        self.state, metrics = self._step(self.state, (x, y))
        return metrics["loss"]

    def logits(self, x):
        s = self.state
        return self.model.apply_with_state(s.params, s.model_state, jnp.asarray(x))[0]

    def compiled_text(self, x, y):
        return jitted_program(self._step).lower(self.state, (x, y)).compile().as_text()


def jitted_program(step: Callable) -> Any:
    """The ``jax.jit`` function inside ``make_step``'s wrapper (found in its closure), or
    ``step`` itself if it is one; an AttributeError if ``make_step`` changed shape."""
    if hasattr(step, "lower"):
        return step
    import inspect

    jitted = inspect.getclosurevars(step).nonlocals.get("jitted")
    if not hasattr(jitted, "lower"):
        raise AttributeError("make_step no longer wraps a jitted function named 'jitted'")
    return jitted


class FunnetInner(Funnet):
    """The compiled program of ``make_step`` called directly, without the wrapper's per-call
    host work (the stateful-model and integer-label checks): a profiling reference. It
    reaches the jitted step through the wrapper's closure, so a changed ``make_step`` makes
    it raise (and the table says "unavailable") instead of timing something else."""

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation):
        super().__init__(fn, init, tx, grad="reverse")
        self.name = "funnet make_step's jitted program alone (no host checks)"
        self._step = jitted_program(self._step)


class FunnetPlain(CnnPeer):
    """funnet's model (``apply_with_state``) in a plain ``jax.value_and_grad`` + optax step,
    jitted, as the peers write theirs: no key split, no accuracy, no host checks; a
    profiling reference that separates funnet's layers from ``make_step``."""

    name = "funnet layers in a plain jax.grad + optax step"

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation):
        self.model = funnet_cnn(fn)
        self.params, self.mstate = funnet_cnn_params(fn, self.model, init)
        self.opt_state = tx.init(self.params)
        model = self.model

        @jax.jit
        def step(params, mstate, opt_state, x, y):
            def loss_fn(params):
                logits, mstate_ = model.apply_with_state(params, mstate, x, train=True)
                return xent(logits, y), mstate_

            (loss, mstate), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), mstate, opt_state, loss

        self._step = step

    def step(self, x, y):
        self.params, self.mstate, self.opt_state, loss = self._step(
            self.params, self.mstate, self.opt_state, x, y)
        return loss

    def logits(self, x):
        return self.model.apply_with_state(self.params, self.mstate, jnp.asarray(x))[0]

    def compiled_text(self, x, y):
        return self._step.lower(self.params, self.mstate, self.opt_state, x, y).compile(
        ).as_text()


#: the non-funnet peers, in table order
PEERS: dict[str, Callable[[Init, optax.GradientTransformation], CnnPeer]] = {
    Linen.name: Linen,
    Haiku.name: Haiku,
    Equinox.name: Equinox,
}
