"""A new activation, swish, with its hand derivative, verified four ways, then trained.

``swish(x) = x σ(x)``; by hand ``swish'(x) = σ(x) + x σ(x)(1 - σ(x)) = σ(x)(1 + x(1 - σ(x)))``.
``funnet.define_activation`` wires the hand derivative into ``jax.grad`` (custom_vjp) and,
through its forward twin ``swish.jvp_twin``, into ``jax.jvp`` (custom_jvp). On a grid of ``x`` in
``[-12, 12]`` (float64) it is compared with

1. autodiff of the *formula* ``x * jax.nn.sigmoid(x)`` (``jax.grad``, which never sees the
   hand derivative) and ``jax.grad`` of the new activation (the wiring);
2. forward mode, ``jax.jacfwd`` of the twin ``swish.jvp_twin``;
3. central differences of the forward formula (``funnet.check.numerical_grad``);
4. sympy's derivative of ``x / (1 + exp(-x))``.

Then a 2-4-1 swish network passes ``funnet.check.check_model`` (hand backprop, reverse,
forward, numerical), and a 64-32-10 swish MLP (``funnet.ActivationLayer(swish)``) learns the
digits with ``funnet.fit``.

Run: ``python examples/custom_activation.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import sympy
from _plumbing import cli, init_params, plt, save_figure

import funnet
from funnet.check import check_model, numerical_grad
from funnet.train import evaluate, fit


def _swish(x):
    return x * jax.nn.sigmoid(x)  # f(x) = x σ(x)


def _dswish(x, y):
    s = jax.nn.sigmoid(x)
    return s * (1 + x * (1 - s))  # f'(x) = σ(x) + x σ(x)(1 - σ(x))


swish = funnet.define_activation("swish", _swish, _dswish)


def derivatives(xs: np.ndarray) -> dict:
    """``swish'`` on the grid ``xs`` by every method, float64."""
    with jax.enable_x64(True):
        x = jnp.asarray(xs, jnp.float64)
        out = jax.jit(lambda x: {
            "hand": swish.derivative(x),
            "jax.grad (custom_vjp)": jax.vmap(jax.grad(swish))(x),
            "jax.grad of the formula": jax.vmap(jax.grad(_swish))(x),
        })(x)
        out["numerical"] = numerical_grad(lambda v: jnp.sum(_swish(v)), x)
        twin = swish.jvp_twin  # custom_jvp from the same hand derivative
        out["forward mode (custom_jvp)"] = jax.jit(jax.vmap(jax.jacfwd(twin)))(x)
        t = sympy.Symbol("t")
        d = sympy.lambdify(t, sympy.diff(t / (1 + sympy.exp(-t)), t), "numpy")
        out["sympy"] = d(np.asarray(xs, np.float64))
        return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _plot(xs: np.ndarray, ders: dict, history, out_dir) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    axes[0].plot(xs, xs / (1 + np.exp(-xs)), label="swish(x) = x σ(x)")
    axes[0].plot(xs, ders["hand"], label="swish'(x), by hand")
    axes[0].plot(xs, np.maximum(xs, 0), ":", color="grey", label="relu")
    axes[0].set_xlabel("x")
    axes[0].legend()
    axes[0].set_title("swish and its hand-derived derivative")
    for name, d in ders.items():
        if name != "hand":
            axes[1].semilogy(xs, np.maximum(np.abs(d - ders["hand"]), 1e-18), ".", ms=3,
                             label=name)
    axes[1].set_xlabel("x")
    axes[1].set_ylabel("|method - hand|  (0 drawn as 1e-18)")
    axes[1].set_title("four checks of the hand derivative (float64)")
    axes[1].legend(fontsize=7)
    epochs = history.column("epoch")
    axes[2].plot(epochs, history.column("train_accuracy"), ".-", label="train")
    axes[2].plot(epochs, history.column("valid_accuracy"), ".-", label="valid")
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("accuracy")
    axes[2].set_title("64-32-10 swish MLP on the digits")
    axes[2].legend()
    save_figure(fig, out_dir, "custom_activation.png")


def main(*, small: bool = False, out_dir: str = "examples/out", seed: int = 0) -> dict:
    """Verify swish' four ways, gradient-check a swish network, train a digits MLP.

    Returns the max abs difference of each method to the hand derivative, whether the
    gradient check passed, and the test accuracy.
    """
    xs = np.linspace(-12, 12, 241)
    ders = derivatives(xs)
    diffs = {k: float(np.max(np.abs(v - ders["hand"]))) for k, v in ders.items() if k != "hand"}
    print("swish'(x) = σ(x)(1 + x(1 - σ(x))) on 241 points in [-12, 12], float64:")
    for name, d in diffs.items():
        print(f"  max |{name} - hand| = {d:.1e}")

    rng = np.random.default_rng(seed)
    net = funnet.serial(funnet.Dense(4), funnet.ActivationLayer(swish), funnet.Dense(1))
    with jax.enable_x64(True):
        params = jax.tree_util.tree_map(np.float64, init_params(net, (-1, 2), seed=seed))
        x, y = rng.standard_normal((16, 2)), rng.standard_normal((16, 1))
        check = check_model(net, params, x, y, funnet.mse)
    print(f"\n{check}")

    epochs = 8 if small else 40
    train, valid, test = funnet.data.split(funnet.load_digits(), seed=seed)
    model = funnet.serial(funnet.Dense(32), funnet.ActivationLayer(swish), funnet.Dense(10))
    params, history = fit(
        model, init_params(model, (-1, 64), seed=seed), train,
        loss=funnet.softmax_cross_entropy, optimizer=optax.adam(3e-3), epochs=epochs,
        batch_size=32, key=jax.random.PRNGKey(seed), valid=valid, progress=False,
    )
    result = evaluate(model, params, test, loss=funnet.softmax_cross_entropy)
    print(f"\n64-32-10 swish MLP, {epochs} epochs of Adam: train accuracy "
          f"{history[-1]['train_accuracy']:.1%}, test accuracy {result['accuracy']:.1%}")
    _plot(xs, ders, history, out_dir)
    return {"max_abs_diff": diffs, "check_ok": check.ok, "test_accuracy": result["accuracy"],
            "train_accuracy": history[-1]["train_accuracy"]}


if __name__ == "__main__":
    cli(main, __doc__)
