"""The window scorer trained with the max-margin loss, hand-derived gradients (docs/math.md §4, §5).

A window of 5 word vectors of dimension 4 is ``x ∈ R²⁰`` (the source text says dimension 2,
which would give R¹⁰; R²⁰ needs 4). The scorer has 8 logistic hidden units and no output
bias: ``s = Uᵀ f(W x + b)`` (row form here: ``s = f(x W + b) U``, ``W [20, 8]``, ``U [8]``).

Data: a "true" window is an evenly spaced walk through word space (``start + k·step``,
``k = -2…2``, plus a little noise); its corrupted twin has the centre word replaced by a random
vector. The loss is ``J = max(0, 1 + s_c - s)`` (``funnet.max_margin``, mean over pairs).

The gradient by hand, as in the text: while the margin is violated ``∂J/∂s = -1`` and
``∂J/∂s_c = +1`` (``/N`` for the mean), else both 0; and for one window, with ``a = f(z)``::

    ∂s/∂U = f(z)
    ∂s/∂W_ji = U_i f'(z_i) x_j = δ_i x_j        (δ = U ⊙ f'(z))
    ∂s/∂b_i = δ_i

chained: ``∂J/∂θ = ∂J/∂s · ∂s/∂θ + ∂J/∂s_c · ∂s_c/∂θ``. It is compared in float64 with
``jax.grad`` of ``J`` and with funnet's layer-by-layer backward, then used for plain gradient
descent ``θ ← θ - α ∇J``; the ranking accuracy (fraction of held-out pairs with
``s > s_c``) goes from chance to nearly 1.

Run: ``python examples/max_margin.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from _plumbing import cli, init_params, plt, save_figure

import funnet

WORDS, DIM, HIDDEN = 5, 4, 8


def windows(n: int, rng: np.random.Generator, *, noise: float = 0.2) -> tuple:
    """``n`` true windows ``[n, 20]`` and their twins with a random centre word."""
    start = rng.standard_normal((n, 1, DIM))
    step = 0.5 * rng.standard_normal((n, 1, DIM))
    true = start + (np.arange(WORDS) - WORDS // 2)[None, :, None] * step
    true = true + noise * rng.standard_normal(true.shape)
    corrupt = true.copy()
    corrupt[:, WORDS // 2] = rng.standard_normal((n, DIM))  # replace the centre word
    return true.reshape(n, -1), corrupt.reshape(n, -1)


def scorer() -> funnet.Layer:
    """``s = f(x W + b) U``: Dense(8), Logistic, Dense(1) (its bias gets zero gradient)."""
    return funnet.serial(funnet.Dense(HIDDEN), funnet.Logistic, funnet.Dense(1))


def score(params: tuple, x: jax.Array) -> jax.Array:
    """``s = Uᵀ f(W x + b)`` for every row of ``x``: ``[N]``."""
    W, b, U = params[0]["W"], params[0]["b"], params[2]["W"][:, 0]
    return jax.nn.sigmoid(x @ W + b[None, :]) @ U


def loss(params: tuple, x: jax.Array, x_c: jax.Array) -> jax.Array:
    """``J = mean max(0, 1 + s_c - s)``."""
    return funnet.max_margin(score(params, x), score(params, x_c))


def hand_grads(params: tuple, x: jax.Array, x_c: jax.Array) -> tuple:
    """``∇J`` by the text's derivation, in the structure of ``params``."""
    W, b, U = params[0]["W"], params[0]["b"], params[2]["W"][:, 0]
    s, s_c = score(params, x), score(params, x_c)
    dJ_ds, dJ_dsc = funnet.max_margin.grad(s, s_c)  # (-1, +1)/N while violated, else 0

    def pull(x, dJ):
        a = jax.nn.sigmoid(x @ W + b[None, :])  # f(z)
        delta = U[None, :] * a * (1 - a)  # δ = U ⊙ f'(z), one row per window
        dz = dJ[:, None] * delta
        return {"U": a.T @ dJ, "W": x.T @ dz, "b": dz.sum(axis=0)}  # ∂s/∂U = f(z), ∂s/∂W = x δᵀ

    g, g_c = pull(x, dJ_ds), pull(x_c, dJ_dsc)
    total = jax.tree_util.tree_map(jnp.add, g, g_c)
    return (
        {"W": total["W"], "b": total["b"]},
        (),
        {"W": total["U"][:, None], "b": jnp.zeros_like(params[2]["b"])},
    )


def layer_grads(model: funnet.Layer, params: tuple, x: jax.Array, x_c: jax.Array) -> tuple:
    """The same gradient from funnet's layer rules: ``backward`` once per half, summed."""
    dJ_ds, dJ_dsc = funnet.max_margin.grad(score(params, x), score(params, x_c))
    g, _ = funnet.backprop.backward(model, params, x, dJ_ds[:, None])
    g_c, _ = funnet.backprop.backward(model, params, x_c, dJ_dsc[:, None])
    return jax.tree_util.tree_map(jnp.add, g, g_c)


def one_window(params: tuple, x: jax.Array, x_c: jax.Array) -> dict:
    """The text's single-entry derivation for one pair: ``∂s/∂W(1)_14 = U_1 f'(z_1) x_4``.

    (Row form: input 4, hidden unit 1 is ``W[3, 0]``.)
    """
    s, s_c = score(params, x[None, :])[0], score(params, x_c[None, :])[0]
    a1 = jax.nn.sigmoid(x @ params[0]["W"][:, 0] + params[0]["b"][0])  # f(z_1)
    by_hand = params[2]["W"][0, 0] * a1 * (1 - a1) * x[3]  # U_1 f'(z_1) x_4
    auto = jax.grad(lambda p: score(p, x[None, :])[0])(params)[0]["W"][3, 0]
    return {"s": s, "s_c": s_c, "J": jnp.maximum(0, 1 + s_c - s), "by_hand": by_hand,
            "jax.grad": auto}


def max_diff(a, b) -> float:
    return max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree_util.tree_leaves(a),
                                                                jax.tree_util.tree_leaves(b)))


def ranking_accuracy(params: tuple, x: jax.Array, x_c: jax.Array) -> jax.Array:
    """Fraction of pairs ranked right: ``s > s_c``."""
    return jnp.mean(score(params, x) > score(params, x_c))


def train(params: tuple, data: tuple, valid: tuple, *, steps: int, lr: float) -> tuple:
    """Full-batch gradient descent with :func:`hand_grads`; loss and accuracies per step."""

    def step(p, _):
        g = hand_grads(p, *data)
        p_new = jax.tree_util.tree_map(lambda w, dw: w - lr * dw, p, g)  # θ ← θ - α ∇J
        return p_new, (loss(p, *data), ranking_accuracy(p, *data), ranking_accuracy(p, *valid))

    return jax.jit(lambda p: jax.lax.scan(step, p, None, length=steps))(params)


def _plot(trace: tuple, margins: dict, out_dir) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    steps = np.arange(1, len(trace[0]) + 1)
    axes[0].plot(steps, trace[0])
    axes[0].set_yscale("log")
    axes[0].set_title("max-margin loss (train)")
    axes[1].plot(steps, trace[1], label="train")
    axes[1].plot(steps, trace[2], label="held out")
    axes[1].set_ylim(0.4, 1.01)
    axes[1].set_title("ranking accuracy: s > s_c")
    axes[1].legend()
    for ax in axes[:2]:
        ax.set_xlabel("gradient-descent step")
    bins = np.linspace(min(np.min(v) for v in margins.values()),
                       max(np.max(v) for v in margins.values()), 60)
    for name, m in margins.items():
        axes[2].hist(m, bins=bins, alpha=0.6, label=name)
    axes[2].axvline(0, color="k", lw=0.8)
    axes[2].axvline(1, color="k", lw=0.8, ls="--")
    axes[2].set_xlabel("s - s_c on held-out pairs (margin Δ = 1 dashed)")
    axes[2].legend()
    save_figure(fig, out_dir, "max_margin.png")


def main(*, small: bool = False, out_dir: str = "examples/out", lr: float = 0.5) -> dict:
    """Check the hand gradient against ``jax.grad``, then train with it; print and plot.

    Returns the max abs differences to ``jax.grad`` (float64), the held-out ranking accuracy
    before and after training, and the first and final training loss.
    """
    n_train, n_valid, steps = (500, 500, 300) if small else (2000, 1000, 2000)
    rng = np.random.default_rng(0)
    model = scorer()
    with jax.enable_x64(True):
        data = tuple(jnp.asarray(a) for a in windows(n_train, rng))
        valid = tuple(jnp.asarray(a) for a in windows(n_valid, rng))
        params = jax.tree_util.tree_map(
            lambda a: jnp.asarray(a, jnp.float64), init_params(model, (-1, WORDS * DIM), seed=0)
        )
        funnet.summary(model, (-1, WORDS * DIM))
        one = jax.device_get(jax.jit(one_window)(params, data[0][0], data[1][0]))
        print(f"\none window: s = {one['s']:+.4f}, corrupted s_c = {one['s_c']:+.4f},"
              f" J = max(0, 1 + s_c - s) = {one['J']:.4f}")
        print(f"  ∂s/∂W(1)_14 = U_1 f'(z_1) x_4 = {one['by_hand']:+.6e}"
              f"   jax.grad: {one['jax.grad']:+.6e}")

        grads = jax.device_get(jax.jit(lambda p, a, b: {
            "hand": hand_grads(p, a, b), "auto": jax.grad(loss)(p, a, b),
            "rules": layer_grads(model, p, a, b)})(params, *data))
        diffs = {"hand vs jax.grad": max_diff(grads["hand"], grads["auto"]),
                 "funnet layers vs jax.grad": max_diff(grads["rules"], grads["auto"])}
        print(f"\nfull batch of {n_train} pairs, float64:")
        for name, d in diffs.items():
            print(f"  max |{name}| = {d:.1e}")
        hand = grads["hand"]
        for k, v in {"W": hand[0]["W"], "b": hand[0]["b"], "U": hand[2]["W"]}.items():
            print(f"  ∂J/∂{k} {tuple(v.shape)}: norm {float(np.linalg.norm(v)):.4f}")

        margins_of = jax.jit(lambda p: score(p, valid[0]) - score(p, valid[1]))
        margins = {"before": np.asarray(margins_of(params))}
        end, trace = train(params, data, valid, steps=steps, lr=lr)
        margins["after"] = np.asarray(margins_of(end))
        before, after = (float(np.mean(margins[k] > 0)) for k in ("before", "after"))
        trace = tuple(np.asarray(t) for t in trace)
    print(f"\ngradient descent with the hand gradient, lr={lr}, {steps} steps:")
    print(f"  loss {trace[0][0]:.4f} → {trace[0][-1]:.4f}")
    print(f"  held-out ranking accuracy (s > s_c): {before:.1%} → {after:.1%}")
    _plot(trace, margins, out_dir)
    return {
        "max_abs_diff": diffs,
        "single_entry": (float(one["by_hand"]), float(one["jax.grad"])),
        "accuracy_before": before,
        "accuracy_after": after,
        "loss_start": float(trace[0][0]),
        "loss_end": float(trace[0][-1]),
    }


if __name__ == "__main__":
    cli(main, __doc__)
