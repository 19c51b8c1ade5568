"""The same MLP trained by each library in its own idiomatic jitted style.

Every peer is built from one shared numpy init (``list[(W [in, out], b [out])]``),
converted into that library's parameter structure, uses softmax cross-entropy (mean over
the batch) and the optax transformation it is given. Interface:

- ``epoch(xb, yb)``: one pass over batches ``xb`` [nb, B, D], ``yb`` [nb, B] (numpy);
  returns an output to block on;
- ``step(x, y)`` (per-step peers only): one optimiser step;
- ``logits(x)``: the current model's outputs, for the accuracy check.

Activations are ReLU unless ``act`` is given (raw jax peers only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

Init = Sequence[tuple[np.ndarray, np.ndarray]]


def xent(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def hidden_sizes(init: Init) -> list[int]:
    return [w.shape[1] for w, _ in init]


class StepPeer:
    """Base of the per-step peers: an epoch is a Python loop of jitted steps."""

    kind = "per-step"
    name = "?"

    def step(self, x: Any, y: Any) -> Any:
        raise NotImplementedError

    def epoch(self, xb: np.ndarray, yb: np.ndarray) -> Any:
        out = None
        for i in range(len(xb)):
            out = self.step(xb[i], yb[i])
        return out


class LossesPeer(StepPeer):
    """A per-step peer whose epoch returns the list of its steps' losses (device scalars,
    not fetched), for the benchmarks that compare loss curves."""

    def epoch(self, xb: np.ndarray, yb: np.ndarray) -> list[Any]:
        return [self.step(xb[i], yb[i]) for i in range(len(xb))]


def optax_step(value_and_grad: Callable[[Any, Any, Any], Any],
               tx: optax.GradientTransformation) -> Any:
    """The jitted optax step ``(params, opt_state, x, y) -> (params, opt_state, loss)`` of
    ``value_and_grad(params, x, y) -> (loss, grads)``, as every peer that keeps raw params
    writes it."""

    @jax.jit
    def step(params, opt_state, x, y):
        loss, grads = value_and_grad(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


class OptaxStep:
    """Mixin of a peer holding ``params``, ``opt_state`` and :func:`optax_step`'s step."""

    def _setup(self, params: Any, tx: optax.GradientTransformation,
               loss_fn: Callable[[Any, Any, Any], Any] | None = None, *,
               value_and_grad: Callable[[Any, Any, Any], Any] | None = None) -> None:
        """Params, optimiser state and the step of ``loss_fn(params, x, y)`` (by
        ``jax.value_and_grad``) or of a given ``value_and_grad``."""
        self.params, self.opt_state = params, tx.init(params)
        self._step = optax_step(value_and_grad or jax.value_and_grad(loss_fn), tx)

    def step(self, x: Any, y: Any) -> Any:
        self.params, self.opt_state, loss = self._step(self.params, self.opt_state, x, y)
        return loss

    def lowered(self, x: Any, y: Any) -> Any:
        """The jitted step lowered for batches shaped like ``x``, ``y``."""
        return self._step.lower(self.params, self.opt_state, x, y)


# ---------------------------------------------------------------------------- raw jax


def raw_params(init: Init) -> list[dict[str, jax.Array]]:
    return [{"W": jnp.asarray(w), "b": jnp.asarray(b)} for w, b in init]


def raw_apply(params: Sequence[dict[str, jax.Array]], x: jax.Array,
              act: Callable[[jax.Array], jax.Array] = jax.nn.relu) -> jax.Array:
    """``act(x @ W + b)`` per hidden layer, affine output layer."""
    for layer in params[:-1]:
        x = act(x @ layer["W"] + layer["b"])
    return x @ params[-1]["W"] + params[-1]["b"]


class RawJax(OptaxStep, StepPeer):
    """jax + optax, ``@jax.jit`` on ``(params, opt_state, x, y) -> (params, opt_state, loss)``."""

    name = "raw jax + optax (per-step)"

    def __init__(self, init: Init, tx: optax.GradientTransformation, *,
                 act: Callable[[jax.Array], jax.Array] = jax.nn.relu):
        self.act = act
        self._setup(raw_params(init), tx, lambda p, x, y: xent(raw_apply(p, x, act), y))

    def logits(self, x):
        return raw_apply(self.params, jnp.asarray(x), self.act)


class RawScan:
    """jax + optax, one jitted ``lax.scan`` over the epoch's batches, state donated."""

    name = "raw jax lax.scan (epoch)"
    kind = "scan"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        params = raw_params(init)
        self.state = (params, tx.init(params))

        def body(state, batch):
            params, opt_state = state
            x, y = batch
            loss, grads = jax.value_and_grad(lambda p: xent(raw_apply(p, x), y))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        def epoch(state, xb, yb):
            return jax.lax.scan(body, state, (xb, yb))

        self._epoch = jax.jit(epoch, donate_argnums=0)

    def epoch(self, xb, yb):
        self.state, losses = self._epoch(self.state, xb, yb)
        return losses

    def logits(self, x):
        return raw_apply(self.state[0], jnp.asarray(x))


class RawScanResident:
    """jax + optax, one jitted ``lax.scan`` per epoch over data kept on the device: each step
    gathers its rows by index (what ``fn.fit`` does); only the permutation crosses over."""

    name = "raw jax lax.scan (data on device)"
    kind = "scan"

    def __init__(self, init: Init, tx: optax.GradientTransformation, x: np.ndarray,
                 y: np.ndarray, *, batch: int):
        params = raw_params(init)
        self.state = (params, tx.init(params))
        self.x, self.y = jax.device_put(jnp.asarray(x)), jax.device_put(jnp.asarray(y))
        nb = len(x) // batch

        def body(state, i, x, y):
            params, opt_state = state
            loss, grads = jax.value_and_grad(lambda p: xent(raw_apply(p, x[i]), y[i]))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        def epoch(state, x, y, perm):
            return jax.lax.scan(lambda s, i: body(s, i, x, y), state,
                                perm[: nb * batch].reshape(nb, batch))

        self._epoch = jax.jit(epoch, donate_argnums=0)

    def epoch_from(self, perm: np.ndarray) -> Any:
        self.state, losses = self._epoch(self.state, self.x, self.y,
                                         jnp.asarray(perm, jnp.int32))
        return losses

    def logits(self, x):
        return raw_apply(self.state[0], jnp.asarray(x))


# ------------------------------------------------------------------------------- stax


class Stax(OptaxStep, StepPeer):
    """``jax.example_libraries.stax.serial`` + optax, per-step ``jax.jit``."""

    name = "stax + optax (per-step)"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        from jax.example_libraries import stax

        layers: list[Any] = []
        for i, h in enumerate(hidden_sizes(init)):
            layers += [stax.Dense(h)] + ([stax.Relu] if i < len(init) - 1 else [])
        _, self.apply = stax.serial(*layers)
        params: list[Any] = []
        for i, (w, b) in enumerate(init):
            params += [(jnp.asarray(w), jnp.asarray(b))] + ([()] if i < len(init) - 1 else [])
        apply = self.apply
        self._setup(params, tx, lambda p, x, y: xent(apply(p, x), y))

    def logits(self, x):
        return self.apply(self.params, jnp.asarray(x))


# ----------------------------------------------------------------------------- haiku


class Haiku(OptaxStep, StepPeer):
    """``hk.transform`` of ``hk.nets.MLP`` + optax, per-step ``jax.jit``."""

    name = "haiku + optax (per-step)"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        import haiku as hk

        sizes = hidden_sizes(init)
        self.model = hk.without_apply_rng(
            hk.transform(lambda x: hk.nets.MLP(sizes, activation=jax.nn.relu)(x)))
        params = {f"mlp/~/linear_{i}": {"w": jnp.asarray(w), "b": jnp.asarray(b)}
                  for i, (w, b) in enumerate(init)}
        apply = self.model.apply
        self._setup(params, tx, lambda p, x, y: xent(apply(p, x), y))

    def logits(self, x):
        return self.model.apply(self.params, jnp.asarray(x))


# ----------------------------------------------------------------------- flax linen


class Linen(StepPeer):
    """``flax.linen`` module + ``flax.training.train_state.TrainState``, per-step jit."""

    name = "flax linen (per-step)"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        import flax.linen as nn
        from flax.training import train_state

        sizes = hidden_sizes(init)

        class MLP(nn.Module):
            @nn.compact
            def __call__(self, x):
                for h in sizes[:-1]:
                    x = nn.relu(nn.Dense(h)(x))
                return nn.Dense(sizes[-1])(x)

        params = {f"Dense_{i}": {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}
                  for i, (w, b) in enumerate(init)}
        self.state = train_state.TrainState.create(apply_fn=MLP().apply, params=params, tx=tx)

        self._step = train_state_step(xent)

    def step(self, x, y):
        self.state, loss = self._step(self.state, x, y)
        return loss

    def logits(self, x):
        return self.state.apply_fn({"params": self.state.params}, jnp.asarray(x))


def train_state_step(loss: Callable) -> Callable:
    """A flax ``TrainState`` step, jitted: ``(state, x, y) -> (state', loss)`` with
    ``loss(apply_fn({"params": p}, x), y)`` differentiated by ``jax.value_and_grad``
    (the linen peers of the digits, LSTM and attention cases)."""

    @jax.jit
    def step(state, x, y):
        def loss_fn(params):
            return loss(state.apply_fn({"params": params}, x), y)

        value, grads = jax.value_and_grad(loss_fn)(state.params)
        return state.apply_gradients(grads=grads), value

    return step


# ------------------------------------------------------------------------ flax nnx


def _constant(value: np.ndarray) -> Callable[..., jax.Array]:
    def init(key, shape, dtype=jnp.float32):
        if tuple(shape) != value.shape:
            raise ValueError(f"initialiser shape {tuple(shape)} != {value.shape}")
        return jnp.asarray(value, dtype)

    return init


class Nnx(StepPeer):
    """``flax.nnx`` module + ``nnx.Optimizer``, ``@nnx.jit`` step (the documented style)."""

    name = "flax nnx (nnx.jit step)"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        from flax import nnx

        class MLP(nnx.Module):
            def __init__(self, rngs: nnx.Rngs):
                self.layers = getattr(nnx, "List", list)([
                    nnx.Linear(w.shape[0], w.shape[1], kernel_init=_constant(w),
                               bias_init=_constant(b), rngs=rngs)
                    for w, b in init
                ])

            def __call__(self, x):
                for layer in self.layers[:-1]:
                    x = nnx.relu(layer(x))
                return self.layers[-1](x)

        self.model = MLP(nnx.Rngs(0))
        self.optimizer = nnx.Optimizer(self.model, tx, wrt=nnx.Param)

        @nnx.jit
        def step(model, optimizer, x, y):
            def loss_fn(model):
                return xent(model(x), y)

            loss, grads = nnx.value_and_grad(loss_fn)(model)
            optimizer.update(model, grads)
            return loss

        self._step = step

    def step(self, x, y):
        return self._step(self.model, self.optimizer, x, y)

    def logits(self, x):
        return self.model(jnp.asarray(x))


# --------------------------------------------------------------------------- equinox


class Equinox(StepPeer):
    """``eqx.nn.MLP`` (vmapped over the batch) + optax, ``@eqx.filter_jit`` step."""

    name = "equinox (filter_jit step)"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        import equinox as eqx

        sizes = hidden_sizes(init)
        if len(set(sizes[:-1])) != 1:
            raise ValueError(f"eqx.nn.MLP needs equal hidden widths, got {sizes[:-1]}")
        model = eqx.nn.MLP(init[0][0].shape[0], sizes[-1], sizes[0], depth=len(init) - 1,
                           activation=jax.nn.relu, key=jax.random.PRNGKey(0))
        model = eqx.tree_at(
            lambda m: [lay.weight for lay in m.layers] + [lay.bias for lay in m.layers],
            model,
            [jnp.asarray(w.T) for w, _ in init] + [jnp.asarray(b) for _, b in init],
        )
        self.model = model
        self.opt_state = tx.init(eqx.filter(model, eqx.is_array))

        @eqx.filter_jit
        def step(model, opt_state, x, y):
            def loss_fn(model):
                return xent(jax.vmap(model)(x), y)

            loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state, loss

        self._step = step

    def step(self, x, y):
        self.model, self.opt_state, loss = self._step(self.model, self.opt_state, x, y)
        return loss

    def logits(self, x):
        return jax.vmap(self.model)(jnp.asarray(x))


# --------------------------------------------------------------------------- funnet


def funnet_model(fn: ModuleType, init: Init, *, act: Any = None) -> Any:
    """``fn.serial(fn.Dense(h1), fn.Relu, ..., fn.Dense(out))`` for the sizes of ``init``."""
    act = fn.Relu if act is None else act
    layers: list[Any] = []
    for i, h in enumerate(hidden_sizes(init)):
        layers += [fn.Dense(h)] + ([act] if i < len(init) - 1 else [])
    return fn.serial(*layers)


def funnet_params(fn: ModuleType, model: Any, init: Init) -> tuple[Any, ...]:
    """The shared init as funnet params ``({"W", "b"}, (), {"W", "b"}, (), ...)``.

    Checked against the structure and shapes that ``model``'s own init returns, so API
    drift shows up as a clear ValueError instead of a wrong benchmark.
    """
    params: list[Any] = []
    for i, (w, b) in enumerate(init):
        params += [{"W": jnp.asarray(w), "b": jnp.asarray(b)}]
        params += [()] if i < len(init) - 1 else []
    params_t = tuple(params)
    model_init, _ = model
    _, ref = model_init(jax.random.PRNGKey(0), (-1, init[0][0].shape[0]))
    got = jax.tree.map(jnp.shape, params_t)
    want = jax.tree.map(jnp.shape, ref)
    if jax.tree.structure(params_t) != jax.tree.structure(ref) or got != want:
        raise ValueError(f"funnet init returned params {want}, benchmark built {got}")
    return params_t


class FunnetStep(StepPeer):
    """``fn.train.make_step(model, loss, optimizer)`` + ``fn.train.TrainState.create``."""

    name = "funnet make_step (per-step)"

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation):
        self.model = funnet_model(fn, init)
        params = funnet_params(fn, self.model, init)
        self._step = fn.train.make_step(self.model, fn.softmax_cross_entropy, tx)
        self.state = fn.train.TrainState.create(params, tx, jax.random.PRNGKey(0))

    def step(self, x, y):
        self.state, metrics = self._step(self.state, (x, y))
        return metrics

    def logits(self, x):
        _, apply = self.model
        return apply(self.state.params, jnp.asarray(x))


#: the non-funnet digits peers, in table order
PEERS: dict[str, Callable[[Init, optax.GradientTransformation], Any]] = {
    RawScan.name: RawScan,
    RawJax.name: RawJax,
    Stax.name: Stax,
    Haiku.name: Haiku,
    Linen.name: Linen,
    Nnx.name: Nnx,
    Equinox.name: Equinox,
}
