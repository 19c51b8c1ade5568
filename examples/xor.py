"""XOR learned by a 2-8-1 network with each of the ten classic activations of docs/math.md §2
(logistic to step; not GELU, SELU, swish, exp).

One hidden layer of 8 units, a logit output and binary cross-entropy; full-batch gradient
descent with the hand-derived backprop of ``funnet.backprop`` (``lr = 1``), weights and biases
drawn from N(0, 1) as in the text, several seeds trained at once with ``jax.vmap``.

The table says, per activation, the fraction of seeds that reach 100 % accuracy, the median
epoch at which they first do, the final loss, and the largest hidden-layer gradient seen.
The step function is the exception: its derivative is 0 everywhere, so the gradient reaching
the hidden layer is exactly 0 at every epoch and the hidden weights never move (bit for
bit). Only the output layer learns, on top of frozen random step features; XOR is solved
only for seeds whose random features happen to make it linearly separable.

Run: ``python examples/xor.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _plumbing import cli, init_params, plt, save_figure

import funnet

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.float32)
Y = np.array([[0], [1], [1], [0]], np.float32)

ACTIVATIONS = {
    "logistic": funnet.Logistic,
    "tanh": funnet.Tanh,
    "hard_logistic": funnet.HardLogistic,
    "hard_tanh": funnet.HardTanh,
    "relu": funnet.Relu,
    "leaky_relu": funnet.LeakyRelu,
    "prelu": funnet.PRelu,
    "elu": funnet.Elu,
    "softplus": funnet.Softplus,
    "step": funnet.Step,
}


def train(activations: dict, *, hidden: int, seeds: int, epochs: int, lr: float,
          seed: int = 0) -> dict:
    """Gradient descent on XOR, ``seeds`` initialisations per activation, all in one jit.

    Returns per activation, per seed and epoch: the loss, the accuracy and the largest
    hidden-layer gradient ``max |∂L/∂W(1)|, |∂L/∂b(1)|``; plus the first and last
    hidden-layer params.
    """
    models, starts = {}, {}
    for name, activation in activations.items():
        models[name] = funnet.serial(funnet.Dense(hidden), activation, funnet.Dense(1))
        starts[name] = init_params(models[name], (-1, 2), seed=seed, W_scale=1.0, b_scale=1.0,
                                   copies=seeds)

    def run(model, p):
        value_and_grad = funnet.backprop.value_and_grad(model, funnet.binary_cross_entropy)

        def epoch(p, _):
            loss, g = value_and_grad(p, X, Y)
            acc = jnp.mean((model.apply(p, X) > 0) == (Y > 0.5))
            hidden_grad = jnp.maximum(jnp.max(jnp.abs(g[0]["W"])), jnp.max(jnp.abs(g[0]["b"])))
            p = jax.tree_util.tree_map(lambda w, dw: w - lr * dw, p, g)  # w ← w - α ∂L/∂w
            return p, (loss, acc, hidden_grad)

        p_end, trace = jax.lax.scan(epoch, p, None, length=epochs)
        return (*trace, p_end[0])

    @jax.jit
    def run_all(starts):  # one compiled program: compiling ten separately costs twice as long
        return {name: jax.vmap(lambda p, m=models[name]: run(m, p))(starts[name])
                for name in activations}

    out = jax.device_get(run_all(starts))
    return {
        name: {"loss": out[name][0], "accuracy": out[name][1], "hidden_grad": out[name][2],
               "first_layer_start": starts[name][0], "first_layer_end": out[name][3]}
        for name in activations
    }


def summarise(run: dict) -> dict:
    """Fraction of seeds at 100 % at the end, median first epoch at 100 %, and more."""
    acc = run["accuracy"]
    perfect = acc == 1.0
    first = [int(np.argmax(row)) + 1 for row in perfect if row.any()]
    unchanged = all(
        np.array_equal(run["first_layer_start"][k], run["first_layer_end"][k]) for k in ("W", "b")
    )
    return {
        "fraction_learned": float(np.mean(acc[:, -1] == 1.0)),
        "median_epochs_to_100": float(np.median(first)) if first else None,
        "final_loss_median": float(np.median(run["loss"][:, -1])),
        "max_hidden_grad": float(np.max(run["hidden_grad"])),
        "hidden_weights_unchanged": bool(unchanged),
        "final_accuracy_mean": float(np.mean(acc[:, -1])),
    }


def _plot(runs: dict, table: dict, out_dir) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    cmap = plt.get_cmap("tab10")
    for i, (name, run) in enumerate(runs.items()):
        epochs = np.arange(1, run["loss"].shape[1] + 1)
        style = "--" if name == "step" else "-"
        ax1.plot(epochs, np.median(run["loss"], axis=0), style, color=cmap(i), label=name)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("binary cross-entropy (median over seeds)")
    ax1.set_title("XOR, 2-8-1, gradient descent")
    ax1.legend(fontsize=8, ncol=2)
    names = list(table)
    frac = [table[n]["fraction_learned"] for n in names]
    bars = ax2.bar(names, frac, color=[cmap(i) for i in range(len(names))])
    for bar, n in zip(bars, names):
        med = table[n]["median_epochs_to_100"]
        ax2.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.02,
                 f"{med:.0f}" if med is not None else "–", ha="center", fontsize=8)
    ax2.set_ylim(0, 1.15)
    ax2.set_ylabel("fraction of seeds at 100 % (label: median epochs)")
    ax2.tick_params(axis="x", rotation=45)
    ax2.set_title("step: hidden gradient ≡ 0, only the output layer learns")
    save_figure(fig, out_dir, "xor_loss_curves.png")


def main(*, small: bool = False, out_dir: str = "examples/out", hidden: int = 8,
         seeds: int | None = None, epochs: int | None = None, lr: float = 1.0) -> dict:
    """Train XOR with every activation; print the table, plot the loss curves.

    Returns ``{"table": {activation: summary}, "loss": {activation: [seeds, epochs]}}``.
    """
    seeds = seeds or (6 if small else 20)
    epochs = epochs or (400 if small else 2000)
    print(f"XOR, 2-{hidden}-1, binary cross-entropy, gradient descent lr={lr}, "
          f"{epochs} epochs, {seeds} seeds, init N(0, 1)\n")
    print(f"{'activation':<14}{'learned':>9}{'median epochs':>15}{'final loss':>12}"
          f"{'max |∂L/∂W(1)|':>16}  hidden weights")
    runs = train(ACTIVATIONS, hidden=hidden, seeds=seeds, epochs=epochs, lr=lr)
    table = {}
    for name, run in runs.items():
        row = table[name] = summarise(run)
        med = row["median_epochs_to_100"]
        print(f"{name:<14}{row['fraction_learned']:>9.0%}"
              f"{(f'{med:.0f}' if med is not None else '–'):>15}{row['final_loss_median']:>12.4f}"
              f"{row['max_hidden_grad']:>16.2e}  "
              f"{'never changed' if row['hidden_weights_unchanged'] else 'trained'}")
    print("\nstep: f'(x) = 0 everywhere, so δ(1) = f'(z(1)) ⊙ (δ(2) W(2)ᵀ) = 0 at every epoch;"
          "\nits successes are the output layer fitting frozen random step features.")
    _plot(runs, table, out_dir)
    return {"table": table, "loss": {n: r["loss"] for n, r in runs.items()},
            "accuracy": {n: r["accuracy"] for n, r in runs.items()}}


if __name__ == "__main__":
    cli(main, __doc__)
