r"""Case ``training``: whole ``fit`` calls, the epoch shuffle, checkpoint save and resume.

Four comparisons, each in interleaved rounds (median of per-round ratios):

- **fit call**: ``fn.fit`` for ``E`` epochs (warm: its compiled epoch is cached after the
  warm-up call) against the stax per-step loop over the same ``E`` epochs (the digits
  MLP 64-128-128-10, Adam 1e-3, batch 64, the 1792 digits of the ``digits`` case). The
  training-v2 target: ``fit`` ≤ 0.85× the stax loop for ``E = 40``.
- **shuffle**: the hash-sort permutation of ``fn.train.shuffle`` against
  ``jax.random.permutation`` (both jitted, one call = one permutation of ``n`` rows), at
  ``n`` = 1797 (digits) and 60 000 (MNIST). ``fit`` shuffles once per epoch; this is why it
  keeps its own permutation.
- **checkpoint save**: a 100 MB pytree (4 random float32 leaves of 25 MB) saved as one step of
  ``fn.checkpoint.CheckpointRun`` (orbax, synchronous, atomic) against ``np.save`` of the
  same arrays (4 files, no fsync) into a fresh directory each time. Target ≤ 1.5×.
- **resume**: ``fit(..., resume=True)`` from a checkpoint at the last epoch (restore, no
  training) against the same ``fit`` with ``epochs=0`` and no checkpoint; the difference
  (median of per-round differences) is what resuming adds. Target ≤ 1 s.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks._common import (
    CaseResult,
    Ctx,
    Table,
    batches,
    epoch_permutation,
    fmt,
    fmt_ratio,
    lecun_init,
    load_digits_arrays,
    require_funnet,
)
from benchmarks._peers import Stax, funnet_model, funnet_params
from benchmarks._timing import interleaved

SIZES = (64, 128, 128, 10)
BATCH = 64
N_USED = 1792


class StaxLoop:
    """``epochs`` epochs of the stax per-step loop (host batches, as in ``digits``)."""

    def __init__(self, init, tx, x, y, epochs: int):
        self.peer, self.x, self.y, self.epochs, self.calls = Stax(init, tx), x, y, epochs, 0

    def __call__(self) -> Any:
        out = None
        for e in range(self.epochs):
            out = self.peer.epoch(*batches(self.x, self.y,
                                           epoch_permutation(len(self.x), e), BATCH))
        self.calls += 1
        return out


class FitCall:
    def __init__(self, fn, init, tx, x, y, epochs: int):
        self.fn, self.tx, self.epochs = fn, tx, epochs
        self.model = funnet_model(fn, init)
        self.params = funnet_params(fn, self.model, init)
        self.data = (jnp.asarray(x), jnp.asarray(y))

    def __call__(self) -> Any:
        params, _ = self.fn.fit(self.model, self.params, self.data,
                                loss=self.fn.softmax_cross_entropy, optimizer=self.tx,
                                epochs=self.epochs, batch_size=BATCH, key=jax.random.key(0),
                                progress=False)
        return params


def _fit_call(ctx: Ctx, fn, res: CaseResult) -> None:
    x_all, y_all, _ = load_digits_arrays(fn)
    x, y = x_all[:N_USED], y_all[:N_USED]
    init = lecun_init(SIZES, seed=0)
    tx = optax.adam(1e-3)
    epochs = ctx.pick(10, 40)
    comps = {"stax + optax loop": StaxLoop(init, tx, x, y, epochs),
             "funnet fit": FitCall(fn, init, tx, x, y, epochs)}
    cmp = interleaved(comps, baseline="stax + optax loop", rounds=ctx.pick(3, 7), warmup=1)
    table = Table(f"training: one whole call of {epochs} epochs, warm (digits MLP, Adam, "
                  f"batch {BATCH}, {N_USED // BATCH} steps/epoch)",
                  ["loop", "first call s", "s/call", "× stax loop", "target"])
    for name, r in cmp.results.items():
        table.add(name, fmt(r.first_s, ".2f"), fmt(r.median_s, ".3f"),
                  fmt_ratio(cmp.ratio(name)), "≤ 0.85×" if name == "funnet fit" else "")
    res.tables.append(table)
    res.data["fit_call"] = cmp.to_dict()


def _shuffle(ctx: Ctx, fn, res: CaseResult) -> None:
    table = Table("training: one epoch's permutation, jitted",
                  ["rows", "jax.random.permutation ms", "hash-sort shuffle ms", "× permutation"])
    key = jax.random.key(0)
    for n in (1797, 60_000):
        perm = jax.jit(lambda k, n=n: jax.random.permutation(k, n))
        mine = jax.jit(lambda k, n=n: fn.train.shuffle(k, n))
        cmp = interleaved({"permutation": lambda p=perm: p(key), "shuffle": lambda m=mine: m(key)},
                          baseline="permutation", rounds=ctx.pick(5, 15), warmup=1,
                          min_time=ctx.pick(0.02, 0.1))
        table.add(n, fmt(cmp.results["permutation"].median_s, ".3f", scale=1e3),
                  fmt(cmp.results["shuffle"].median_s, ".3f", scale=1e3),
                  fmt_ratio(cmp.ratio("shuffle")))
        res.data[f"shuffle_{n}"] = cmp.to_dict()
    res.tables.append(table)


def _checkpoint(ctx: Ctx, fn, res: CaseResult) -> None:
    leaves = 4
    n = (100 * 2**20) // 4 // leaves
    rng = np.random.default_rng(0)  # random bytes: nothing for a compressor to win
    tree = {f"w{i}": jnp.asarray(rng.standard_normal(n, np.float32)) for i in range(leaves)}
    host = {k: np.asarray(v) for k, v in tree.items()}
    root = Path(tempfile.mkdtemp(prefix="funnet-bench-ckpt-"))
    counter = iter(range(10**6))
    try:
        run = fn.checkpoint.CheckpointRun(root / "orbax", keep=1)

        def orbax_save():
            run.save(next(counter) + 1, tree)

        def numpy_save():
            d = root / f"np{next(counter)}"
            d.mkdir()
            for k, v in host.items():
                np.save(d / f"{k}.npy", v)
            shutil.rmtree(d)

        cmp = interleaved({"np.save": numpy_save, "orbax save": orbax_save},
                          baseline="np.save", rounds=ctx.pick(3, 7), warmup=1)
        run.close()
        table = Table("training: checkpoint save of a 100 MB pytree (4 float32 leaves)",
                      ["how", "s/save", "× np.save", "target"])
        for name, r in cmp.results.items():
            table.add(name, fmt(r.median_s, ".3f"), fmt_ratio(cmp.ratio(name)),
                      "≤ 1.5×" if name == "orbax save" else "")
        res.tables.append(table)
        res.data["checkpoint"] = cmp.to_dict()
        _resume(ctx, fn, res, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _resume(ctx: Ctx, fn, res: CaseResult, root: Path) -> None:
    x_all, y_all, _ = load_digits_arrays(fn)
    init = lecun_init(SIZES, seed=0)
    model = funnet_model(fn, init)
    params = funnet_params(fn, model, init)
    tx = optax.adam(1e-3)
    data = (jnp.asarray(x_all[:N_USED]), jnp.asarray(y_all[:N_USED]))
    kw = {"loss": fn.softmax_cross_entropy, "optimizer": tx, "batch_size": BATCH,
          "key": jax.random.key(0), "progress": False}
    fn.fit(model, params, data, epochs=2, checkpoint=root / "run", **kw)

    comps = {"fit, epochs=0": lambda: fn.fit(model, params, data, epochs=0, **kw)[0],
             "fit, resume at the last epoch": lambda: fn.fit(
                 model, params, data, epochs=2, checkpoint=root / "run", resume=True, **kw)[0]}
    cmp = interleaved(comps, baseline="fit, epochs=0", rounds=ctx.pick(3, 7), warmup=1)
    base, resumed = (cmp.results[k].times for k in comps)
    diffs = [b - a for a, b in zip(base, resumed) if a is not None and b is not None]
    added = statistics.median(diffs) if diffs else None
    table = Table("training: what resuming adds (restore from orbax, signature check)",
                  ["fit, epochs=0 s", "fit resume s", "added s (median of rounds)", "target"])
    table.add(fmt(cmp.results["fit, epochs=0"].median_s, ".3f"),
              fmt(cmp.results["fit, resume at the last epoch"].median_s, ".3f"),
              fmt(added, ".3f"), "≤ 1 s")
    res.tables.append(table)
    res.data["resume_added_s"] = added
    res.data["resume"] = cmp.to_dict()


def run(ctx: Ctx) -> CaseResult:
    fn = require_funnet(ctx)
    res = CaseResult()
    _fit_call(ctx, fn, res)
    _shuffle(ctx, fn, res)
    _checkpoint(ctx, fn, res)
    return res
