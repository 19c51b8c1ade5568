"""Plot each activation f and its hand-derived derivative f' for the documentation.

Writes ``docs/img/activations/NAME.png`` (480×300 px) for every built-in activation. The
derivative is ``act.derivative(x)`` (the hand-written ``f'``), drawn piece by piece between
the kinks, with a dot at each kink showing the value funnet returns there (its convention).

Run: ``python scripts/plot_activations.py [--out DIR] [--only NAME[,NAME]]``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt

import funnet

# name -> (label for the title, kinks, hyperparameters); prelu takes its slope as an argument.
PLOTS: dict[str, tuple[str, tuple[float, ...], dict]] = {
    "logistic": ("logistic σ(x)", (), {}),
    "tanh": ("tanh(x)", (), {}),
    "hard_logistic": ("hard-logistic", (-2.0, 2.0), {}),
    "hard_tanh": ("hard-tanh", (-1.0, 1.0), {}),
    "relu": ("ReLU", (0.0,), {}),
    "leaky_relu": ("leaky ReLU (slope=0.1)", (0.0,), {"slope": 0.1}),
    "prelu": ("PReLU (γ=0.25)", (0.0,), {"slope": 0.25}),
    "elu": ("ELU (alpha=0.5)", (0.0,), {"alpha": 0.5}),
    "softplus": ("softplus", (), {}),
    "step": ("step", (0.0,), {}),
    "gelu": ("GELU x Φ(x) (exact, the default)", (), {}),
    "selu": ("SELU (λ ≈ 1.0507, α ≈ 1.6733)", (0.0,), {}),
    "swish": ("swish (SiLU) x σ(x)", (), {}),
    "exp": ("exp (f' = f: the two curves coincide)", (), {}),
}
XLIM = (-4.0, 4.0)


def _evaluate(name: str, x: np.ndarray, hyper: dict) -> tuple[np.ndarray, np.ndarray]:
    """``(f(x), f'(x))`` as float64 numpy arrays, via funnet's own functions."""
    xs = jnp.asarray(x, jnp.float32)
    act = getattr(funnet, name)
    if name == "prelu":
        slope = jnp.full_like(xs, hyper["slope"])
        return np.asarray(act(xs, slope), np.float64), np.asarray(
            act.derivative(xs, slope), np.float64
        )
    return np.asarray(act(xs, **hyper), np.float64), np.asarray(
        act.derivative(xs, **hyper), np.float64
    )


def plot(name: str, out_dir: Path) -> Path:
    """Draw ``f`` and ``f'`` of activation ``name`` into ``out_dir/name.png``."""
    title, kinks, hyper = PLOTS[name]
    fig, ax = plt.subplots(figsize=(6.0, 3.75), dpi=80)
    x = np.linspace(*XLIM, 801)
    f, _ = _evaluate(name, x, hyper)
    if name == "step":  # draw the jump of f itself as two pieces too
        for lo, hi in ((XLIM[0], 0.0), (0.0, XLIM[1])):
            piece = x[(x > lo) & (x < hi)]
            ax.plot(piece, _evaluate(name, piece, hyper)[0], color="C0", lw=2)
        ax.plot([], [], color="C0", lw=2, label="f(x)")
    else:
        ax.plot(x, f, color="C0", lw=2, label="f(x)")
    # f' piece by piece on the open intervals between kinks, so jumps are not drawn as lines.
    edges = (XLIM[0], *kinks, XLIM[1])
    for k, (lo, hi) in enumerate(itertools.pairwise(edges)):
        piece = x[(x > lo) & (x < hi)]
        ax.plot(piece, _evaluate(name, piece, hyper)[1], color="C1", lw=2, ls="--",
                label="f'(x)" if k == 0 else None)
    if kinks:
        kx = np.asarray(kinks)
        fk, dk = _evaluate(name, kx, hyper)
        ax.plot(kx, dk, "o", color="C1", ms=6, label="f' at the kink (convention)")
        if name == "step":
            ax.plot(kx, fk, "o", color="C0", ms=6)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    ax.set_xlim(*XLIM)
    ax.set_xlabel("x")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.png"
    fig.savefig(path, dpi=80, metadata={"Software": None})
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> list[Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = Path(__file__).resolve().parent.parent / "docs" / "img" / "activations"
    parser.add_argument("--out", default=str(default_out), help="output folder")
    parser.add_argument("--only", default="", help="comma-separated activation names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(PLOTS)
    unknown = sorted(set(names) - set(PLOTS))
    if unknown:
        parser.error(f"unknown activation(s) {unknown}; choose from {sorted(PLOTS)}")
    paths = [plot(name, Path(args.out)) for name in names]
    for p in paths:
        print(f"wrote {p}")
    return paths


if __name__ == "__main__":
    main()
