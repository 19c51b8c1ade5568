"""Where ``fit``'s cold start goes: the first epoch with one feature of the epoch switched off.

``fit(epochs=1)`` on the digits model of the benchmarks (64-128-128-10, ReLU, Adam,
batch 64, 1792 rows, no validation) after ``jax.clear_caches()``, in interleaved rounds,
with the compiled epoch's

- on-device shuffle replaced by the identity order (the mini-batch gathers become slices),
- finiteness guard replaced by ``True``,
- train-accuracy computation replaced by zeros,

one at a time (by patching ``funnet.train``'s private helpers: a diagnostic, not an API).
Prints the median seconds of each variant and its median per-round difference from the
full ``fit``, so the compile cost of each feature can be read off.

Run: ``python scripts/profile_fit_cold_start.py [--rounds 7]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import funnet
from funnet import train

VARIANTS = {
    "full fit": {},
    "no shuffle": {"shuffle": lambda key, n: jnp.arange(n, dtype=jnp.int32)},
    "no finiteness guard": {"_tree_finite": lambda tree: jnp.array(True)},
    "no train accuracy": {"_row_correct": lambda kind, out, y: jnp.zeros(out.shape[0])},
}


def cold_fit(model, params, x, y) -> float:
    """Seconds of ``fit(epochs=1)`` with every jax and funnet cache cleared first."""
    train._EPOCH_CACHE.clear()
    train._START_CACHE.clear()
    jax.clear_caches()
    key = np.array([0, 0], np.uint32)  # a raw key: making it compiles nothing
    t0 = time.perf_counter()
    out, _ = funnet.fit(model, params, (x, y), loss=funnet.softmax_cross_entropy,
                        optimizer=optax.adam(1e-3), epochs=1, batch_size=64, key=key,
                        progress=False)
    jax.block_until_ready(out)
    return time.perf_counter() - t0


def main(rounds: int) -> dict[str, list[float]]:
    digits = funnet.load_digits()
    x, y = digits.x[:1792], digits.y[:1792]
    model = funnet.serial(funnet.Dense(128), funnet.Relu, funnet.Dense(128), funnet.Relu,
                          funnet.Dense(10))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 64))
    original = {name: getattr(train, name) for patch in VARIANTS.values() for name in patch}
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    names = list(VARIANTS)
    cold_fit(model, params, x, y)  # warm the process (imports, first-time set-up)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotating order
            for attr, value in original.items():
                setattr(train, attr, value)
            for attr, value in VARIANTS[name].items():
                setattr(train, attr, value)
            try:
                times[name].append(cold_fit(model, params, x, y))
            finally:
                for attr, value in original.items():
                    setattr(train, attr, value)
    full = times["full fit"]
    print(f"fit(epochs=1) after jax.clear_caches(), {rounds} interleaved rounds")
    print(f"{'variant':<22}{'median s':>10}{'saved vs full (median per round)':>36}")
    for name, ts in times.items():
        saved = statistics.median(f - t for f, t in zip(full, ts, strict=True))
        print(f"{name:<22}{statistics.median(ts):>10.3f}{saved:>36.3f}")
    return times


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    main(parser.parse_args().rounds)
