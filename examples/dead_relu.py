"""Dead ReLUs never come back; leaky ReLU, PReLU and ELU do (docs/math.md §6).

A 64-16-10 network on the digits whose 16 hidden units are pushed into the dead region:
every hidden bias starts at -5, so ``z = x W + b < 0`` for every input. Then it is trained
(full batch, Adam and plain SGD) with four activations:

- ReLU: ``f'(z) = 0`` for ``z < 0``, so the hidden layer's gradient is exactly 0, at every
  step. Its weights and biases end bit-for-bit where they started, no unit ever becomes
  active, and the loss stays near ``log 10`` (only the output bias can learn the class
  frequencies). Even Adam, which rescales small gradients, cannot move an exact 0.
- leaky ReLU (``f' = 0.01``), PReLU (learned slope, starts at 0.25) and ELU (``f' = e^z``) pass a
  small gradient back, so their hidden layers train. Under Adam (which rescales small
  gradients) the units become active again and the loss falls to near 0. Under plain SGD
  (α = 0.5) recovery goes with the size of that gradient: PReLU (its slope learns too)
  recovers, ELU partly, and leaky ReLU's 1 % gradient moves its layer too little to
  reactivate a unit in 600 steps — slow, but unlike ReLU not stuck at exactly 0.

Run: ``python examples/dead_relu.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _plumbing import cli, init_params, plt, save_figure

import funnet

ACTIVATIONS = {
    "relu": funnet.Relu,
    "leaky_relu": funnet.LeakyRelu,
    "prelu": funnet.PRelu,
    "elu": funnet.Elu,
}
OPTIMIZERS = {"adam": lambda: optax.adam(0.01), "sgd": lambda: optax.sgd(0.5)}


def train(runs: dict, x: np.ndarray, y: np.ndarray, *, hidden: int, bias: float,
          steps: int) -> dict:
    """Full-batch training from a dead start for every ``(optimizer, activation)`` in ``runs``.

    Per step: the loss, the fraction of active units, the largest hidden-layer gradient. All
    runs are compiled together as one program.
    """
    models, starts = {}, {}
    for run_name, (activation, _) in runs.items():
        models[run_name] = funnet.serial(funnet.Dense(hidden), activation, funnet.Dense(10))
        params = init_params(models[run_name], (-1, x.shape[1]), seed=0)
        params[0]["b"] = np.full_like(params[0]["b"], bias)  # push every unit into z < 0
        starts[run_name] = params

    def run(model, optimizer, p):
        value_and_grad = funnet.backprop.value_and_grad(model, funnet.softmax_cross_entropy)

        def step(carry, _):
            p, state = carry
            loss, g = value_and_grad(p, x, y)
            z = x @ p[0]["W"] + p[0]["b"][None, :]
            active = jnp.mean(jnp.any(z > 0, axis=0))  # units active for at least one input
            hidden_grad = jnp.maximum(jnp.max(jnp.abs(g[0]["W"])), jnp.max(jnp.abs(g[0]["b"])))
            updates, state = optimizer.update(g, state, p)
            return (optax.apply_updates(p, updates), state), (loss, active, hidden_grad)

        (p, _), trace = jax.lax.scan(step, (p, optimizer.init(p)), None, length=steps)
        return p, trace, funnet.accuracy(model.apply(p, x), y)

    out = jax.device_get(jax.jit(lambda starts: {
        k: run(models[k], runs[k][1], starts[k]) for k in runs})(starts))
    result = {}
    for k in runs:
        end, (loss, active, hidden_grad), acc = out[k]
        result[k] = {
            "loss": loss,
            "active": active,
            "max_hidden_grad": float(np.max(hidden_grad)),
            "hidden_unchanged": bool(
                all(np.array_equal(end[0][n], starts[k][0][n]) for n in ("W", "b"))
            ),
            "accuracy": float(acc),
        }
    return result


def _plot(runs: dict, out_dir) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    cmap = plt.get_cmap("tab10")
    for (opt, name), r in runs.items():
        color = cmap(list(ACTIVATIONS).index(name))
        style = "-" if opt == "adam" else ":"
        steps = np.arange(1, len(r["loss"]) + 1)
        axes[0].plot(steps, r["loss"], style, color=color, label=f"{name}, {opt}")
        axes[1].plot(steps, r["active"], style, color=color, label=f"{name}, {opt}")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("training loss")
    axes[0].set_title("all hidden biases start at -5 (every unit dead)")
    axes[1].set_ylabel("fraction of hidden units active on ≥ 1 input")
    axes[1].set_title("ReLU stays dead: its gradient is exactly 0")
    for ax in axes:
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    save_figure(fig, out_dir, "dead_relu.png")


def main(*, small: bool = False, out_dir: str = "examples/out", bias: float = -5.0,
         hidden: int = 16) -> dict:
    """Train from a dead start with each activation (and optimizer); print and plot.

    Returns ``{optimizer: {activation: {...}}}`` with the first and final loss, the first and
    final fraction of active units, the largest hidden gradient, whether the hidden layer is
    unchanged, and the final training accuracy. ``small`` runs fewer steps.
    """
    steps = 200 if small else 600
    optimizers = list(OPTIMIZERS)
    digits = funnet.load_digits()
    x, y = digits.x, digits.y
    print(f"64-{hidden}-10 on {len(x)} digits, hidden biases start at {bias}, {steps} full-batch"
          " steps\n")
    print(f"{'optimizer':<10}{'activation':<12}{'loss start → end':>20}{'active start → end':>22}"
          f"{'max |∂L/∂W(1)|':>16}{'accuracy':>10}  hidden layer")
    runs = train({(opt, name): (layer, OPTIMIZERS[opt]()) for opt in optimizers
              for name, layer in ACTIVATIONS.items()}, x, y, hidden=hidden, bias=bias,
             steps=steps)
    table = {}
    for (opt, name), r in runs.items():
        table.setdefault(opt, {})[name] = row = {
            "loss_start": float(r["loss"][0]), "loss_end": float(r["loss"][-1]),
            "active_start": float(r["active"][0]), "active_end": float(r["active"][-1]),
            "max_hidden_grad": r["max_hidden_grad"], "hidden_unchanged": r["hidden_unchanged"],
            "accuracy": r["accuracy"],
        }
        print(f"{opt:<10}{name:<12}{row['loss_start']:>10.3f} → {row['loss_end']:<7.3f}"
              f"{row['active_start']:>12.0%} → {row['active_end']:<7.0%}"
              f"{row['max_hidden_grad']:>16.2e}{row['accuracy']:>10.1%}  "
              f"{'never changed' if row['hidden_unchanged'] else 'trained'}")
    _plot(runs, out_dir)
    return table


if __name__ == "__main__":
    cli(main, __doc__)
