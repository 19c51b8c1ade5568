"""Four ways to a gradient: by hand, numerical, symbolic, automatic (docs/math.md §7).

1. **Numerical.** ``f = σ`` at ``x = 1``, whose derivative ``σ(1 - σ)`` is known by hand.
   The error of the one-sided ``(f(x+Δ) - f(x))/Δ`` and the central
   ``(f(x+Δ) - f(x-Δ))/(2Δ)`` difference, in float64, as ``Δ`` goes from 1e-1 to 1e-12: it
   first falls (truncation error ``∝ Δ`` resp. ``Δ²``) then rises again (rounding error
   ``∝ ε/Δ``), a V on a log-log plot. Central differences reach a far smaller error.
2. **Symbolic.** sympy differentiates ``σ(σ(…σ(x)))``; the derivative's expression grows
   quadratically with the depth (each ``σ' = σ(1-σ)`` repeats the whole inner expression),
   while with common subexpressions shared (``sympy.cse``, what automatic differentiation
   does implicitly) it grows linearly.
3. **Automatic, forward vs reverse.** For a scalar loss of ``N`` parameters reverse mode
   needs one backward pass, forward mode ``N`` passes (one per input direction) and central
   differences ``2N`` forward evaluations. The passes are *counted* on the 2-4-1 network (an
   activation whose forward formula and derivative count their calls while each method is
   traced), and timed (jit, CPU) as ``N`` grows. On the same network all four gradients
   (hand-derived backprop, reverse, forward, numerical) agree; at full size
   ``funnet.check.check_model`` confirms it.

Run: ``python examples/gradient_methods.py [--small] [--out DIR]``.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import sympy
from _plumbing import cli, init_params, plt, save_figure
from jax.flatten_util import ravel_pytree

import funnet
from funnet.check import check_model

# ---------------------------------------------------------------------------------------
# 1. Numerical differentiation: truncation vs rounding.


def difference_errors(deltas: np.ndarray, *, x: float = 1.0) -> dict:
    """|error| of one-sided and central differences of σ at ``x``, float64, per Δ."""
    with jax.enable_x64(True):
        f = jax.jit(lambda v: funnet.logistic(v))
        exact = float(funnet.logistic.derivative(jnp.float64(x)))  # σ(1 - σ), by hand
        d = jnp.asarray(deltas, jnp.float64)
        fx, up, down = f(jnp.full_like(d, x)), f(x + d), f(x - d)
        one_sided = np.asarray((up - fx) / d)
        central = np.asarray((up - down) / (2 * d))
    return {"exact": exact, "one-sided": np.abs(one_sided - exact),
            "central": np.abs(central - exact)}


# ---------------------------------------------------------------------------------------
# 2. Symbolic differentiation: expression swell.


def symbolic_sizes(depth: int, *, at: float = 0.5) -> dict:
    """Size (``sympy.count_ops``) of ``f_n = σ(f_{n-1})`` and of ``f_n'`` for n = 1…depth."""
    x = sympy.Symbol("x")
    f = x
    rows = []
    for n in range(1, depth + 1):
        f = 1 / (1 + sympy.exp(-f))
        df = sympy.diff(f, x)
        replacements, reduced = sympy.cse(df)
        shared = sum(sympy.count_ops(e) for _, e in replacements) + sympy.count_ops(reduced[0])
        rows.append({"depth": n, "f": int(sympy.count_ops(f)), "df": int(sympy.count_ops(df)),
                     "df_cse": int(shared), "value": float(df.subs(x, at))})
    return {"rows": rows, "at": at}


def nested_logistic_grad(depth: int, at: float) -> float:
    """``d/dx σ(σ(…σ(x)))`` by reverse mode through funnet.logistic, float64."""

    def f(x):
        for _ in range(depth):
            x = funnet.logistic(x)
        return x

    with jax.enable_x64(True):
        return float(jax.grad(f)(jnp.float64(at)))


# ---------------------------------------------------------------------------------------
# 3. Automatic differentiation: counting and timing passes.

CALLS = {"forward": 0, "derivative": 0}


def _counted_f(x):
    CALLS["forward"] += 1  # one evaluation of the forward formula = one forward pass
    return jax.nn.sigmoid(x)


def _counted_df(x, y):
    CALLS["derivative"] += 1  # one use of σ' = one pass carrying derivatives
    return y * (1 - y)


COUNTED_LOGISTIC = funnet.define_activation("counted_logistic", _counted_f, _counted_df)


def count_passes(seed: int = 0, *, check: bool = True) -> dict:
    """Forward-formula and derivative calls of each method on the 2-4-1 network (N = 17).

    The methods run under ``jax.jit``: while they are traced the Python formulas run once per
    pass, so the counters count the passes each method's algorithm makes. With ``check``,
    ``funnet.check.check_model`` compares the four methods as well.
    """
    model = funnet.serial(funnet.Dense(4), funnet.ActivationLayer(COUNTED_LOGISTIC),
                          funnet.Dense(1))
    rng = np.random.default_rng(seed)
    params = (
        {"W": rng.standard_normal((2, 4)), "b": rng.standard_normal(4)},
        (),
        {"W": rng.standard_normal((4, 1)), "b": rng.standard_normal(1)},
    )
    x, y = rng.standard_normal((8, 2)), rng.standard_normal((8, 1))
    counts = {}
    with jax.enable_x64(True):
        theta, unravel = ravel_pytree(params)
        n = theta.size
        basis = jnp.eye(n)

        def loss(th):
            return funnet.mse(model.apply(unravel(th), x), y)

        def hand(th):
            _, g = funnet.backprop.value_and_grad(model, funnet.mse)(unravel(th), x, y)
            return ravel_pytree(g)[0]

        def reverse(th):
            _, pullback = jax.vjp(loss, th)  # one forward pass
            return pullback(jnp.ones(()))[0]  # one backward pass

        twin = funnet.forward_twin(model)  # custom_jvp wiring of the same hand derivatives

        def twin_loss(th):
            return funnet.mse(twin.apply(unravel(th), x), y)

        def forward(th):  # N forward passes, with tangent e_i each
            return jnp.stack([jax.jvp(twin_loss, (th,), (basis[i],))[1] for i in range(n)])

        def numerical(th, h=1e-6):  # 2N forward passes
            return jnp.stack([(loss(th + h * basis[i]) - loss(th - h * basis[i])) / (2 * h)
                              for i in range(n)])

        def counted(methods):  # the traced Python runs once: reset the counters per method
            def run_all(th):
                out = {}
                for name, method in methods.items():
                    CALLS.update(forward=0, derivative=0)
                    out[name] = method(th)
                    counts[name] = dict(CALLS)
                return out

            return run_all

        grads = jax.jit(counted({"hand": hand, "reverse": reverse, "numerical": numerical,
                                 "forward": forward}))(theta)
        grads = {name: np.asarray(grads[name]) for name in ("hand", "reverse", "forward",
                                                             "numerical")}
        counts = {name: counts[name] for name in grads}
        result = check_model(model, params, x, y, funnet.mse) if check else None
    diffs = {name: float(np.max(np.abs(g - grads["reverse"]))) for name, g in grads.items()}
    return {"n_params": int(n), "counts": counts, "max_abs_diff_vs_reverse": diffs,
            "check": result}


def _mlp(hidden: int) -> funnet.Layer:
    return funnet.serial(funnet.Dense(hidden), funnet.Tanh, funnet.Dense(hidden), funnet.Tanh,
                         funnet.Dense(1))


def _best_time(f, *args, repeat: int) -> float:
    jax.block_until_ready(f(*args))  # compile
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        times.append(time.perf_counter() - t)
    return min(times)


def time_methods(hidden_sizes, *, repeat: int, seed: int = 0) -> list[dict]:
    """Seconds per full gradient (jitted) by reverse, forward and numerical, per model size."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((32, 8)), rng.standard_normal((32, 1))
    rows = []
    for h in hidden_sizes:
        model = _mlp(h)
        theta, unravel = ravel_pytree(init_params(model, (-1, 8), seed=seed))

        def loss(th, model=model, unravel=unravel):
            return funnet.mse(model.apply(unravel(th), x), y)

        def numerical(th, loss=loss, step=1e-3):
            def one(e):
                return (loss(th + step * e) - loss(th - step * e)) / (2 * step)

            return jax.lax.map(one, jnp.eye(th.size, dtype=th.dtype), batch_size=256)

        twin = funnet.forward_twin(model)  # jax.jacfwd needs the custom_jvp wiring

        def twin_loss(th, twin=twin, unravel=unravel):
            return funnet.mse(twin.apply(unravel(th), x), y)

        rows.append({"hidden": h, "n_params": int(theta.size),
                     "reverse": _best_time(jax.jit(jax.grad(loss)), theta, repeat=repeat),
                     "forward": _best_time(jax.jit(jax.jacfwd(twin_loss)), theta, repeat=repeat),
                     "numerical": _best_time(jax.jit(numerical), theta, repeat=repeat)})
    return rows


# ---------------------------------------------------------------------------------------


def _plot(deltas, errors, symbolic, timings, out_dir) -> list:
    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name in ("one-sided", "central"):
        ax.loglog(deltas, np.maximum(errors[name], 1e-17), "o-", ms=3, label=name)
    ax.set_xlabel("step Δ")
    ax.set_ylabel("|numerical - exact σ'(1)|  (float64)")
    ax.set_title("truncation error (right) vs rounding error (left)")
    ax.invert_xaxis()
    ax.legend()
    paths.append(save_figure(fig, out_dir, "gradient_methods_numerical.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    rows = symbolic["rows"]
    depth = [r["depth"] for r in rows]
    ax.plot(depth, [r["df"] for r in rows], "o-", label="f'(x), sympy.diff")
    ax.plot(depth, [r["df_cse"] for r in rows], "s-", label="f'(x), shared subexpressions")
    ax.plot(depth, [r["f"] for r in rows], "^-", label="f(x) itself")
    ax.set_xlabel("depth n of f = σ(σ(…σ(x)))")
    ax.set_ylabel("operations in the expression")
    ax.set_title("symbolic differentiation: expression swell")
    ax.legend()
    paths.append(save_figure(fig, out_dir, "gradient_methods_symbolic.png"))

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    n = [r["n_params"] for r in timings]
    for name, marker in (("reverse", "o"), ("forward", "s"), ("numerical", "^")):
        ax.loglog(n, [r[name] for r in timings], marker + "-", label=name)
    ax.set_xlabel("parameters N")
    ax.set_ylabel("seconds per full gradient (jit, CPU)")
    ax.set_title("reverse: 1 backward pass; forward: N; numerical: 2N")
    ax.legend()
    paths.append(save_figure(fig, out_dir, "gradient_methods_autodiff.png"))
    return paths


def main(*, small: bool = False, out_dir: str = "examples/out") -> dict:
    """Run the three comparisons; print and plot them.

    Returns the numerical errors per Δ, the symbolic sizes per depth, the pass counts and
    agreement of the four methods on the 2-4-1 network, and the timings.
    """
    deltas = np.logspace(-1, -12, 45)
    errors = difference_errors(deltas)
    best = {k: (float(np.min(errors[k])), float(deltas[np.argmin(errors[k])]))
            for k in ("one-sided", "central")}
    print("1. numerical derivative of σ at x = 1, exact σ(1)(1 - σ(1)) ="
          f" {errors['exact']:.15f} (float64)")
    print(f"   {'Δ':>8}{'one-sided':>12}{'central':>12}")
    for i in range(0, len(deltas), 4):
        print(f"   {deltas[i]:8.0e}{errors['one-sided'][i]:12.1e}{errors['central'][i]:12.1e}")
    for k, (err, at) in best.items():
        print(f"   {k:<10} best error {err:.1e} at Δ = {at:.0e}; at Δ = 1e-12: {errors[k][-1]:.1e}")

    depth = 5 if small else 8
    symbolic = symbolic_sizes(depth)
    print(f"\n2. symbolic: d/dx of σ(σ(…σ(x))), sympy {sympy.__version__}")
    print(f"   {'depth':>5}{'ops in f':>10}{'ops in df':>11}{'with cse':>10}"
          f"{'df(0.5) sympy':>16}{'jax.grad':>16}")
    for r in symbolic["rows"]:
        r["jax"] = nested_logistic_grad(r["depth"], symbolic["at"])
        print(f"   {r['depth']:>5}{r['f']:>10}{r['df']:>11}{r['df_cse']:>10}{r['value']:>16.10f}"
              f"{r['jax']:>16.10f}")

    passes = count_passes(check=not small)
    n = passes["n_params"]
    print(f"\n3. the 2-4-1 network, N = {n} parameters, one scalar loss:")
    print(f"   {'method':<10}{'forward-formula calls':>23}{'derivative calls':>18}"
          f"{'max |g - reverse|':>19}")
    for name, c in passes["counts"].items():
        print(f"   {name:<10}{c['forward']:>23}{c['derivative']:>18}"
              f"{passes['max_abs_diff_vs_reverse'][name]:>19.1e}")
    if passes["check"] is not None:
        print(passes["check"])

    sizes = (4, 16) if small else (4, 8, 16, 32, 48)
    timings = time_methods(sizes, repeat=3 if small else 5)
    print(f"\n   time per full gradient (jit, {jax.devices()[0].platform}):")
    print(f"   {'N':>6}{'reverse':>11}{'forward':>11}{'numerical':>11}")
    for r in timings:
        print(f"   {r['n_params']:>6}{r['reverse']:>11.2e}{r['forward']:>11.2e}"
              f"{r['numerical']:>11.2e}")
    _plot(deltas, errors, symbolic, timings, out_dir)
    return {
        "deltas": deltas,
        "errors": errors,
        "best": best,
        "symbolic": symbolic["rows"],
        "n_params": n,
        "counts": passes["counts"],
        "max_abs_diff_vs_reverse": passes["max_abs_diff_vs_reverse"],
        "check_ok": None if passes["check"] is None else passes["check"].ok,
        "timings": timings,
    }


if __name__ == "__main__":
    cli(main, __doc__)
