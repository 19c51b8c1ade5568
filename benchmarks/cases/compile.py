"""Case ``compile``: cold start of the digits model in each library.

Each measurement builds the library's model, params and optimiser state from the shared
numpy init, then calls ``jax.clear_caches()`` and records

- ``first step``: the first jitted training step (trace + compile + run);
- ``first epoch``: the first step plus the other 27 steps of epoch 1 (for the scan peer
  the one epoch call; for ``fn.fit`` one call with ``epochs=1``, which also includes
  whatever set-up ``fit`` does inside, e.g. the optimiser state).

The compared number is ``first epoch``; rounds are interleaved (rotating order), and
the funnet entries are also compared to the median peer of each round.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from benchmarks._common import (
    CaseResult,
    Ctx,
    Table,
    batches,
    epoch_permutation,
    fmt,
    fmt_ratio,
    guarded,
    lecun_init,
    load_digits_arrays,
    require_funnet,
)
from benchmarks._peers import PEERS, FunnetStep, RawJax
from benchmarks._timing import Timed, interleaved
from benchmarks.cases.digits import BATCH, FIT_NAME, LR, N_USED, SIZES, FitRunner


def prebuilt(make: Callable[[], Any], count: int) -> Callable[[], Any]:
    """``make`` called ``count`` times now (warm caches, fast); returns them one per call.

    Building after a ``clear_caches()`` would recompile every small eager op of the
    library's set-up: seconds of wall time that the measurement excludes anyway.
    """
    built = [make() for _ in range(count)]
    return built.pop


def cold_start(make: Callable[[], Any], xb, yb) -> Callable[[], Timed]:
    """Competitor: take a built peer, clear jax's caches, time its first step and epoch."""

    def call() -> Timed:
        peer = make()
        jax.clear_caches()
        t1 = time.perf_counter()
        if peer.kind == "per-step":
            jax.block_until_ready(peer.step(xb[0], yb[0]))
            t2 = time.perf_counter()
            out = None
            for i in range(1, len(xb)):
                out = peer.step(xb[i], yb[i])
        else:
            out = peer.epoch(xb, yb)
            t2 = None
        jax.block_until_ready(out)
        t3 = time.perf_counter()
        return Timed(t3 - t1, {"first_step_s": (t2 or t3) - t1, "first_epoch_s": t3 - t1})

    return call


def cold_fit(make: Callable[[], FitRunner]) -> Callable[[], Timed]:
    """Competitor: take a built funnet model + params, clear jax's caches, ``fit(epochs=1)``."""

    def call() -> Timed:
        runner = make()
        jax.clear_caches()
        wall, _ = runner.fit(1)
        return Timed(wall, {"first_step_s": None, "first_epoch_s": wall})

    return call


def run(ctx: Ctx) -> CaseResult:
    x, y, _ = load_digits_arrays(ctx.fn)
    x, y = x[:N_USED], y[:N_USED]
    xb, yb = batches(x, y, epoch_permutation(len(x), 0), BATCH)
    init = lecun_init(SIZES, seed=0)
    tx = optax.adam(LR)

    rounds = ctx.pick(1, 5)
    comps: dict[str, Callable[[], Any]] = {
        name: cold_start(prebuilt(lambda make=make: make(init, tx), rounds), xb, yb)
        for name, make in PEERS.items()}
    missing: dict[str, str] = {}
    fsteps, err = guarded(lambda: prebuilt(
        lambda: FunnetStep(require_funnet(ctx), init, tx), rounds))
    if fsteps is not None:
        comps[FunnetStep.name] = cold_start(fsteps, xb, yb)
    else:
        missing[FunnetStep.name] = err or ""
    fits, err = guarded(lambda: prebuilt(
        lambda: FitRunner(require_funnet(ctx), init, x, y, tx), rounds))
    if fits is not None:
        comps[FIT_NAME] = cold_fit(fits)
    else:
        missing[FIT_NAME] = err or ""

    cmp = interleaved(comps, baseline=RawJax.name, rounds=rounds, warmup=0)
    jax.clear_caches()
    jnp.zeros(()).block_until_ready()

    peers = [n for n in PEERS if cmp.results[n].ok]
    median_peer: list[float | None] = []
    for r in range(rounds):
        vals = [cmp.results[n].times[r] for n in peers if cmp.results[n].times[r] is not None]
        median_peer.append(statistics.median(vals) if vals else None)

    res = CaseResult()
    table = Table(
        f"compile: cold start of the digits model, fresh jax.clear_caches() ({rounds} rounds)",
        ["library / loop", "first step s", "first epoch s", "× raw per-step",
         "× median peer", "note"])
    for name, r in cmp.results.items():
        ok = [e for e in r.extras if e]

        def med(key: str, ok=ok) -> float | None:
            vals = [e[key] for e in ok if e.get(key) is not None]
            return statistics.median(vals) if vals else None

        vs_median = None
        if name not in PEERS:
            ratios = [t / m for t, m in zip(r.times, median_peer, strict=True)
                      if t is not None and m]
            vs_median = statistics.median(ratios) if ratios else None
        table.add(name, fmt(med("first_step_s"), ".2f"),
                  fmt(r.median_s, ".2f"), fmt_ratio(cmp.ratio(name)), fmt_ratio(vs_median),
                  r.error or "")
        if name in PEERS and r.error:
            res.failures.append(f"compile: peer {name} failed: {r.error}")
    for name, why in missing.items():
        table.add(name, "—", "—", "—", "—", f"funnet: {why}")
    mp = [m for m in median_peer if m is not None]
    table.notes += [
        (f"median peer first epoch: {fmt(statistics.median(mp) if mp else None, '.2f')} s "
        "(median over the non-funnet peers, per round)"),
        "fn.fit's first epoch includes the set-up done inside fit (optimiser state, ...)",
        "target: funnet first epoch no slower than the median peer (× median peer ≤ 1)",
    ]
    res.tables.append(table)
    res.data = {"comparison": cmp.to_dict(), "median_peer_s": median_peer,
                "extras": {n: r.extras for n, r in cmp.results.items()}, "missing": missing}
    return res
