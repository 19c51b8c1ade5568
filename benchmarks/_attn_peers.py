r"""Self-attention regressors trained by funnet, flax linen and haiku, each in its own style.

The network (input ``x [B, T, D]``, batch-major)::

    MultiHeadAttention(N heads, dim = N · dh) on x (self-attention, no mask) – mean over T

with every library's own layer: ``flax.linen.MultiHeadDotProductAttention(num_heads=N,
qkv_features=dim, out_features=D)``, ``hk.MultiHeadAttention(num_heads=N, key_size=dh,
model_size=D)`` and ``funnet.serial(funnet.MultiHeadAttention(N, dim),
funnet.GlobalAvgPool)``. All three compute, per head ``h`` (columns ``h·dh … (h+1)·dh − 1``
of ``Q``, ``K``, ``V``)::

    Q = x W_q + b_q,  K = x W_k + b_k,  V = x W_v + b_v,
    O_h = softmax_rows(Q_h K_hᵀ / √dh) V_h,   y = mean_t ([O_1 ‖ … ‖ O_N] W_o + b_o)

once the shared numpy init (:func:`attention_init`, funnet's layout) is mapped into each
library's (:func:`attention_layouts`), which the case checks by comparing their outputs:

- funnet: ``W_q``, ``W_k``, ``W_v`` ``[D, dim]``, ``b_q``, ``b_k``, ``b_v`` ``[dim]``,
  ``W_o [dim, D]``, ``b_o [D]``;
- flax: ``DenseGeneral`` kernels ``query``/``key``/``value`` ``[D, N, dh]`` with biases
  ``[N, dh]`` (the head axes of funnet's columns, in the same order: a reshape), ``out``
  kernel ``[N, dh, D]``, bias ``[D]`` (docs/attention.md, "From flax");
- haiku: ``hk.Linear`` ``query``/``key``/``value`` ``w [D, dim]``, ``b [dim]`` (it reshapes
  the output to ``[..., N, dh]`` itself: funnet's layout unchanged), ``linear``
  ``w [dim, D]``, ``b [D]``.

Loss: ``C = 1/(2n) Σ (ŷ − y)²`` over the ``n`` rows (funnet's ``mse``, written out for the
peers); optimiser: the optax transformation given. Interface (as ``_rnn_peers.RnnPeer``):
``step(x, y)`` (one optimiser step on numpy batches, the loss before the update as a device
scalar), ``epoch(xb, yb)`` (a Python loop of steps, the list of losses), ``predict(x)``
(outputs at the current params) and ``lowered(x, y)`` (the step lowered for batches shaped
like ``x``, ``y``, for the compiled program's HLO and memory analysis).
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
from benchmarks._peers import OptaxStep, train_state_step
from benchmarks._rnn_peers import RnnPeer, half_mse

Init = dict[str, np.ndarray]

KEYS = ("W_q", "b_q", "W_k", "b_k", "W_v", "b_v", "W_o", "b_o")


def attention_init(features: int, heads: int, dim: int, *, seed: int = 0,
                   bias_scale: float = 0.1) -> Init:
    """The shared numpy init, in funnet's layout: ``W_q, W_k, W_v ~ N(0, 1/D)`` ``[D, dim]``,
    ``W_o ~ N(0, 1/dim)`` ``[dim, D]``, biases ``~ N(0, bias_scale²)`` (not 0, so that the
    output compares the biases' layouts too). ``heads`` only checks that it divides ``dim``."""
    if dim % heads:
        raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
    rng = np.random.default_rng(seed)

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    init = {}
    for name in "qkv":
        init[f"W_{name}"] = normal((features, dim), 1 / np.sqrt(features))
        init[f"b_{name}"] = normal((dim,), bias_scale)
    init["W_o"] = normal((dim, features), 1 / np.sqrt(dim))
    init["b_o"] = normal((features,), bias_scale)
    return init


def attention_layouts(init: Init, heads: int) -> dict[str, Any]:
    """The shared init in flax's and haiku's layouts (plain numpy; module docstring)."""
    features, dim = init["W_q"].shape
    dh = dim // heads

    def flax_dense(name):
        return {"kernel": init[f"W_{name}"].reshape(features, heads, dh),
                "bias": init[f"b_{name}"].reshape(heads, dh)}

    flax = {"query": flax_dense("q"), "key": flax_dense("k"), "value": flax_dense("v"),
            "out": {"kernel": init["W_o"].reshape(heads, dh, features), "bias": init["b_o"]}}
    haiku = {f"multi_head_attention/{long}": {"w": init[f"W_{name}"], "b": init[f"b_{name}"]}
             for name, long in (("q", "query"), ("k", "key"), ("v", "value"))}
    haiku["multi_head_attention/linear"] = {"w": init["W_o"], "b": init["b_o"]}
    return {"flax": flax, "haiku": haiku}


def _shape(init: Init) -> tuple[int, int]:
    return init["W_q"].shape  # (D, dim)


# ----------------------------------------------------------------------- flax linen


class Linen(RnnPeer):
    """``nn.MultiHeadDotProductAttention`` in a module, ``jnp.mean`` over the steps;
    ``TrainState``, per-step ``jax.jit``."""

    name = "flax linen nn.MultiHeadDotProductAttention"

    def __init__(self, init: Init, tx: optax.GradientTransformation, *, heads: int):
        import flax.linen as nn
        from flax.training import train_state

        features, dim = _shape(init)

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x):
                y = nn.MultiHeadDotProductAttention(num_heads=heads, qkv_features=dim,
                                                    out_features=features)(x)
                return jnp.mean(y, axis=1)

        model = Net()
        ref = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 2, features)))
        params = {"MultiHeadDotProductAttention_0": attention_layouts(init, heads)["flax"]}
        params = jax.tree.map(jnp.asarray, _replace(self.name, ref["params"], params))
        self.state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

        self._step = train_state_step(half_mse)

    def step(self, x, y):
        self.state, loss = self._step(self.state, x, y)
        return loss

    def predict(self, x):
        return self.state.apply_fn({"params": self.state.params}, jnp.asarray(x))

    def loss_fn(self) -> tuple[Callable, Any]:
        """``(f(params, x, y), params)``: the loss of the current params, for ``jax.grad``."""
        apply = self.state.apply_fn

        def f(p, x, y):
            return half_mse(apply({"params": p}, x), y)

        return f, self.state.params

    def lowered(self, x, y):
        return self._step.lower(self.state, x, y)


# ----------------------------------------------------------------------------- haiku


class Haiku(OptaxStep, RnnPeer):
    """``hk.MultiHeadAttention(x, x, x)``, ``jnp.mean`` over the steps; ``hk.transform`` +
    optax, per-step ``jax.jit``."""

    name = "haiku hk.MultiHeadAttention"

    def __init__(self, init: Init, tx: optax.GradientTransformation, *, heads: int):
        import haiku as hk

        features, dim = _shape(init)

        def forward(x):
            mha = hk.MultiHeadAttention(num_heads=heads, key_size=dim // heads,
                                        model_size=features,
                                        w_init=hk.initializers.VarianceScaling(1.0))
            return jnp.mean(mha(x, x, x), axis=1)

        self.model = hk.without_apply_rng(hk.transform(forward))
        ref = jax.eval_shape(self.model.init, jax.random.PRNGKey(0),
                             jnp.zeros((1, 2, features)))
        params = attention_layouts(init, heads)["haiku"]
        apply = self.model.apply
        self._setup(jax.tree.map(jnp.asarray, _replace(self.name, ref, params)), tx,
                    lambda p, x, y: half_mse(apply(p, x), y))

    def predict(self, x):
        return self.model.apply(self.params, jnp.asarray(x))

    def loss_fn(self) -> tuple[Callable, Any]:
        apply = self.model.apply
        return (lambda p, x, y: half_mse(apply(p, x), y)), self.params


# --------------------------------------------------------------------------- funnet


def funnet_attention(fn: ModuleType, heads: int, dim: int) -> Any:
    """``fn.serial(fn.MultiHeadAttention(heads, dim), fn.GlobalAvgPool)``."""
    return fn.serial(fn.MultiHeadAttention(heads, dim), fn.GlobalAvgPool)


def funnet_attention_params(fn: ModuleType, model: Any, init: Init) -> Any:
    """The shared init as funnet params, checked against the model's own init."""
    features, _ = _shape(init)
    ref = jax.eval_shape(lambda k: model.init(k, (-1, 2, features))[1], jax.random.PRNGKey(0))
    params = ({k: init[k] for k in KEYS}, ())
    return jax.tree.map(jnp.asarray, _replace("funnet", ref, params))


class Funnet(RnnPeer):
    """``fn.make_step(model, fn.mse, tx, grad=...)`` on ``fn.TrainState.create``."""

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation, *,
                 heads: int, grad: str):
        self.name = f"funnet make_step, grad={grad!r}"
        self.model = funnet_attention(fn, heads, _shape(init)[1])
        params = funnet_attention_params(fn, self.model, init)
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
    layers from ``make_step``."""

    def __init__(self, fn: ModuleType, init: Init, tx: optax.GradientTransformation, *,
                 heads: int, grad: str):
        self.name = f"funnet layers in a plain jitted step, {grad}"
        self.model = funnet_attention(fn, heads, _shape(init)[1])
        model = self.model
        if grad == "hand":
            vg = fn.backprop.value_and_grad(model, fn.mse)
        else:
            vg = jax.value_and_grad(lambda p, x, y: half_mse(model.apply(p, x), y))
        self._setup(funnet_attention_params(fn, model, init), tx, value_and_grad=vg)

    def predict(self, x):
        return self.model.apply(self.params, jnp.asarray(x))


#: the non-funnet peers, in table order (the first is the baseline)
PEERS: dict[str, Callable[..., RnnPeer]] = {
    Linen.name: Linen,
    Haiku.name: Haiku,
}
