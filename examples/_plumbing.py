"""Plumbing shared by the examples: the command line and saving figures.

Every example is ``python examples/NAME.py [--small] [--out DIR]`` and calls
``main(small=..., out_dir=...)``; figures are PNG files written with the Agg backend.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["cli", "confusion_matrix", "init_params", "plot_confusion", "plt", "save_figure"]


def save_figure(fig: Any, out_dir: str | Path, name: str) -> Path:
    """Write ``fig`` as ``out_dir/name`` (PNG), close it and return the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


def confusion_matrix(y_true: Any, y_pred: Any, *, classes: int = 10) -> Any:
    """``C[i, j]`` = number of samples of class ``i`` predicted as ``j``."""
    import numpy as np

    c = np.zeros((classes, classes), np.int64)
    np.add.at(c, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return c


def plot_confusion(c: Any, title: str, out_dir: str | Path, name: str) -> Path:
    """Draw the confusion matrix ``c`` (rows: true, columns: predicted) as ``out_dir/name``."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(c, cmap="Blues")
    for i in range(c.shape[0]):
        for j in range(c.shape[1]):
            if c[i, j]:
                ax.text(j, i, str(c[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if c[i, j] > c.max() / 2 else "black")
    ax.set_xticks(range(c.shape[1]))
    ax.set_yticks(range(c.shape[0]))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return save_figure(fig, out_dir, name)


def init_params(
    model: Any,
    input_shape: tuple[int, ...],
    *,
    seed: int,
    W_scale: float | None = None,
    b_scale: float = 0.0,
    slope: float = 0.25,
    copies: int | None = None,
) -> Any:
    """Params for ``model`` drawn with NumPy: the structure of ``model.init``, new values.

    ``W``: ``N(0, W_scale²)``, or Glorot normal ``N(0, 2/(fan_in + fan_out))`` when
    ``W_scale`` is None; ``b``: ``N(0, b_scale²)`` (zeros by default); PReLU ``slope``: the
    constant ``slope``. With ``copies=S`` every leaf gets a leading axis of ``S`` independent
    draws (for ``jax.vmap`` over seeds).

    Drawing small arrays with NumPy needs no XLA compilation, unlike ``jax.random`` whose
    first call per shape costs about a second on a small CPU: this keeps the examples fast.
    """
    import jax
    import numpy as np

    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: model.init(k, input_shape)[1], jax.random.PRNGKey(0))
    lead = () if copies is None else (copies,)

    def draw(path, leaf):
        name = getattr(path[-1], "key", None)
        shape = lead + tuple(leaf.shape)
        if name == "W":
            std = W_scale if W_scale is not None else np.sqrt(2 / (leaf.shape[0] + leaf.shape[1]))
            return (std * rng.standard_normal(shape)).astype(leaf.dtype)
        if name == "b":
            return (b_scale * rng.standard_normal(shape)).astype(leaf.dtype)
        if name == "slope":
            return np.full(shape, slope, leaf.dtype)
        where = jax.tree_util.keystr(path)
        raise ValueError(f"init_params: no NumPy rule for the param at {where}")

    return jax.tree_util.tree_map_with_path(draw, shapes)


def cli(main: Callable[..., dict], doc: str | None) -> dict:
    """Parse ``--small`` and ``--out`` and run ``main`` with them."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="a quick run with fewer steps")
    parser.add_argument("--out", default="examples/out", help="folder for the figures")
    args = parser.parse_args()
    return main(small=args.small, out_dir=args.out)
