"""Cross-check a deep network mixing every activation: hand / reverse / forward / numerical.

    python scripts/check_deep_mixed.py

Prints funnet.check's per-leaf table (float64) and exits non-zero if any leaf is out of
tolerance. Inputs are drawn so that no pre-activation sits at a kink.
"""

from __future__ import annotations

import sys

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp

import funnet as fn


def main() -> int:
    model = fn.serial(
        fn.Dense(8), fn.Logistic, fn.Dense(8), fn.Tanh, fn.Dense(8), fn.Relu,
        fn.Dense(8), fn.LeakyRelu(slope=0.1), fn.Dense(8), fn.Elu, fn.Dense(8), fn.Softplus,
        fn.Dense(8), fn.PRelu, fn.Dense(8), fn.HardTanh, fn.Dense(8), fn.HardLogistic,
        fn.Dense(4), fn.Softmax, fn.Dense(3),
    )
    _, params = model.init(jax.random.PRNGKey(3), (-1, 5))
    x = jax.random.normal(jax.random.PRNGKey(4), (16, 5))
    y = jnp.arange(16) % 3
    try:
        result = fn.check_model(model, params, x, y, fn.softmax_cross_entropy, l2=1e-3)
    except fn.GradientCheckError as e:
        print(e.result if hasattr(e, "result") else e)
        return 1
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
