"""Seven optimizers on the digits: SGD, momentum, AdaGrad, AdaDelta, RMSprop, Adam, cosine decay.

The remedies of docs/math.md §6 on one problem: a 64-64-10 ReLU network, softmax cross-entropy,
mini-batches of 32 from the digits' training split, the gradients from funnet's
hand-derived backprop, the updates from optax. Every optimizer starts from the same params
and sees exactly the same mini-batches in the same order: all seven run side by side in one
compiled program (``jax.jit`` of a ``lax.scan`` over epochs and batches).

Learning rates: one ``α = 0.01`` for every optimizer that takes a learning rate, so the
comparison is at the same step-size budget (SGD with cosine decay starts at ``α`` and decays to
0 over the run); AdaDelta sizes its own steps (``α = 1`` is its plain form). The loss is the
mean training loss on the whole training split after each epoch (epoch 0 = the start).

Run: ``python examples/optimizers.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from _plumbing import cli, init_params, plt, save_figure

import funnet


def optimizers(lr: float, total_steps: int) -> dict[str, tuple[optax.GradientTransformation, str]]:
    """The seven optimizers and a note on their learning rate."""
    return {
        "SGD": (optax.sgd(lr), f"α={lr}"),
        "momentum": (optax.sgd(lr, momentum=0.9), f"α={lr}, β=0.9"),
        "AdaGrad": (optax.adagrad(lr), f"α={lr}"),
        "AdaDelta": (optax.adadelta(1.0, rho=0.9), "α=1, ρ=0.9"),
        "RMSprop": (optax.rmsprop(lr, decay=0.9), f"α={lr}, ρ=0.9"),
        "Adam": (optax.adam(lr), f"α={lr}, β=(0.9, 0.999)"),
        "SGD + cosine": (optax.sgd(optax.cosine_decay_schedule(lr, total_steps)),
                         f"α={lr} → 0 (cosine)"),
    }


def batch_indices(n: int, *, epochs: int, batch_size: int, seed: int) -> np.ndarray:
    """``[epochs, batches, batch_size]`` row indices: a fresh permutation each epoch.

    The last partial batch is dropped (the permutation changes which rows it holds).
    """
    rng = np.random.default_rng(seed)
    per_epoch = n // batch_size
    return np.stack([rng.permutation(n)[: per_epoch * batch_size].reshape(per_epoch, batch_size)
                     for _ in range(epochs)])


def train_all(model: funnet.Layer, params, opts: dict, x: np.ndarray, y: np.ndarray,
              valid: tuple, index: np.ndarray) -> dict:
    """Train a copy of ``params`` with every optimizer: train loss and valid accuracy per epoch."""
    value_and_grad = funnet.backprop.value_and_grad(model, funnet.softmax_cross_entropy)
    x, y = jnp.asarray(x), jnp.asarray(y)
    vx, vy = jnp.asarray(valid[0]), jnp.asarray(valid[1])

    def metrics(p):
        return (funnet.softmax_cross_entropy(model.apply(p, x), y),
                funnet.accuracy(model.apply(p, vx), vy))

    def run(opt, p):
        def step(carry, rows):
            p, state = carry
            _, g = value_and_grad(p, x[rows], y[rows])
            updates, state = opt.update(g, state, p)
            return (optax.apply_updates(p, updates), state), None

        def epoch(carry, rows):
            carry, _ = jax.lax.scan(step, carry, rows)
            return carry, metrics(carry[0])

        _, (loss, acc) = jax.lax.scan(epoch, (p, opt.init(p)), jnp.asarray(index))
        loss0, acc0 = metrics(p)
        return jnp.concatenate([loss0[None], loss]), jnp.concatenate([acc0[None], acc])

    out = jax.jit(lambda p: {name: run(opt, p) for name, (opt, _) in opts.items()})(params)
    return {name: {"loss": np.asarray(out[name][0]), "valid_accuracy": np.asarray(out[name][1])}
            for name in opts}


def _plot(curves: dict, notes: dict, out_dir) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name, c in curves.items():
        epochs = np.arange(len(c["loss"]))
        ax1.plot(epochs, c["loss"], label=f"{name} ({notes[name]})")
        ax2.plot(epochs, c["valid_accuracy"], label=name)
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("training loss (whole training split)")
    ax1.set_title("same params, same mini-batches, α = 0.01")
    ax1.legend(fontsize=8)
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation accuracy")
    ax2.set_ylim(0, 1.01)
    ax2.legend(fontsize=8)
    save_figure(fig, out_dir, "optimizers.png")


def main(*, small: bool = False, out_dir: str = "examples/out", lr: float = 0.01,
         batch_size: int = 32, seed: int = 0) -> dict:
    """Train with every optimizer; print the table and plot the curves.

    Returns per optimizer the loss per epoch (index 0: before training), the final loss and
    the final validation accuracy.
    """
    epochs = 5 if small else 30
    train, valid, _ = funnet.data.split(funnet.load_digits(), seed=seed)
    model = funnet.serial(funnet.Dense(64), funnet.Relu, funnet.Dense(10))
    params = init_params(model, (-1, 64), seed=seed)
    index = batch_indices(len(train), epochs=epochs, batch_size=batch_size, seed=seed)
    opts = optimizers(lr, total_steps=index.shape[0] * index.shape[1])
    print(f"64-64-10 ReLU on {len(train)} digits, {epochs} epochs of {index.shape[1]} "
          f"mini-batches of {batch_size}\n")
    curves = train_all(model, params, opts, train.x, train.y, (valid.x, valid.y), index)
    print(f"{'optimizer':<14}{'learning rate':<24}{'loss start':>11}{'loss end':>10}"
          f"{'valid acc':>11}")
    table = {}
    for name, c in curves.items():
        table[name] = {"loss": c["loss"], "loss_start": float(c["loss"][0]),
                       "loss_end": float(c["loss"][-1]),
                       "valid_accuracy": float(c["valid_accuracy"][-1]),
                       "learning_rate": opts[name][1]}
        print(f"{name:<14}{opts[name][1]:<24}{c['loss'][0]:>11.4f}{c['loss'][-1]:>10.4f}"
              f"{c['valid_accuracy'][-1]:>11.1%}")
    _plot(curves, {name: note for name, (_, note) in opts.items()}, out_dir)
    return table


if __name__ == "__main__":
    cli(main, __doc__)
