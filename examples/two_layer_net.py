"""The 2-4-3 network of the source text, forward and backward by layer (docs/math.md §4, §5).

``x`` is a batch of 10 points in R²; the network is Affine(2→4), Sigmoid, Affine(4→3), and
Softmax-with-Loss on top. Forward: scores ``s``, probabilities ``y = softmax(s)``, the
predicted classes ``argmax s`` and the mean cross-entropy ``L = -1/N Σ log y[t]``.

Backward, one layer at a time, with the hand rules of the computation-graph view::

    Softmax-with-Loss   ds = (y - t) / N
    Affine (a W2 + b2)  dW2 = aᵀ ds    db2 = Σ_rows ds   da = ds W2ᵀ
    Sigmoid             dh = da ⊙ a (1 - a)
    Affine (x W1 + b1)  dW1 = xᵀ dh    db1 = Σ_rows dh   dx = dh W1ᵀ

The same gradients three more ways: the funnet layers' own backward rules chained by hand,
``funnet.backprop.value_and_grad``, and ``jax.grad`` of a plain ``jax.numpy`` version of the
network (no funnet code at all). Everything runs in float64; all agree to ~1e-16.
The graph nodes (add, multiply, repeat, sum, matmul) are checked against ``jax.vjp`` too.

Run: ``python examples/two_layer_net.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from _plumbing import cli, plt, save_figure

import funnet

PARAM_NAMES = ("W1", "b1", "W2", "b2")


def make_model() -> funnet.Layer:
    """Affine(2→4), Sigmoid, Affine(4→3): the ``TwoLayerNet`` of the text as a funnet model."""
    return funnet.serial(funnet.Dense(4), funnet.Sigmoid, funnet.Dense(3))


def draw(seed: int, *, n: int = 10) -> tuple[tuple, np.ndarray, np.ndarray]:
    """Params from N(0, 1) as in the text (``np.random.randn``), a batch ``x`` and labels ``t``.

    NumPy draws them: small random arrays need no XLA compilation that way.
    """
    rng = np.random.default_rng(seed)
    params = (
        {"W": rng.standard_normal((2, 4)), "b": rng.standard_normal(4)},
        (),
        {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3)},
    )
    return params, rng.standard_normal((n, 2)), rng.integers(0, 3, n)


def flat(params: tuple) -> dict:
    """``{"W1", "b1", "W2", "b2"}`` from serial params ``({W, b}, (), {W, b})``."""
    return {"W1": params[0]["W"], "b1": params[0]["b"], "W2": params[2]["W"], "b2": params[2]["b"]}


def forward(p: dict, x: jax.Array, t: jax.Array) -> dict:
    """Affine, Sigmoid, Affine, Softmax, Cross-entropy: every intermediate value."""
    h = x @ p["W1"] + p["b1"][None, :]  # Affine: h = x W1 + b1
    a = 1 / (1 + jnp.exp(-h))  # Sigmoid
    s = a @ p["W2"] + p["b2"][None, :]  # Affine: scores
    y = jnp.exp(s - s.max(axis=1, keepdims=True))
    y = y / y.sum(axis=1, keepdims=True)  # Softmax: y_k = exp(s_k) / Σ_j exp(s_j)
    onehot = jax.nn.one_hot(t, s.shape[1], dtype=s.dtype)
    loss = -jnp.sum(onehot * jnp.log(y)) / x.shape[0]  # L = -1/N Σ_n Σ_k t_nk log y_nk
    return {"h": h, "a": a, "s": s, "y": y, "t": onehot, "loss": loss}


def backward(p: dict, x: jax.Array, f: dict) -> dict:
    """The hand-derived backward pass, layer by layer, from the values of :func:`forward`."""
    n = x.shape[0]
    ds = (f["y"] - f["t"]) / n  # Softmax-with-Loss: ds = (y - t) / N
    dW2 = f["a"].T @ ds  # Affine: dW = aᵀ ds
    db2 = ds.sum(axis=0)  # db = Σ_rows ds
    da = ds @ p["W2"].T  # da = ds Wᵀ
    dh = da * f["a"] * (1 - f["a"])  # Sigmoid: dh = da ⊙ a(1 - a)
    dW1 = x.T @ dh
    db1 = dh.sum(axis=0)
    dx = dh @ p["W1"].T
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2, "x": dx, "s": ds, "a": da, "h": dh}


def layer_rules(model: funnet.Layer, params: tuple, x: jax.Array, t: jax.Array) -> dict:
    """The funnet layers' own ``forward``/``backward``, chained by hand, last layer first."""
    layers = model.children
    residuals, out = [], x
    for layer, p in zip(layers, params):
        out, r = layer.forward(p, out)
        residuals.append(r)
    dy = funnet.softmax_cross_entropy.grad(out, t)  # Softmax-with-Loss
    grads = [None] * len(layers)
    for i in reversed(range(len(layers))):
        grads[i], dy = layers[i].backward(params[i], residuals[i], dy)
    return {**flat(tuple(grads)), "x": dy}


def reference(p: dict, x: jax.Array, t: jax.Array) -> dict:
    """``jax.grad`` of the loss written in plain ``jax.numpy`` (independent of funnet)."""

    def loss(p, x):
        s = jax.nn.sigmoid(x @ p["W1"] + p["b1"][None, :]) @ p["W2"] + p["b2"][None, :]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(s), t[:, None], axis=1))

    gp, gx = jax.grad(loss, argnums=(0, 1))(p, x)
    return {**gp, "x": gx}


def compute(model: funnet.Layer, params: tuple, x: jax.Array, t: jax.Array) -> dict:
    """Everything at once (one jit): forward values, four backward passes, their differences."""
    p = flat(params)
    f = forward(p, x, t)
    hand = backward(p, x, f)
    ref = reference(p, x, t)
    _, lib = funnet.backprop.value_and_grad(model, funnet.softmax_cross_entropy)(params, x, t)
    dout = funnet.softmax_cross_entropy.grad(model.apply(params, x), t)
    _, lib_dx = funnet.backprop.backward(model, params, x, dout)
    methods = {
        "hand": hand,
        "funnet layers": layer_rules(model, params, x, t),
        "funnet.backprop": {**flat(lib), "x": lib_dx},
    }
    diffs = {
        m: {k: jnp.max(jnp.abs(g[k] - ref[k])) for k in (*PARAM_NAMES, "x")}
        for m, g in methods.items()
    }
    return {
        "forward": f,
        "hand": hand,
        "diffs": diffs,
        "t": t,
        "predicted": jnp.argmax(f["s"], axis=1),
        "loss_funnet": funnet.softmax_cross_entropy(model.apply(params, x), t),
    }


def node_checks(seed: int) -> dict:
    """Backward of the graph nodes (docs/math.md §5) against ``jax.vjp``: max abs difference."""
    d, n = 8, 7
    rng = np.random.default_rng(seed)
    x, y, m = rng.standard_normal((1, d)), rng.standard_normal((1, d)), rng.standard_normal((d, 3))
    cases = {
        # name: (forward, inputs, hand backward(inputs, upstream))
        "add z = x + y": (lambda x, y: x + y, (x, y), lambda x, y, g: (g, g)),
        "multiply z = x ⊙ y": (lambda x, y: x * y, (x, y), lambda x, y, g: (g * y, g * x)),
        "repeat (N copies)": (lambda x: jnp.repeat(x, n, axis=0), (x,),
                              lambda x, g: (g.sum(axis=0, keepdims=True),)),
        "sum (over N rows)": (lambda r: r.sum(axis=0, keepdims=True), (np.repeat(x, n, axis=0),),
                              lambda r, g: (jnp.repeat(g, n, axis=0),)),
        "matmul z = x W": (lambda x, w: x @ w, (x, m), lambda x, w, g: (g @ w.T, x.T @ g)),
    }

    @jax.jit
    def check(inputs_by_case, upstream_by_case):
        out = {}
        for name, (f, _, hand) in cases.items():
            inputs, g = inputs_by_case[name], upstream_by_case[name]
            _, vjp = jax.vjp(f, *inputs)
            diffs = [jnp.max(jnp.abs(a - b)) for a, b in zip(vjp(g), hand(*inputs, g))]
            out[name] = jnp.max(jnp.stack(diffs))
        return out

    inputs = {name: c[1] for name, c in cases.items()}
    upstream = {name: rng.standard_normal(np.shape(c[0](*c[1]))) for name, c in cases.items()}
    return {name: float(v) for name, v in check(inputs, upstream).items()}


def _plot(f: dict, t: np.ndarray, diffs: dict, out_dir) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    y = np.asarray(f["y"])
    bottom = np.zeros(len(y))
    for k, color in enumerate(("tab:blue", "tab:orange", "tab:green")):
        ax1.bar(np.arange(len(y)), y[:, k], bottom=bottom, color=color, label=f"class {k}")
        bottom += y[:, k]
    ax1.scatter(np.arange(len(y)), np.full(len(y), 1.04), marker="v", s=50,
                c=[("tab:blue", "tab:orange", "tab:green")[int(c)] for c in t],
                edgecolors="k", clip_on=False, label="target")
    ax1.set_xlabel("sample")
    ax1.set_ylabel("softmax probability")
    ax1.set_title("softmax(s) per sample (▼ = true class)")
    ax1.legend(fontsize=7, loc="lower right")
    names = list(diffs["hand"])
    w = 0.27
    for j, (method, d) in enumerate(diffs.items()):
        vals = [max(d[name], 1e-18) for name in names]
        ax2.bar(np.arange(len(names)) + (j - 1) * w, vals, width=w, label=method)
    ax2.set_yscale("log")
    ax2.set_xticks(np.arange(len(names)), names)
    ax2.set_ylim(1e-18, 1e-6)
    ax2.axhline(1e-6, color="k", lw=0.8)
    ax2.set_ylabel("max |grad - jax.grad| (float64)")
    ax2.set_title("backward vs jax.grad (0 drawn as 1e-18)")
    ax2.legend(fontsize=7)
    save_figure(fig, out_dir, "two_layer_net.png")


def main(*, small: bool = False, out_dir: str = "examples/out", seed: int = 0) -> dict:
    """Forward and backward through the 2-4-3 network; print everything, compare gradients.

    ``small`` changes nothing here (the example is already tiny). Returns the loss, the
    probabilities, the predictions and, per method, the max abs difference to ``jax.grad``.
    """
    model = make_model()
    with jax.enable_x64(True):
        params, x, t = draw(seed)
        r = jax.jit(functools.partial(compute, model))(params, x, t)
        nodes = node_checks(seed + 1)
    r = jax.tree_util.tree_map(np.asarray, r)
    np.set_printoptions(precision=4, suppress=True)
    f, hand = r["forward"], r["hand"]

    print("Affine(2→4) → Sigmoid → Affine(4→3) → Softmax-with-Loss on a 10×2 batch")
    funnet.summary(model, (-1, 2))
    print("\n  scores s                      probabilities y = softmax(s)    pred target")
    for si, yi, pi, ti in zip(f["s"], f["y"], r["predicted"], r["t"]):
        print(f"  {si}  {yi}  {int(pi):>3} {int(ti):>5}")
    print(f"\n  cross-entropy L = -1/N Σ log y[t] = {float(f['loss']):.6f}"
          f"  (funnet.softmax_cross_entropy: {float(r['loss_funnet']):.6f})")

    print("\nBackward, layer by layer (hand rules)")
    print(f"  Softmax-with-Loss  ds = (y - t)/N         shape {hand['s'].shape}")
    print(f"  Affine 2           dW2 = aᵀ ds {hand['W2'].shape}, db2 = Σ ds {hand['b2'].shape},"
          f" da = ds W2ᵀ {hand['a'].shape}")
    print(f"  Sigmoid            dh = da ⊙ a(1 - a)     shape {hand['h'].shape}")
    print(f"  Affine 1           dW1 = xᵀ dh {hand['W1'].shape}, db1 {hand['b1'].shape},"
          f" dx {hand['x'].shape}")
    print("  dW1 =\n", hand["W1"])
    print("  db2 =", hand["b2"])

    names = (*PARAM_NAMES, "x")
    methods = ("hand", "funnet layers", "funnet.backprop")
    diffs = {m: {k: float(r["diffs"][m][k]) for k in names} for m in methods}
    print("\nmax |gradient - jax.grad(plain jax.numpy loss)|, float64")
    print("  " + "method".ljust(16) + "".join(k.rjust(10) for k in names))
    for m, d in diffs.items():
        print("  " + m.ljust(16) + "".join(f"{d[k]:10.1e}" for k in names))
    print("\ngraph nodes, hand backward vs jax.vjp (max abs diff)")
    for name, d in nodes.items():
        print(f"  {name:<22} {d:.1e}")
    _plot(f, r["t"], diffs, out_dir)
    return {
        "loss": float(f["loss"]),
        "loss_funnet": float(r["loss_funnet"]),
        "probabilities": f["y"],
        "scores": f["s"],
        "predicted": r["predicted"],
        "targets": r["t"],
        "max_abs_diff": {m: max(d.values()) for m, d in diffs.items()},
        "node_max_abs_diff": nodes,
        "dtype": str(f["s"].dtype),
    }


if __name__ == "__main__":
    cli(main, __doc__)
