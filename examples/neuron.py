"""The MP neuron, the perceptron, and why XOR needs a hidden layer (docs/math.md §1).

1. MP (threshold) neuron: ``a = step(x₁ + x₂ - θ)`` with ``θ = 40``: inputs summing to 30
   stay silent, inputs summing to 50 fire. The threshold is a bias of ``-θ``.
2. Perceptron learning rule ``w ← w + η (t - y) x``, ``b ← b + η (t - y)`` on AND and OR:
   it reaches 100 % in a few epochs (both are linearly separable).
3. XOR is not linearly separable: the perceptron never gets all four points right, and a
   search over a grid of lines finds none that does (3 of 4 at best). A 2-2-1 network of
   step neurons with hand-set weights (hidden OR and AND, output "OR and not AND") does.

Run: ``python examples/neuron.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import numpy as np
from _plumbing import cli, plt, save_figure

import funnet

X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
TARGETS = {
    "AND": np.array([0, 0, 0, 1], np.float32),
    "OR": np.array([0, 1, 1, 1], np.float32),
    "XOR": np.array([0, 1, 1, 0], np.float32),
}


# funnet.step under jax.jit: one compilation per input shape instead of one per operation.
fire = jax.jit(lambda z: funnet.step(z))


def mp_neuron(inputs: np.ndarray, *, theta: float = 40.0) -> float:
    """Fire (1) iff ``Σ inputs > θ``: a step neuron with unit weights and bias ``-θ``."""
    w = np.ones(len(inputs), np.float32)
    return float(fire(np.dot(inputs, w) - theta))  # step(Σ xᵢ - θ)


def perceptron(x: np.ndarray, t: np.ndarray, *, epochs: int, lr: float = 1.0) -> dict:
    """Rosenblatt's rule, one sample at a time: ``w += η (t - y) x``, ``b += η (t - y)``.

    Returns the weights, the bias and the accuracy after every epoch.
    """
    w, b = np.zeros(x.shape[1], np.float32), np.float32(0.0)
    history = []
    for _ in range(epochs):
        for xi, ti in zip(x, t):
            y = float(fire(np.dot(xi, w) + b))
            w = w + lr * (ti - y) * xi  # w ← w + η (t - y) x
            b = b + lr * (ti - y)  # b ← b + η (t - y)
        y_all = np.asarray(fire(x @ w + b))
        history.append(float(np.mean(y_all == t)))
    return {"w": w, "b": float(b), "accuracy": history}


def best_line_accuracy(t: np.ndarray, *, steps: int = 41, limit: float = 2.0) -> float:
    """Best accuracy of any single step neuron ``step(w₁x₁ + w₂x₂ + b)`` on a grid of lines."""
    grid = np.linspace(-limit, limit, steps, dtype=np.float32)
    w1, w2, b = (g.reshape(-1) for g in np.meshgrid(grid, grid, grid, indexing="ij"))
    z = X[:, :1] * w1[None, :] + X[:, 1:] * w2[None, :] + b[None, :]  # [4, lines]
    y = np.asarray(fire(z))
    return float(np.max(np.mean(y == t[:, None], axis=0)))


def xor_network() -> tuple[funnet.Layer, tuple]:
    """A 2-2-1 network of step neurons with hand-set weights that computes XOR.

    Hidden unit 1 is OR (``x₁ + x₂ - 0.5``), hidden unit 2 is AND (``x₁ + x₂ - 1.5``); the
    output fires for "OR and not AND" (``h₁ - h₂ - 0.5``).
    """
    net = funnet.serial(funnet.Dense(2), funnet.Step, funnet.Dense(1), funnet.Step)
    f32 = np.float32
    params = (
        {"W": np.array([[1, 1], [1, 1]], f32), "b": np.array([-0.5, -1.5], f32)},  # OR, AND
        (),
        {"W": np.array([[1], [-1]], f32), "b": np.array([-0.5], f32)},  # OR and not AND
        (),
    )
    return net, params


def _plot(runs: dict, apply, params, out_dir) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
    xs = np.linspace(-0.5, 1.5, 201, dtype=np.float32)
    gx, gy = np.meshgrid(xs, xs)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1)
    panels = [(name, runs[name]) for name in ("AND", "OR", "XOR")] + [("XOR, 2-2-1 net", None)]
    for ax, (title, run) in zip(axes, panels):
        t = TARGETS[title.split(",")[0]]
        if run is not None:
            region = np.asarray(fire(grid @ run["w"] + run["b"]))
            acc = run["accuracy"][-1]
        else:
            region = np.asarray(apply(params, grid))[:, 0]
            acc = float(np.mean(np.asarray(apply(params, X))[:, 0] == t))
        ax.contourf(gx, gy, region.reshape(gx.shape), levels=[-0.5, 0.5, 1.5],
                    colors=["#dde6f5", "#f7d9c4"])
        ax.scatter(X[:, 0], X[:, 1], c=["tab:blue" if v == 0 else "tab:red" for v in t],
                   s=120, edgecolors="k", zorder=3)
        ax.set_title(f"{title}: accuracy {acc:.0%}")
        ax.set_xlabel("x₁")
        ax.set_ylabel("x₂")
    save_figure(fig, out_dir, "neuron_boundaries.png")


def main(*, small: bool = False, out_dir: str = "examples/out", epochs: int | None = None) -> dict:
    """Run the three demonstrations, print them, plot the decision regions.

    Returns the facts the claim rests on: MP outputs for sums 30 and 50, perceptron accuracy
    per epoch for AND/OR/XOR, the best single-line accuracy per task, and the 2-2-1 network's
    XOR accuracy.
    """
    epochs = epochs or (30 if small else 100)

    print("1. MP neuron, θ = 40 (bias -40)")
    fires = {}
    for inputs in ([10.0, 20.0], [20.0, 30.0]):
        a = mp_neuron(np.array(inputs))
        fires[int(sum(inputs))] = a
        print(f"   inputs {inputs}  sum {sum(inputs):>4.0f}  fires: {bool(a)}")

    print(f"\n2. Perceptron learning rule, {epochs} epochs")
    runs = {name: perceptron(X, t, epochs=epochs) for name, t in TARGETS.items()}
    first_perfect = {}
    for name, run in runs.items():
        acc = run["accuracy"]
        first_perfect[name] = next((i + 1 for i, a in enumerate(acc) if a == 1.0), None)
        when = f"100 % after epoch {first_perfect[name]}" if first_perfect[name] else "never 100 %"
        print(f"   {name:<4} best {max(acc):.0%}, final {acc[-1]:.0%}: {when};"
              f" w = {run['w'].tolist()}, b = {run['b']:+.1f}")

    print("\n3. Best single step neuron over a 41³ grid of (w₁, w₂, b) in [-2, 2]³")
    best_line = {name: best_line_accuracy(t) for name, t in TARGETS.items()}
    for name, acc in best_line.items():
        print(f"   {name:<4} {acc:.0%}")

    net, params = xor_network()
    apply = jax.jit(net.apply)
    y = np.asarray(apply(params, X))[:, 0]
    xor_acc = float(np.mean(y == TARGETS["XOR"]))
    print("\n   2-2-1 step network (hidden OR, AND; output OR and not AND) on XOR:")
    for xi, yi in zip(X, y):
        print(f"   x = {xi.astype(int).tolist()} -> {int(yi)}")
    print(f"   accuracy {xor_acc:.0%}")

    _plot(runs, apply, params, out_dir)
    return {
        "mp_fires": fires,
        "perceptron_accuracy": {name: run["accuracy"] for name, run in runs.items()},
        "perceptron_first_perfect_epoch": first_perfect,
        "best_line_accuracy": best_line,
        "two_layer_xor_accuracy": xor_acc,
    }


if __name__ == "__main__":
    cli(main, __doc__)
