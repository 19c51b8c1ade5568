r"""The train state: everything that changes during training, as one pytree."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from ..contract import PyTree

__all__ = ["TrainState", "as_key", "check_optimizer"]


def check_optimizer(optimizer: Any) -> optax.GradientTransformation:
    """``optimizer`` if it is an optax transformation (``init`` and ``update``), else a
    TypeError naming the argument."""
    if not (callable(getattr(optimizer, "init", None))
            and callable(getattr(optimizer, "update", None))):
        raise TypeError(f"optimizer must be an optax GradientTransformation, e.g. "
                        f"optax.adam(1e-3), got {optimizer!r}")
    return optimizer


def as_key(key: Any) -> jax.Array:
    """``key`` as a typed PRNG key (``jax.random.key``), whatever its implementation.

    Accepts typed keys of any implementation (``threefry2x32``, ``rbg``, ...) and raw
    ``uint32`` keys (``jax.random.PRNGKey``), read with the default implementation.
    """
    if isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.ndim != 0:
            raise TypeError(f"key must be a single PRNG key, got a key array of shape "
                            f"{key.shape}")
        return key
    raw = jnp.asarray(key)
    if raw.dtype != jnp.uint32 or raw.ndim != 1:
        raise TypeError(
            f"key must be a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), "
            f"got an array of dtype {raw.dtype} and shape {raw.shape}")
    try:
        return jax.random.wrap_key_data(raw)
    except (TypeError, ValueError):
        raise TypeError(f"key: a raw uint32 key of shape {raw.shape} does not fit the default "
                        "PRNG implementation; pass a typed key, jax.random.key(seed, impl=...)"
                        ) from None


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree (as flax's ``TrainState``).

    Attributes:
      params: the model's params.
      opt_state: the optax optimiser state.
      step: int32 scalar, the number of updates applied.
      key: a typed PRNG key (any implementation); each step splits it: the next ``key``
        and the key fed to the model (``Dropout``).
      model_state: the model's state (``BatchNorm`` running statistics), ``()`` for a model
        without state.
    """

    params: PyTree
    opt_state: PyTree
    step: jax.Array
    key: jax.Array
    model_state: PyTree = ()

    @classmethod
    def create(cls, params: PyTree, optimizer: optax.GradientTransformation, key: Any, *,
               model_state: PyTree = ()) -> TrainState:
        """``TrainState(params, optimizer.init(params), 0, key, model_state)``.

        >>> import jax, jax.numpy as jnp, optax
        >>> state = TrainState.create({"W": jnp.ones(2)}, optax.sgd(0.1), jax.random.key(0))
        >>> int(state.step), state.model_state
        (0, ())
        """
        optimizer = check_optimizer(optimizer)
        return cls(params, optimizer.init(params), jnp.zeros((), jnp.int32), as_key(key),
                   model_state)


def apply_updates(optimizer: optax.GradientTransformation, state: TrainState, grads: PyTree,
                  model_state: PyTree) -> TrainState:
    """``state`` after one optimiser update with ``grads`` (``state.key`` unchanged)."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state._replace(params=params, opt_state=opt_state, step=state.step + 1,
                          model_state=model_state)
