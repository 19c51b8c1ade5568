"""Case ``backprop``: funnet's hand-derived ``value_and_grad`` vs ``jax.value_and_grad``.

For the digits model (64-128-128-10, batch 64) and the wide model (784-1024-1024-10,
batch 512), all jitted, same params and batch:

- ``jax.value_and_grad`` of a raw-jax MLP (baseline, always available);
- ``jax.value_and_grad`` of funnet's ``apply`` + ``fn.softmax_cross_entropy``;
- ``fn.backprop.value_and_grad(model, fn.softmax_cross_entropy)``.

Also reported: the largest absolute difference between funnet's hand gradients (and
loss) and the raw-jax autodiff ones for the same weights (a check, not a timing).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._common import (
    CaseResult,
    Ctx,
    Table,
    fmt,
    fmt_ratio,
    guarded,
    lecun_init,
    load_digits_arrays,
    require_funnet,
)
from benchmarks._peers import funnet_model, funnet_params, raw_apply, raw_params, xent
from benchmarks._timing import interleaved

RAW = "jax.value_and_grad (raw jax MLP)"
JAX_FN = "jax.value_and_grad (funnet apply)"
HAND = "fn.backprop.value_and_grad"

TARGET = 1.3


def max_abs_diff(a: Any, b: Any) -> float:
    """Largest ``|a - b|`` over two pytrees of the same structure."""
    diffs = jax.tree.map(lambda u, v: float(jnp.max(jnp.abs(u - v))), a, b)
    return max(jax.tree.leaves(diffs), default=0.0)


def _funnet_entries(ctx: Ctx, init) -> tuple[dict[str, Callable], Any]:
    fn = require_funnet(ctx)
    model = funnet_model(fn, init)
    params = funnet_params(fn, model, init)
    _, apply = model
    loss = fn.softmax_cross_entropy
    jax_vg = jax.jit(jax.value_and_grad(lambda p, x, y: loss(apply(p, x), y)))
    return {"jax": jax_vg, "hand_factory": lambda: jax.jit(fn.backprop.value_and_grad(
        model, loss))}, params


def bench_model(ctx: Ctx, label: str, init, x: jax.Array, y: jax.Array,
                table: Table, data: dict[str, Any], *, rounds: int) -> None:
    rp = raw_params(init)
    raw_vg = jax.jit(jax.value_and_grad(lambda p, x, y: xent(raw_apply(p, x), y)))
    comps: dict[str, Callable[[], Any]] = {RAW: lambda: raw_vg(rp, x, y)}
    notes: dict[str, str] = {}
    got, err = guarded(lambda: _funnet_entries(ctx, init))
    hand = None
    if got is None:
        notes[JAX_FN] = notes[HAND] = f"funnet: {err}"
    else:
        entries, fp = got
        comps[JAX_FN] = lambda: entries["jax"](fp, x, y)
        hand, herr = guarded(entries["hand_factory"])
        if hand is None:
            notes[HAND] = f"funnet: {herr}"
        else:
            comps[HAND] = lambda: hand(fp, x, y)
    cmp = interleaved(comps, baseline=RAW, rounds=rounds, warmup=1,
                      min_time=ctx.pick(0.03, 0.1))
    diff = None
    if hand is not None and cmp.results[HAND].ok:

        def check() -> float:
            (lv, g), (lr, gr) = hand(fp, x, y), raw_vg(rp, x, y)
            dense = [leaf for leaf in g if leaf != ()]  # drop the activations' empty params
            return max(abs(float(lv) - float(lr)), max_abs_diff(dense, gr))

        diff, derr = guarded(check)
        if derr:
            notes[HAND] = f"gradient check: {derr}"
    for name in (RAW, JAX_FN, HAND):
        r = cmp.results.get(name)
        if r is None:
            table.add(label, name, "—", "—", "—", "—", "—", notes.get(name, ""))
            continue
        to_jax_fn = cmp.ratio(name, to=JAX_FN) if JAX_FN in cmp.results else None
        table.add(label, name, fmt(r.first_s, ".2f"), fmt(r.median_s, ".1f", scale=1e6),
                  fmt_ratio(cmp.ratio(name)), fmt_ratio(to_jax_fn),
                  fmt(diff, ".1e") if name == HAND else "", r.error or notes.get(name, ""))
    data[label] = {"comparison": cmp.to_dict(), "max_abs_diff": diff, "notes": notes}


def run(ctx: Ctx) -> CaseResult:
    res = CaseResult()
    table = Table("backprop: value_and_grad of softmax cross-entropy, jitted",
                  ["model", "method", "first call s", "µs/call", "× raw jax.grad",
                   "× jax.grad (funnet apply)", "max |Δ| vs raw jax.grad", "note"])
    data: dict[str, Any] = {}
    xd, yd, _ = load_digits_arrays(ctx.fn)
    bench_model(ctx, "digits 64-128-128-10 / 64", lecun_init((64, 128, 128, 10), seed=0),
                jnp.asarray(xd[:64]), jnp.asarray(yd[:64]), table, data,
                rounds=ctx.pick(5, 15))
    rng = np.random.default_rng(0)
    xw = jnp.asarray(rng.standard_normal((512, 784)).astype(np.float32))
    yw = jnp.asarray(rng.integers(0, 10, 512).astype(np.int32))
    bench_model(ctx, "wide 784-1024-1024-10 / 512", lecun_init((784, 1024, 1024, 10), seed=0),
                xw, yw, table, data, rounds=ctx.pick(3, 10))
    table.notes += [
        "ratios: median of per-round ratios; max |Δ|: loss and every gradient leaf, float32",
        f"target: fn.backprop ≤ {TARGET}× jax.grad",
    ]
    res.tables.append(table)
    res.data = data
    return res
