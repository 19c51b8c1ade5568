"""Counting parameters: ``M_{l-1}·M_l + M_l`` per dense layer (docs/math.md §3).

A dense layer from ``M_{l-1}`` to ``M_l`` neurons has a ``M_{l-1} × M_l`` weight matrix and
``M_l`` biases. The 2-4-1 network of the text has ``2·4 + 4 + 4·1 + 1 = 17``. For every model
below the formula, ``funnet.param_count`` of the initialised params and ``funnet.summary``
agree; a PReLU layer adds one learnable slope per neuron (``+M_l``).

Run: ``python examples/parameters.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
from _plumbing import cli, init_params, plt, save_figure

import funnet


def formula(widths: list[int]) -> int:
    """``Σ_l M_{l-1} M_l + M_l`` for layer widths ``[M_0, M_1, …, M_L]``."""
    return sum(m_in * m_out + m_out for m_in, m_out in itertools.pairwise(widths))


def mlp(widths: list[int], activation: funnet.Layer = funnet.Logistic) -> funnet.Layer:
    """Dense layers of ``widths[1:]`` with ``activation`` between them (none after the last)."""
    layers: list[funnet.Layer] = []
    for m in widths[1:-1]:
        layers += [funnet.Dense(m), activation]
    return funnet.serial(*layers, funnet.Dense(widths[-1]))


MODELS = {
    # name: (widths, activation, extra params beyond the formula, what it is)
    "2-4-1": ([2, 4, 1], funnet.Logistic, 0, "the text's example"),
    "2-4-3": ([2, 4, 3], funnet.Sigmoid, 0, "two_layer_net.py"),
    "20-8-1": ([20, 8, 1], funnet.Logistic, 0, "window scorer, max_margin.py"),
    "2-4-1 PReLU": ([2, 4, 1], funnet.PRelu, 4, "+1 slope per hidden neuron"),
    "64-32-32-10": ([64, 32, 32, 10], funnet.Relu, 0, "digits MLP"),
    "784-100-10": ([784, 100, 10], funnet.Relu, 0, "MNIST MLP"),
    "784-512-512-10": ([784, 512, 512, 10], funnet.Relu, 0, "bigger MNIST MLP"),
}


def count(model: funnet.Layer, in_dim: int) -> int:
    """``funnet.param_count`` of the params ``model.init`` makes (shapes only, no allocation)."""
    params = jax.eval_shape(lambda k: model.init(k, (-1, in_dim))[1], jax.random.PRNGKey(0))
    return funnet.param_count(params)


def _plot(rows: dict, growth: dict, widths: np.ndarray, out_dir) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4))
    names = list(rows)
    counts = [rows[n]["param_count"] for n in names]
    ax1.barh(names, counts, color="tab:blue")
    for i, c in enumerate(counts):
        ax1.text(c * 1.1, i, f"{c:,}", va="center", fontsize=8)
    ax1.set_xscale("log")
    ax1.set_xlim(1, max(counts) * 30)
    ax1.invert_yaxis()
    ax1.set_xlabel("parameters")
    ax1.set_title("Σ M_{l-1}·M_l + M_l")
    for depth, counts_d in growth.items():
        ax2.loglog(widths, counts_d, "o-", label=f"{depth} hidden layer(s)")
    ax2.set_xlabel("hidden width H (64 inputs, 10 outputs)")
    ax2.set_ylabel("parameters")
    ax2.set_title("1 hidden layer: ~75·H; d layers: ~(d-1)·H²")
    ax2.legend()
    save_figure(fig, out_dir, "parameters.png")


def main(*, small: bool = False, out_dir: str = "examples/out") -> dict:
    """Count the parameters of a few models three ways; print the summaries.

    Returns, per model, the formula, ``param_count`` and ``summary``'s total, plus the 2-4-1
    count from actually initialised arrays.
    """
    params = init_params(mlp([2, 4, 1]), (-1, 2), seed=0)
    print("2-4-1: W(1) 2×4, b(1) 4, W(2) 4×1, b(2) 1")
    for i, p in enumerate(params):
        for k, v in p.items() if isinstance(p, dict) else ():
            print(f"  layer {i} {k}: shape {v.shape}, {v.size} entries")
    real_241 = funnet.param_count(params)
    print(f"  2·4 + 4 + 4·1 + 1 = {formula([2, 4, 1])}, param_count = {real_241}\n")

    rows = {}
    for name, (widths, act, extra, what) in MODELS.items():
        if small and max(widths) > 200:
            continue
        model = mlp(widths, act)
        print(f"{name}  ({what})")
        table = funnet.summary(model, (-1, widths[0]))
        total = int(table.splitlines()[-1].split()[-1])
        rows[name] = {
            "formula": formula(widths) + extra,
            "param_count": count(model, widths[0]),
            "summary_total": total,
        }
        print(f"  formula {formula(widths)}{f' + {extra} slopes' if extra else ''}"
              f" = {rows[name]['formula']}\n")

    hidden = np.array([8, 16, 32, 64, 128, 256, 512, 1024, 2048])
    growth = {d: [formula([64, *[h] * d, 10]) for h in hidden] for d in (1, 2, 3)}
    _plot(rows, growth, hidden, out_dir)
    return {"2-4-1": real_241, "models": rows, "growth": growth}


if __name__ == "__main__":
    cli(main, __doc__)
