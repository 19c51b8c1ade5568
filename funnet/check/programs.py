r"""The compiled programs of :func:`funnet.check_model`, built once per configuration.

Each builder is cached on its static arguments (the model and loss objects, ``l2``, the
mode), so a second ``check_model`` of the same model and loss on arrays of the same shapes
compiles nothing. The caches hold compiled functions only; nothing in them can turn a
legitimate retrace into an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from .. import backprop
from ..contract import Layer, forward_twin
from ..losses import l2_penalty
from .layer import pullbacks
from .visits import walk

__all__ = ["delta_reference", "directional", "hand", "layer_pullbacks", "value_and_grad"]

_CACHE = 32


def _risk(model: Layer, loss: Callable, l2: float, train: bool) -> Callable:
    """``R(params, x, y, key) = loss(model(x), y) + ½ λ Σ ||W||²`` (declared decay)."""

    def risk(params, x, y, key):
        out = loss(model.apply(params, x, key=key, train=train), y)
        return out + l2_penalty(params, l2, mask=model.decay_mask(params)) if l2 else out

    return risk


@functools.lru_cache(maxsize=_CACHE)
def value_and_grad(model: Layer, loss: Callable, l2: float, train: bool, wiring: str) -> Callable:
    """``(params, x, y, key) -> (R, ∇R)`` by ``jax.grad`` of the model in ``wiring``."""
    return jax.jit(jax.value_and_grad(_risk(model.rewired(wiring), loss, l2, train)))


@functools.lru_cache(maxsize=_CACHE)
def hand(model: Layer, loss: Callable, l2: float, train: bool, deltas: bool) -> Callable:
    """``(params, x, y, key) -> (R, grads[, deltas])`` by the hand δ-recursion."""
    fn = backprop.value_and_grad(model, loss, l2=l2, return_deltas=deltas)
    return jax.jit(lambda params, x, y, key: fn(params, x, y, key=key, train=train))


@functools.lru_cache(maxsize=_CACHE)
def directional(model: Layer, loss: Callable, l2: float, train: bool) -> Callable:
    """``(params, x, y, key) -> (jvps, directions)``: forward mode on the forward twin.

    For each params leaf ``l`` one direction ``v_l`` (normal, from a fixed key, zero on the
    other leaves): ``jvps[l] = ⟨∇_l R, v_l⟩`` by one JVP, as a pytree like ``params`` of
    scalars. One JVP per leaf (not per scalar) localises a wrong leaf at the cost of a few
    forward passes; :func:`funnet.check.forward_grad` gives the whole gradient instead.
    """
    risk = _risk(forward_twin(model), loss, l2, train)

    def fn(params, x, y, key):
        leaves, treedef = jax.tree_util.tree_flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(0), max(len(leaves), 1))
        dirs = [jax.random.normal(k, jnp.shape(v), jnp.result_type(v))
                for k, v in zip(keys, leaves)]
        jvps = []
        for i in range(len(leaves)):
            tangent = [d if j == i else jnp.zeros_like(v) for j, (v, d) in
                       enumerate(zip(leaves, dirs))]
            jvps.append(jax.jvp(lambda p: risk(p, x, y, key), (params,),
                                (treedef.unflatten(tangent),))[1])
        return treedef.unflatten(jvps), treedef.unflatten(dirs)

    return jax.jit(fn)


def _zero_probe(v: Any) -> Any:
    return jnp.zeros_like(v) if jnp.issubdtype(jnp.result_type(v), jnp.inexact) else None


def _add_probe(v: Any, probe: Any) -> Any:
    return v if probe is None else v + probe


@functools.lru_cache(maxsize=_CACHE)
def delta_reference(model: Layer, loss: Callable, l2: float, train: bool) -> Callable:
    """``(params, x, y, key, inside) -> ([∂R/∂(output of top-level layer l)], {path: ∂R/∂
    probes})`` by reverse mode through the formula wiring, with zero probes added to each
    top-level output, and ``inside[path]`` (zero probes, a NamedTuple like that layer's
    inner deltas) added inside the top-level layers that declare
    :attr:`~funnet.Layer.inner_deltas`, by their ``probed`` forward."""
    formula = model.rewired("formula")
    risk_l2 = _risk(model, lambda out, y: 0.0, l2, train)

    def fn(params, x, y, key, inside):
        outputs: dict[str, Any] = {}

        def record(path, out):
            outputs[path] = out
            return out

        walk(formula, params, x, key=key, train=train, probe=record)
        paths = list(outputs)
        # probes on the float leaves only: an output may carry integers or a bool mask
        zeros = [jax.tree_util.tree_map(_zero_probe, outputs[p]) for p in paths]

        def objective(probes, inner):
            table = dict(zip(paths, probes))
            out, _ = walk(formula, params, x, key=key, train=train, inside=inner,
                          probe=lambda path, o: jax.tree_util.tree_map(_add_probe, o,
                                                                       table[path]))
            return loss(out, y) + risk_l2(params, x, y, key)

        return jax.grad(objective, argnums=(0, 1))(zeros, inside)

    return jax.jit(fn)


@functools.lru_cache(maxsize=_CACHE)
def layer_pullbacks(model: Layer, train: bool) -> tuple[Callable, list]:
    """``(fn, visits)``: ``fn(params, x, key) -> [(params, x, pullbacks) per leaf layer]`` (see
    :func:`funnet.check.layer.pullbacks`; layers without a hand rule give ``None``), each at
    the inputs the forward pass gave it; ``visits`` is filled with the leaf layers (path,
    layer) when ``fn`` is traced."""
    visits: list = []

    def fn(params, x, key):
        _, seen = walk(model, params, x, key=key, train=train)
        visits[:] = [(v.path, v.layer) for v in seen]
        return [(v.params, v.x, pullbacks(v.layer, v.params, v.x, key=v.key, train=train,
                                          seed=i) if v.layer.has_backward else None)
                for i, v in enumerate(seen)]

    return jax.jit(fn), visits
