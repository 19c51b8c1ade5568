"""Even the 1-1-1 network has a non-convex loss (docs/math.md §6).

One input, one logistic hidden unit, one output, one weight per layer and no biases:
``ŷ = σ(w₂ σ(w₁ x))``. On a two-sample data set the loss is drawn over ``(w₁, w₂)`` for squared
error ``½ mean (ŷ - y)²`` and for cross-entropy. Both surfaces are non-convex, shown two ways:

- the Hessian (``jax.hessian``, which works on funnet's activations as they are: its inner
  ``jacrev`` uses the hand derivative, whose code ``jacfwd`` differentiates) has a negative
  eigenvalue on part of the grid (shaded);
- the definition of convexity fails: for some pair of points ``a``, ``b`` the loss at the
  midpoint exceeds the mean of the endpoint losses, ``L((a+b)/2) > (L(a) + L(b))/2``
  (the dashed segment).

Run: ``python examples/nonconvex.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _plumbing import cli, plt, save_figure

import funnet

X = np.array([[1.0], [-1.0]], np.float32)
Y = np.array([[1.0], [0.0]], np.float32)

MODEL = funnet.serial(funnet.Dense(1), funnet.Logistic, funnet.Dense(1))  # logits


def params_of(w: jax.Array) -> tuple:
    """The 1-1-1 params for ``w = (w₁, w₂)``, biases fixed at 0."""
    zero = jnp.zeros((1,), w.dtype)
    return ({"W": w[0].reshape(1, 1), "b": zero}, (), {"W": w[1].reshape(1, 1), "b": zero})


def squared_error(w: jax.Array) -> jax.Array:
    """``½ mean (σ(w₂ σ(w₁ x)) - y)²`` over the data set."""
    return funnet.mse(funnet.logistic(MODEL.apply(params_of(w), X)), Y)


def cross_entropy(w: jax.Array) -> jax.Array:
    """``-mean [y log ŷ + (1 - y) log(1 - ŷ)]`` with ``ŷ = σ(w₂ σ(w₁ x))``."""
    return funnet.binary_cross_entropy(MODEL.apply(params_of(w), X), Y)


LOSSES = {"squared error": squared_error, "cross-entropy": cross_entropy}


def min_eigenvalue(hessian: jax.Array) -> jax.Array:
    """Smaller eigenvalue of a symmetric 2×2 matrix ``[[a, b], [b, d]]``."""
    a, b, d = hessian[..., 0, 0], hessian[..., 0, 1], hessian[..., 1, 1]
    return (a + d) / 2 - jnp.sqrt(((a - d) / 2) ** 2 + b**2)


def surface(loss, grid: np.ndarray) -> dict:
    """Loss and the Hessian's smaller eigenvalue at every grid point ``[n, n, 2]``."""
    points = jnp.asarray(grid.reshape(-1, 2))
    # jax.hessian = jacfwd(jacrev): jacrev runs the hand derivative (custom_vjp's bwd), which is
    # plain code that jacfwd differentiates, so no forward twin is needed.
    values, eig = jax.jit(jax.vmap(lambda w: (loss(w), min_eigenvalue(jax.hessian(loss)(w)))))(
        points
    )
    shape = grid.shape[:2]
    return {"loss": np.asarray(values).reshape(shape), "min_eig": np.asarray(eig).reshape(shape)}


def midpoint_violation(loss, grid: np.ndarray, *, pairs: int, seed: int = 0) -> dict:
    """The pair of grid points with the largest ``L((a+b)/2) - (L(a) + L(b))/2``."""
    rng = np.random.default_rng(seed)
    flat = grid.reshape(-1, 2)
    a = flat[rng.integers(0, len(flat), pairs)]
    b = flat[rng.integers(0, len(flat), pairs)]
    batch = jax.jit(jax.vmap(loss))
    la, lb, lm = (np.asarray(batch(jnp.asarray(p))) for p in (a, b, (a + b) / 2))
    gap = lm - (la + lb) / 2
    i = int(np.argmax(gap))
    return {"a": a[i], "b": b[i], "gap": float(gap[i]), "L(a)": float(la[i]),
            "L(b)": float(lb[i]), "L(mid)": float(lm[i]), "fraction": float(np.mean(gap > 1e-6))}


def _pt(w: np.ndarray) -> str:
    return f"({float(w[0]):.2f}, {float(w[1]):.2f})"


def _plot(ws: np.ndarray, results: dict, out_dir) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, (name, r) in zip(axes, results.items()):
        levels = np.quantile(r["loss"], np.linspace(0, 1, 25))
        cs = ax.contour(ws, ws, r["loss"], levels=np.unique(levels), cmap="viridis",
                        linewidths=0.8)
        fig.colorbar(cs, ax=ax, label="loss")
        ax.contourf(ws, ws, r["min_eig"] < 0, levels=[0.5, 1.5], colors=["#f4a582"], alpha=0.35)
        v = r["violation"]
        ax.plot([v["a"][0], v["b"][0]], [v["a"][1], v["b"][1]], "k--o", ms=4)
        mid = (v["a"] + v["b"]) / 2
        ax.plot(mid[0], mid[1], "r*", ms=12)
        ax.set_title(f"{name}: shaded = Hessian has λ < 0 ({r['negative_fraction']:.0%})\n"
                     f"L(mid) - mean(L(a), L(b)) = {v['gap']:+.3f}", fontsize=10)
        ax.set_xlabel("w₁ (input → hidden)")
        ax.set_ylabel("w₂ (hidden → output)")
    save_figure(fig, out_dir, "nonconvex_surfaces.png")


def main(*, small: bool = False, out_dir: str = "examples/out", limit: float = 10.0) -> dict:
    """Draw both loss surfaces, find negative curvature and a convexity-violating midpoint.

    Returns per loss: the fraction of the grid with a negative Hessian eigenvalue, the most
    negative eigenvalue, and the worst midpoint violation found.
    """
    n = 61 if small else 201
    ws = np.linspace(-limit, limit, n, dtype=np.float32)
    w1, w2 = np.meshgrid(ws, ws)  # rows: w₂, columns: w₁
    grid = np.stack([w1, w2], axis=-1)
    print(f"1-1-1 network ŷ = σ(w₂ σ(w₁ x)), data x = {X.ravel().tolist()}, "
          f"y = {Y.ravel().tolist()}, grid {n}×{n} on [-{limit}, {limit}]²\n")
    results = {}
    for name, loss in LOSSES.items():
        r = surface(loss, grid)
        r["negative_fraction"] = float(np.mean(r["min_eig"] < 0))
        r["most_negative_eigenvalue"] = float(np.min(r["min_eig"]))
        r["violation"] = v = midpoint_violation(loss, grid, pairs=2000 if small else 20000)
        results[name] = r
        print(f"{name}:")
        print(f"  Hessian has a negative eigenvalue on {r['negative_fraction']:.0%} of the grid"
              f" (most negative {r['most_negative_eigenvalue']:.4f})")
        print(f"  midpoint test: a = {_pt(v['a'])}, b = {_pt(v['b'])}:"
              f" L(mid) = {v['L(mid)']:.4f} > (L(a) + L(b))/2 = {(v['L(a)'] + v['L(b)']) / 2:.4f}"
              f"  ({v['fraction']:.0%} of random pairs violate convexity)")
    _plot(ws, results, out_dir)
    return {
        name: {k: r[k] for k in ("negative_fraction", "most_negative_eigenvalue", "violation")}
        for name, r in results.items()
    }


if __name__ == "__main__":
    cli(main, __doc__)
