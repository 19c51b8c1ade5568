r"""Case ``gradmethods``: time to the full gradient of a scalar loss of N parameters.

``f(θ)``: a one-hidden-layer tanh MLP with ``D_IN = 8`` inputs, ``h`` hidden units and one
output, squared error on a fixed batch of 32, all parameters in one flat vector ``θ``
(``N = h·(D_IN + 2) + 1``). Methods (docs/math.md §7):

- reverse mode: ``jax.jit(jax.grad(f))`` — one forward + one backward pass, ``O(N)``;
- forward mode: one JVP per basis vector ``e_i`` (what ``jax.jacfwd`` does), vmapped
  ``CHUNK`` at a time with ``lax.map(batch_size=CHUNK)`` to bound memory, ``O(N²)``;
- central differences: ``(f(θ + Δe_i) - f(θ - Δe_i)) / 2Δ``, 2N forward passes, vmapped
  the same way, ``O(N²)``.

A method is skipped at the next N once its predicted time per call (``t · (N'/N)^p``,
``p = 1`` for reverse, ``2`` otherwise) exceeds the budget. Also reported: the relative
error ``‖g - g_rev‖ / ‖g_rev‖`` (float32). Plot: ``OUT/gradmethods.png`` (log-log).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import CaseResult, Ctx, Table, fmt, fmt_ratio
from benchmarks._timing import interleaved

D_IN = 8
N_SAMPLES = 32
CHUNK = 128
DELTA = 1e-3
REVERSE, FORWARD, CENTRAL = "reverse (jax.grad)", "forward (N JVPs)", "central diff (2N fwd)"
POWER = {REVERSE: 1, FORWARD: 2, CENTRAL: 2}


def make_loss(n_target: int, *, seed: int = 0) -> tuple[Callable[[jax.Array], jax.Array],
                                                         jax.Array]:
    """``(f, θ0)`` with ``len(θ0) ≈ n_target``: tanh MLP D_IN-h-1, mean squared error."""
    h = max(1, round((n_target - 1) / (D_IN + 2)))
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.standard_normal((N_SAMPLES, D_IN)).astype(np.float32))
    y = jnp.asarray(rng.standard_normal(N_SAMPLES).astype(np.float32))
    n = h * (D_IN + 2) + 1
    theta = jnp.asarray((rng.standard_normal(n) / np.sqrt(D_IN)).astype(np.float32))

    def f(theta: jax.Array) -> jax.Array:
        w1 = theta[: D_IN * h].reshape(D_IN, h)
        b1 = theta[D_IN * h: D_IN * h + h]
        w2 = theta[D_IN * h + h: D_IN * h + 2 * h]
        b2 = theta[-1]
        pred = jnp.tanh(x @ w1 + b1) @ w2 + b2
        return 0.5 * jnp.mean((pred - y) ** 2)

    return f, theta


def gradient_fns(f: Callable[[jax.Array], jax.Array], n: int
                 ) -> dict[str, Callable[[jax.Array], jax.Array]]:
    """The three jitted ``θ -> ∇f(θ)`` of the module docstring."""
    idx = jnp.arange(n)

    def forward(theta):
        def one(i):
            e = jnp.zeros_like(theta).at[i].set(1.0)
            return jax.jvp(f, (theta,), (e,))[1]

        return jax.lax.map(one, idx, batch_size=CHUNK)

    def central(theta):
        def one(i):
            e = jnp.zeros_like(theta).at[i].set(DELTA)
            return (f(theta + e) - f(theta - e)) / (2 * DELTA)

        return jax.lax.map(one, idx, batch_size=CHUNK)

    return {REVERSE: jax.jit(jax.grad(f)), FORWARD: jax.jit(forward), CENTRAL: jax.jit(central)}


def plot(rows: list[dict[str, Any]], path) -> str | None:
    """Log-log time vs N per method; returns an error text instead of raising."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no plot: {exc}"
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, marker in zip((REVERSE, FORWARD, CENTRAL), "osd", strict=True):
        pts = [(r["n"], r["median_s"][method]) for r in rows if r["median_s"].get(method)]
        if pts:
            ax.loglog(*zip(*pts, strict=True), marker=marker, label=method)
    ax.set_xlabel("number of parameters N")
    ax.set_ylabel("seconds per full gradient")
    ax.set_title("time to the full gradient")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def run(ctx: Ctx) -> CaseResult:
    targets = ctx.pick([100, 300, 1_000, 3_000, 10_000, 100_000],
                       [100, 300, 1_000, 3_000, 10_000, 30_000, 100_000])
    budget = ctx.pick(0.25, 5.0)  # seconds per call before a method is dropped
    rounds = ctx.pick(3, 5)
    last: dict[str, tuple[int, float]] = {}
    rows: list[dict[str, Any]] = []
    table = Table(f"gradmethods: seconds per full gradient (budget {budget} s per call)",
                  ["N", REVERSE, FORWARD, "× reverse", "rel err", CENTRAL, "× reverse",
                   "rel err"])
    for target in targets:
        f, theta = make_loss(target)
        n = int(theta.shape[0])
        fns = gradient_fns(f, n)
        comps: dict[str, Callable[[], Any]] = {}
        skipped: dict[str, str] = {}
        for method, g in fns.items():
            if method in last:
                n0, t0 = last[method]
                predicted = t0 * (n / n0) ** POWER[method]
                if predicted > budget:
                    skipped[method] = f"skipped (~{predicted:.2g} s)"
                    continue
            comps[method] = lambda g=g, theta=theta: g(theta)
        cmp = interleaved(comps, baseline=REVERSE, rounds=rounds, warmup=1,
                          min_time=ctx.pick(0.02, 0.1))
        g_rev = np.asarray(cmp.results[REVERSE].last)
        row: dict[str, Any] = {"n": n, "median_s": {}, "first_s": {}, "ratio": {},
                               "rel_err": {}, "skipped": skipped}
        cells = [f"{n:,}"]
        for method in (REVERSE, FORWARD, CENTRAL):
            r = cmp.results.get(method)
            if r is None or not r.ok:
                why = skipped.get(method) or (r.error if r else "")
                cells += [why or "—"] + ([] if method == REVERSE else ["—", "—"])
                continue
            last[method] = (n, r.median_s)
            row["median_s"][method] = r.median_s
            row["first_s"][method] = r.first_s
            cells.append(fmt(r.median_s, ".3g"))
            if method != REVERSE:
                err = float(np.linalg.norm(np.asarray(r.last) - g_rev) /
                            max(np.linalg.norm(g_rev), 1e-30))
                row["ratio"][method] = cmp.ratio(method)
                row["rel_err"][method] = err
                cells += [fmt_ratio(cmp.ratio(method)), fmt(err, ".1e")]
        table.add(*cells)
        rows.append(row)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    png = ctx.out_dir / "gradmethods.png"
    err = plot(rows, png)
    table.notes += [
        (f"f: tanh MLP {D_IN}-h-1, squared error, batch {N_SAMPLES}; float32; "
        f"forward/central vmapped {CHUNK} basis vectors at a time; Δ = {DELTA}"),
        "× reverse: median of per-round ratios; reverse mode grows ~N, the others ~N²",
        err or f"plot: {png}",
    ]
    return CaseResult(tables=[table], data={"rows": rows, "png": str(png) if not err else None})
