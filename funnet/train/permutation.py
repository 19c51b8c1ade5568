r"""Shuffling the training rows on device: a hash-sort permutation.

``jax.random.permutation`` sorts the rows by threefry bits (a key–value sort, and threefry
runs as a loop on CPU). Sorting hashed row indices instead is several times faster on CPU
for the same job — measured side by side by ``python -m benchmarks.run --only training`` (see
docs/benchmarks.md) — which matters because ``fit`` shuffles once per epoch. The seeds
come from the PRNG key by ``jax.random.bits``, so every key implementation works; the
statistical tests are in tests/test_permutation.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from .state import as_key

__all__ = ["shuffle"]


def _mix32(v: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash (Wellons' "lowbias32")."""
    v = (v ^ (v >> 16)) * jnp.uint32(0x7FEB352D)
    v = (v ^ (v >> 15)) * jnp.uint32(0x846CA68B)
    return v ^ (v >> 16)


def shuffle(key: jax.Array, n: int) -> jax.Array:
    """A pseudo-random permutation of ``range(n)`` (int32), computed on device.

    Each round sorts the 32-bit words ``h << b | p`` (``b = max(1, bit_length(n - 1))``) of the
    current order, where ``p`` is a row's position in it and ``h = mix(mix(i ⊕ s₁) + s₂)``
    hashes its index ``i`` with two seeds drawn from ``key`` (``mix``: a bijective 32-bit
    hash), and reorders the rows by the sorted positions. One single-operand sort, a
    gather and a few integer ops per row. Rows whose ``32 - b`` hash bits tie keep their
    order from the previous rounds, so the rounds compose: there are
    ``ceil((2 log2 n - 1) / (32 - b))`` of them, and the expected number of pairs tied in
    every round is below 1. Above ``2**24`` rows it uses
    ``jax.random.permutation``.

    Args:
      key: the PRNG key: a typed key of any implementation (``jax.random.key(0,
        impl="rbg")``) or a raw ``uint32`` key (``jax.random.PRNGKey``); the two seeds of
        every round are drawn from it by ``jax.random.bits``.
      n: the number of rows, a Python int (it fixes ``b``, the number of rounds and the
        output's shape ``[n]``).

    >>> import jax
    >>> p = shuffle(jax.random.key(0), 10)
    >>> sorted(p.tolist()) == list(range(10))
    True
    """
    key = as_key(key)
    index_bits = max(1, (n - 1).bit_length())
    if index_bits > 24:
        return jax.random.permutation(key, n).astype(jnp.int32)
    random_bits = 32 - index_bits
    rounds = max(1, math.ceil((2 * math.log2(max(n, 2)) - 1) / random_bits))
    seeds = jax.random.bits(key, (rounds, 2), jnp.uint32)
    low = jnp.uint32((1 << index_bits) - 1)
    position = jnp.arange(n, dtype=jnp.uint32)
    order = position
    for r in range(rounds):
        h = _mix32(_mix32(order ^ seeds[r, 0]) + seeds[r, 1])  # a hash of each row's index
        # sort the positions by hash, ties by the current position: rows tied in this
        # round keep the order of the previous rounds, so the rounds compose
        order = order[jnp.sort((h << index_bits) | position) & low]
    return order.astype(jnp.int32)
