"""Vanishing gradients: the error term ``δ(l)`` layer by layer in a deep net (docs/math.md §6).

A 64-32×10-10 network (ten hidden layers of 32 units) on a batch of digits, at
initialisation (Glorot-normal weights, zero biases), for several activations.
``funnet.backprop.value_and_grad(model, loss, return_deltas=True)`` returns
``δ(l) = ∂L/∂z(l)`` for every Dense layer; its norm is plotted against the layer on a log
scale. Going back one layer multiplies by ``f'(z) ⊙ (· Wᵀ)``; with Glorot weights the ``Wᵀ``
part keeps the norm about the same, so the activation's derivative decides: ``σ' ≤ 0.25``
makes the logistic network's ``δ`` fall by about 4× or more per layer, while ReLU (``f' = 1``
on the active half) and its variants lose far less.

Run: ``python examples/vanishing_gradients.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _plumbing import cli, init_params, plt, save_figure

import funnet

ACTIVATIONS = {
    "logistic": funnet.Logistic,
    "tanh": funnet.Tanh,
    "relu": funnet.Relu,
    "leaky_relu": funnet.LeakyRelu,
    "elu": funnet.Elu,
    "prelu": funnet.PRelu,
}


def deep_net(activation: funnet.Layer, *, depth: int, width: int, classes: int = 10):
    """``depth`` × (Dense(width), activation), then Dense(classes) (logits)."""
    layers: list[funnet.Layer] = []
    for _ in range(depth):
        layers += [funnet.Dense(width), activation]
    return funnet.serial(*layers, funnet.Dense(classes))


def delta_norms(activations: dict, x: np.ndarray, y: np.ndarray, *, depth: int, width: int,
                seeds: int) -> dict:
    """``‖δ(l)‖`` (Frobenius, over the batch) per seed and Dense layer: ``[seeds, depth + 1]``.

    One array per activation; all of them computed in one compiled program.
    """
    models = {name: deep_net(layer, depth=depth, width=width)
              for name, layer in activations.items()}
    starts = {name: init_params(model, (-1, x.shape[1]), seed=0, copies=seeds)
              for name, model in models.items()}

    def norms(model, p):
        value_and_grad = funnet.backprop.value_and_grad(
            model, funnet.softmax_cross_entropy, return_deltas=True
        )
        _, _, deltas = value_and_grad(p, x, y)
        dense = deltas[0::2]  # the outputs of layers 0, 2, 4, …: z(1), …, z(L)
        return jnp.stack([jnp.linalg.norm(d) for d in dense])

    out = jax.jit(lambda starts: {
        name: jax.vmap(lambda p, m=models[name]: norms(m, p))(starts[name]) for name in models
    })(starts)
    return {name: np.asarray(out[name]) for name in activations}


def fall_per_layer(norms: np.ndarray) -> float:
    """Geometric-mean factor by which ``‖δ‖`` shrinks per layer, output to first layer."""
    log = np.mean(np.log(norms), axis=0)  # mean over seeds of log ‖δ(l)‖
    return float(np.exp((log[-1] - log[0]) / (len(log) - 1)))


def _plot(results: dict, out_dir) -> None:
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, norms in results.items():
        layers = np.arange(1, norms.shape[1] + 1)
        geo = np.exp(np.mean(np.log(norms), axis=0))
        ax.semilogy(layers, geo, "o-", label=f"{name} (÷{fall_per_layer(norms):.2f} per layer)")
    top = np.exp(np.mean(np.log(results["logistic"]), axis=0))[-1]
    layers = np.arange(1, next(iter(results.values())).shape[1] + 1)
    ax.semilogy(layers, top * 0.25 ** (layers[-1] - layers), "k:", label="× 0.25 per layer")
    ax.set_xlabel("layer l (1 = first hidden layer, last = output)")
    ax.set_ylabel("‖δ(l)‖ = ‖∂L/∂z(l)‖ at initialisation")
    ax.set_title("Error terms going back through 10 hidden layers of 32")
    ax.legend(fontsize=8)
    save_figure(fig, out_dir, "vanishing_gradients.png")


def main(*, small: bool = False, out_dir: str = "examples/out", depth: int = 10,
         width: int = 32) -> dict:
    """Measure ``‖δ(l)‖`` per layer for each activation; print and plot it.

    Returns per activation the mean ``‖δ(l)‖`` per layer and the fall factor per layer.
    """
    seeds, batch = (3, 128) if small else (10, 512)
    digits = funnet.load_digits()
    x, y = digits.x[:batch], digits.y[:batch]
    print(f"64-{'32-' * depth}10 network, {batch} digits, Glorot init, {seeds} seeds;"
          " ‖δ(l)‖ (geometric mean over seeds)\n")
    header = "".join(f"{i:>9}" for i in range(1, depth + 2))
    print(f"{'layer':<12}{header}   ÷ per layer")
    results = delta_norms(ACTIVATIONS, x, y, depth=depth, width=width, seeds=seeds)
    table = {}
    for name, norms in results.items():
        geo = np.exp(np.mean(np.log(norms), axis=0))
        table[name] = {"norms": geo, "fall_per_layer": fall_per_layer(norms)}
        print(f"{name:<12}" + "".join(f"{v:9.1e}" for v in geo) +
              f"   {table[name]['fall_per_layer']:.2f}")
    ratio = table["logistic"]["norms"][-1] / table["logistic"]["norms"][0]
    print(f"\nlogistic: δ at the first layer is {ratio:.1e} times smaller than at the output;"
          " σ'(z) ≤ 0.25 at every layer.")
    _plot(results, out_dir)
    return table


if __name__ == "__main__":
    cli(main, __doc__)
