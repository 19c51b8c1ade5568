"""Case ``wide``: MLP 784-1024-1024-10 (ReLU), batch 512, SGD, synthetic data.

Per training step: ms, achieved GFLOP/s counted from the matmuls the step executes,
``(6 W − 2 d₀ d₁) B`` (:func:`step_flops`; biases and activations ignored; the nominal
``6 W B`` of the issue is shown in a note), and that as a
fraction of the float32 matmul rate measured in the same rounds (``MATMUL_N``³ matmul,
``2 N³`` FLOP) — a fair ceiling for a network made of matmuls. Fractions and the
throughput ratio to raw jax are medians of per-round ratios.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._common import (
    CaseResult,
    Ctx,
    Table,
    fmt,
    fmt_ratio,
    guarded,
    lecun_init,
    require_funnet,
)
from benchmarks._peers import FunnetStep, RawJax
from benchmarks._timing import interleaved

SIZES = (784, 1024, 1024, 10)
BATCH = 512
LR = 0.01
MATMUL_N = 2048

RAW = "raw jax + optax.sgd (per-step)"
FUNNET = "funnet make_step (per-step)"
MATMUL = f"matmul {MATMUL_N}³ f32 (ceiling)"


def n_weights(sizes: tuple[int, ...]) -> int:
    """Number of weight-matrix entries ``Σ d_in · d_out``."""
    return sum(a * b for a, b in itertools.pairwise(sizes))


def step_flops(sizes: tuple[int, ...], batch: int) -> int:
    """Matmul FLOP of one SGD step: forward ``2 W B``, weight gradients ``2 W B``, input
    gradients ``2 (W − d₀ d₁) B`` — none for the first layer, whose input (the data) needs
    no gradient, so XLA does not compute it (its compiled step has 8 matmuls, not 9)."""
    return (6 * n_weights(sizes) - 2 * sizes[0] * sizes[1]) * batch


def run(ctx: Ctx) -> CaseResult:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((BATCH, SIZES[0])).astype(np.float32))
    y = jnp.asarray(rng.integers(0, SIZES[-1], BATCH).astype(np.int32))
    init = lecun_init(SIZES, seed=0)
    tx = optax.sgd(LR)

    raw = RawJax(init, tx)
    competitors: dict[str, Callable[[], Any]] = {RAW: lambda: raw.step(x, y)}
    fstep, fn_err = guarded(lambda: FunnetStep(require_funnet(ctx), init, tx))
    if fstep is not None:
        competitors[FUNNET] = lambda: fstep.step(x, y)
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (MATMUL_N, MATMUL_N), jnp.float32)
    b = jax.random.normal(kb, (MATMUL_N, MATMUL_N), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    competitors[MATMUL] = lambda: matmul(a, b)

    rounds = ctx.pick(3, 10)
    cmp = interleaved(competitors, baseline=RAW, rounds=rounds, warmup=1,
                      min_time=ctx.pick(0.05, 0.2))
    step_flop = step_flops(SIZES, BATCH)
    mm_flop = 2 * MATMUL_N**3

    res = CaseResult()
    table = Table(f"wide: MLP 784-1024-1024-10, batch {BATCH}, SGD ({rounds} rounds)",
                  ["entry", "first call s", "ms/call", "GFLOP/s", "fraction of matmul rate",
                   "throughput × raw jax", "note"])
    for name, r in cmp.results.items():
        flop = mm_flop if name == MATMUL else step_flop
        med = r.median_s
        gflops = flop / med / 1e9 if med else None
        # (flop / t_name) / (mm_flop / t_mm), per round, median
        frac = cmp.ratio(MATMUL, to=name)
        frac = frac * flop / mm_flop if frac is not None else None
        thr = cmp.ratio(RAW, to=name) if name != MATMUL else None
        table.add(name, fmt(r.first_s, ".2f"), fmt(med, ".2f", scale=1e3), fmt(gflops, ".1f"),
                  fmt(frac, ".2f"), fmt_ratio(thr), r.error or "")
        if name == RAW and r.error:
            res.failures.append(f"wide: {RAW} failed: {r.error}")
    if fstep is None:
        table.add(FUNNET, "—", "—", "—", "—", "—", f"funnet: {fn_err}")
    table.notes += [
        (f"FLOP per step = (6 W - 2·{SIZES[0]}·{SIZES[1]}) × {BATCH} = {step_flop / 1e9:.2f} G "
        f"(W = {n_weights(SIZES):,} weights; the nominal 6 W B = "
        f"{6 * n_weights(SIZES) * BATCH / 1e9:.2f} G counts the first layer's input gradient, "
        "which is not computed)"),
        "fraction and throughput: medians of per-round ratios (same round, same machine state)",
        "target: funnet ≥ 0.95× raw jax throughput",
    ]
    res.tables.append(table)
    res.data = {"comparison": cmp.to_dict(), "step_flop": step_flop, "matmul_flop": mm_flop,
                "funnet_error": fn_err}
    return res
