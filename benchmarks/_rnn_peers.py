"""An LSTM regressor trained by funnet, flax linen, haiku and equinox, each in its own style.

The network (input ``x [B, T, F]``, batch-major)::

    LSTM(H) over the T steps (zero initial state) – the last step's h_T – Dense(1)

with every library's own LSTM: ``flax.linen.RNN(nn.LSTMCell)`` (and flax's
``OptimizedLSTMCell``, the same params with the four gates' kernels concatenated per
step), ``hk.LSTM`` unrolled by ``hk.dynamic_unroll``, ``eqx.nn.LSTMCell`` in a
``lax.scan`` (one sequence, ``vmap`` over the batch), and ``funnet.LSTM(H,
return_sequences=False)``. All five compute the same function of the same numbers once
the shared numpy init (:func:`lstm_init`) is mapped into each library's layout
(:func:`lstm_layouts`), which the case checks by comparing their losses:

    a = x_t W_x + h_{t-1} W_h + b = [a_i a_f a_g a_o],
    c_t = σ(a_f) c_{t-1} + σ(a_i) tanh(a_g),   h_t = σ(a_o) tanh(c_t)

The libraries differ in layout only:

- funnet: ``W_x [F, 4H]``, ``W_h [H, 4H]``, ``b [4H]``, blocks ``i, f, g, o`` (PyTorch's);
- flax ``LSTMCell``: eight ``Dense`` kernels ``ii, if, ig, io`` ``[F, H]`` (no bias) and
  ``hi, hf, hg, ho`` ``[H, H]`` with biases ``[H]``: ``b`` goes to the ``h*`` biases;
- haiku ``hk.LSTM``: one ``Linear`` on ``[x_t, h_{t-1}]``, ``w [F + H, 4H]``, ``b [4H]``
  in the block order **i, g, f, o**, and haiku adds 1 to the forget gate's pre-activation
  itself (``σ(a_f + 1)``, Sonnet's forget bias): its ``b_f`` is ours minus 1;
- equinox ``LSTMCell``: ``weight_ih [4H, F]``, ``weight_hh [4H, H]`` (transposed, it
  multiplies one sample's column vector), ``bias [4H]``, blocks ``i, f, g, o``.

Loss: ``C = 1/(2n) Σ (ŷ − y)²`` (funnet's ``mse``, written out for the peers);
optimiser: the optax transformation given. Interface (as ``_cnn_peers.CnnPeer``):

- ``step(x, y)``: one optimiser step on numpy batches ``x [B, T, F]``, ``y [B, 1]``;
  returns the batch loss before the update (a device scalar, not fetched);
- ``epoch(xb, yb)``: a Python loop of steps; returns the list of losses;
- ``predict(x)``: the network's outputs, for the did-it-train check;
- ``lowered(x, y)``: the step lowered for batches shaped like ``x``, ``y`` (for the
  compiled program's HLO and memory analysis).
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._cnn_peers import _replace, jitted_program
from benchmarks._peers import LossesPeer, OptaxStep, train_state_step

Init = dict[str, np.ndarray]


def half_mse(pred: jax.Array, y: jax.Array) -> jax.Array:
    """``1/(2n) Σ (ŷ − y)²``, ``n`` = rows: funnet's ``mse``, for the peers."""
    return jnp.sum(jnp.square(pred - y)) / (2 * pred.shape[0])


def lstm_init(features: int, hidden: int, *, seed: int = 0, forget_bias: float = 1.0) -> Init:
    """The shared numpy init, in funnet's layout: ``W_x ~ N(0, 1/F)`` ``[F, 4H]``,
    ``W_h ~ N(0, 1/H)`` ``[H, 4H]``, ``b = 0`` but ``forget_bias`` on the forget block
    ``b[H:2H]`` (funnet's default 1.0), dense ``W ~ N(0, 1/H)`` ``[H, 1]``, ``b = 0``."""
    rng = np.random.default_rng(seed)
    b = np.zeros(4 * hidden, np.float32)
    b[hidden:2 * hidden] = forget_bias
    return {
        "W_x": (rng.standard_normal((features, 4 * hidden)) / np.sqrt(features)
                ).astype(np.float32),
        "W_h": (rng.standard_normal((hidden, 4 * hidden)) / np.sqrt(hidden)
                ).astype(np.float32),
        "b": b,
        "dense_W": (rng.standard_normal((hidden, 1)) / np.sqrt(hidden)).astype(np.float32),
        "dense_b": np.zeros(1, np.float32),
    }


def _blocks(a: np.ndarray, hidden: int) -> dict[str, np.ndarray]:
    """The four gate blocks ``i, f, g, o`` of the last axis of ``a`` (funnet's order)."""
    return {g: a[..., k * hidden:(k + 1) * hidden] for k, g in enumerate("ifgo")}


def lstm_layouts(init: Init) -> dict[str, Any]:
    """The shared init in every library's layout (plain numpy; see the module docstring)."""
    hidden = init["W_h"].shape[0]
    wx, wh, b = (_blocks(init[k], hidden) for k in ("W_x", "W_h", "b"))
    flax_cell = {f"i{g}": {"kernel": wx[g]} for g in "ifgo"}
    flax_cell |= {f"h{g}": {"kernel": wh[g], "bias": b[g]} for g in "ifgo"}
    hk_order = "igfo"  # haiku splits its Linear's output as i, g, f, o
    hk_b = {**b, "f": b["f"] - 1.0}  # haiku adds the forget bias 1 itself
    haiku = {
        "w": np.concatenate([np.concatenate([wx[g] for g in hk_order], axis=1),
                             np.concatenate([wh[g] for g in hk_order], axis=1)], axis=0),
        "b": np.concatenate([hk_b[g] for g in hk_order]),
    }
    eqx_cell = {"weight_ih": init["W_x"].T.copy(), "weight_hh": init["W_h"].T.copy(),
                "bias": init["b"].copy()}
    return {"flax": flax_cell, "haiku": haiku, "equinox": eqx_cell}


class RnnPeer(LossesPeer):
    """Base: an epoch is a Python loop of jitted steps; losses kept on the device."""

    def predict(self, x: Any) -> Any:
        raise NotImplementedError

    def lowered(self, x: Any, y: Any) -> Any:
        """The jitted step lowered for batches shaped like ``x``, ``y``."""
        raise NotImplementedError


# ----------------------------------------------------------------------- flax linen


class Linen(RnnPeer):
    """``nn.RNN(nn.LSTMCell(H))`` (or ``nn.OptimizedLSTMCell``), the last step's output,
    ``nn.Dense(1)``; ``TrainState``, per-step ``jax.jit``."""

    def __init__(self, init: Init, tx: optax.GradientTransformation, *,
                 optimized: bool = False):
        import flax.linen as nn
        from flax.training import train_state

        hidden = init["W_h"].shape[0]
        cell_cls = nn.OptimizedLSTMCell if optimized else nn.LSTMCell
        self.name = f"flax linen nn.RNN(nn.{cell_cls.__name__})"

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                ys = nn.RNN(cell_cls(hidden))(x)  # [B, T, H]
                return nn.Dense(1)(ys[:, -1])

        model = Net()
        ref = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                             jnp.zeros((1, 2, init["W_x"].shape[0])))
        params = {f"{cell_cls.__name__}_0": lstm_layouts(init)["flax"],  # made in Net's scope
                  "Dense_0": {"kernel": init["dense_W"], "bias": init["dense_b"]}}
        params = jax.tree.map(jnp.asarray, _replace(self.name, ref["params"], params))
        self.state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

        self._step = train_state_step(half_mse)

    def step(self, x, y):
        self.state, loss = self._step(self.state, x, y)
        return loss

    def predict(self, x):
        return self.state.apply_fn({"params": self.state.params}, jnp.asarray(x))

    def lowered(self, x, y):
        return self._step.lower(self.state, x, y)


class LinenOptimized(Linen):
    """:class:`Linen` with ``nn.OptimizedLSTMCell``: flax's own faster cell."""

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        super().__init__(init, tx, optimized=True)


# ----------------------------------------------------------------------------- haiku


class Haiku(OptaxStep, RnnPeer):
    """``hk.LSTM(H)`` unrolled over time-major input by ``hk.dynamic_unroll`` (a
    ``lax.scan``), the last output, ``hk.Linear(1)``; ``hk.transform`` + optax, per-step
    ``jax.jit``."""

    name = "haiku hk.LSTM + hk.dynamic_unroll"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        import haiku as hk

        hidden = init["W_h"].shape[0]

        def forward(x):
            core = hk.LSTM(hidden)
            ys, _ = hk.dynamic_unroll(core, jnp.swapaxes(x, 0, 1),  # time-major
                                      core.initial_state(x.shape[0]))
            return hk.Linear(1)(ys[-1])

        self.model = hk.without_apply_rng(hk.transform(forward))
        ref = jax.eval_shape(self.model.init, jax.random.PRNGKey(0),
                             jnp.zeros((1, 2, init["W_x"].shape[0])))
        params = {"lstm/linear": lstm_layouts(init)["haiku"],
                  "linear": {"w": init["dense_W"], "b": init["dense_b"]}}
        apply = self.model.apply
        self._setup(jax.tree.map(jnp.asarray, _replace(self.name, ref, params)), tx,
                    lambda p, x, y: half_mse(apply(p, x), y))

    def predict(self, x):
        return self.model.apply(self.params, jnp.asarray(x))


# --------------------------------------------------------------------------- equinox


class Equinox(RnnPeer):
    """``eqx.nn.LSTMCell`` in a ``lax.scan`` over one sequence, ``eqx.nn.Linear(H, 1)`` on
    the last ``h``, ``jax.vmap`` over the batch; ``@eqx.filter_jit`` step."""

    name = "equinox eqx.nn.LSTMCell + lax.scan"

    def __init__(self, init: Init, tx: optax.GradientTransformation):
        import equinox as eqx

        features, hidden = init["W_x"].shape[0], init["W_h"].shape[0]

        class Net(eqx.Module):
            cell: eqx.nn.LSTMCell
            head: eqx.nn.Linear

            def __init__(self, key):
                k1, k2 = jax.random.split(key)
                self.cell = eqx.nn.LSTMCell(features, hidden, key=k1)
                self.head = eqx.nn.Linear(hidden, 1, key=k2)

            def __call__(self, xs):  # one sequence [T, F]
                def body(state, x_t):
                    return self.cell(x_t, state), None

                zero = jnp.zeros(hidden, xs.dtype)
                (h, _), _ = jax.lax.scan(body, (zero, zero), xs)
                return self.head(h)

        model = eqx.filter_eval_shape(Net, jax.random.PRNGKey(0))  # shapes: no compute
        cell = lstm_layouts(init)["equinox"]
        new = [jnp.asarray(cell["weight_ih"]), jnp.asarray(cell["weight_hh"]),
               jnp.asarray(cell["bias"]), jnp.asarray(init["dense_W"].T),
               jnp.asarray(init["dense_b"])]

        def where(m):
            return [m.cell.weight_ih, m.cell.weight_hh, m.cell.bias, m.head.weight,
                    m.head.bias]

        _replace(self.name, where(model), new)
        self.model = eqx.tree_at(where, model, new)
        self.opt_state = tx.init(eqx.filter(self.model, eqx.is_array))

        @eqx.filter_jit
        def step(model, opt_state, x, y):
            def loss_fn(model):
                return half_mse(jax.vmap(model)(x), y)

            loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
            updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_array))
            return eqx.apply_updates(model, updates), opt_state, loss

        self._step = step

    def step(self, x, y):
        self.model, self.opt_state, loss = self._step(self.model, self.opt_state, x, y)
        return loss

    def predict(self, x):
        return jax.vmap(self.model)(jnp.asarray(x))

    def lowered(self, x, y):
        return _EqxLowered(self._step.lower(self.model, self.opt_state, x, y))


class _EqxLowered:
    """equinox's ``Lowered`` whose ``compile()`` gives jax's ``Compiled`` (as the others)."""

    def __init__(self, lowered: Any):
        self._lowered = lowered

    def compile(self) -> Any:
        return self._lowered.compile().compiled


# --------------------------------------------------------------------------- funnet


def funnet_lstm(fn: ModuleType, hidden: int) -> Any:
    """``fn.serial(fn.LSTM(H, return_sequences=False), fn.Dense(1))``."""
    return fn.serial(fn.LSTM(hidden, return_sequences=False), fn.Dense(1))


def funnet_lstm_params(fn: ModuleType, model: Any, init: Init) -> Any:
    """The shared init as funnet params, checked against the model's own init."""
    ref = jax.eval_shape(lambda k: model.init(k, (-1, 2, init["W_x"].shape[0]))[1],
                         jax.random.PRNGKey(0))
    params = ({"W_x": init["W_x"], "W_h": init["W_h"], "b": init["b"]},
              {"W": init["dense_W"], "b": init["dense_b"]})
    return jax.tree.map(jnp.asarray, _replace("funnet", ref, params))


class Funnet(RnnPeer):
    """``fn.make_step(model, fn.mse, tx, grad=...)`` on ``fn.TrainState.create``."""

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation, *,
                 grad: str):
        self.name = f"funnet make_step, grad={grad!r}"
        self.model = funnet_lstm(fn, init["W_h"].shape[0])
        params = funnet_lstm_params(fn, self.model, init)
        self._step = fn.make_step(self.model, fn.mse, tx, grad=grad)
        self.state = fn.TrainState.create(params, tx, jax.random.key(0))

    def step(self, x, y):
        self.state, metrics = self._step(self.state, (x, y))
        return metrics["loss"]

    def predict(self, x):
        return self.model.apply(self.state.params, jnp.asarray(x))

    def lowered(self, x, y):
        return jitted_program(self._step).lower(self.state, (x, y))


class FunnetPlain(OptaxStep, RnnPeer):
    """funnet's model in a plain jitted step, as the peers write theirs: ``jax.value_and_grad``
    of ``apply`` (``grad="reverse"``) or ``fn.backprop.value_and_grad`` (``"hand"``), then
    optax; no key split, no host checks. A profiling reference that separates funnet's
    layers from ``make_step``. ``wiring="formula"``: the activations evaluated by their
    plain formulas (``model.rewired("formula")``), so that ``jax.grad`` differentiates
    ``jax.nn.sigmoid`` and ``jnp.tanh`` itself instead of using funnet's hand ``f'``."""

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation, *,
                 grad: str, wiring: str = "vjp"):
        self.name = f"funnet layers in a plain jitted step, {grad}"
        if wiring != "vjp":
            self.name += f", activations wired as {wiring!r}"
        self.model = funnet_lstm(fn, init["W_h"].shape[0]).rewired(wiring)
        model = self.model
        if grad == "hand":
            vg = fn.backprop.value_and_grad(model, fn.mse)
        else:
            vg = jax.value_and_grad(lambda p, x, y: half_mse(model.apply(p, x), y))
        self._setup(funnet_lstm_params(fn, model, init), tx, value_and_grad=vg)

    def predict(self, x):
        return self.model.apply(self.params, jnp.asarray(x))


#: the non-funnet peers, in table order
PEERS: dict[str, Callable[[Init, optax.GradientTransformation], RnnPeer]] = {
    "flax linen nn.RNN(nn.LSTMCell)": Linen,
    "flax linen nn.RNN(nn.OptimizedLSTMCell)": LinenOptimized,
    "haiku hk.LSTM + hk.dynamic_unroll": Haiku,
    "equinox eqx.nn.LSTMCell + lax.scan": Equinox,
}
