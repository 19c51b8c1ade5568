"""Case ``activations``: forward + backward of each activation on 4M float32 values.

Each entry is ``jax.jit(jax.grad(lambda x: f(x).sum()))`` on ``x ~ 3·N(0, 1)`` of
``2**22`` values, for ``f`` = funnet's activation, the ``jax.nn`` equivalent, and the
plain textbook formula differentiated by ``jax.grad``. Baseline: ``jax.nn`` (the formula
for hard_logistic, which ``jax.nn`` does not have: its ``hard_sigmoid`` has slope 1/6).

Second table: the digits per-step raw-jax training loop (the ``digits`` case's peer)
with the hidden activation swapped between the ``jax.nn`` function and funnet's,
ms/epoch and the median per-round ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

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
from benchmarks._peers import RawJax
from benchmarks._timing import interleaved
from benchmarks.cases.digits import BATCH, LR, N_USED, SIZES, EpochCompetitor

N_VALUES = 2**22
NAMES = ("logistic", "tanh", "hard_logistic", "hard_tanh", "relu", "leaky_relu", "elu",
         "softplus")

#: the jax.nn counterpart (default hyperparameters match: slope 0.01, alpha 1)
JAX_NN: dict[str, Callable[[jax.Array], jax.Array] | None] = {
    "logistic": jax.nn.sigmoid,
    "tanh": jax.nn.tanh,
    "hard_logistic": None,
    "hard_tanh": jax.nn.hard_tanh,
    "relu": jax.nn.relu,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
}

#: the textbook formulas of docs/math.md §2, written naively
FORMULA: dict[str, Callable[[jax.Array], jax.Array]] = {
    "logistic": lambda x: 1 / (1 + jnp.exp(-x)),
    "tanh": lambda x: (jnp.exp(x) - jnp.exp(-x)) / (jnp.exp(x) + jnp.exp(-x)),
    "hard_logistic": lambda x: jnp.maximum(jnp.minimum(0.25 * x + 0.5, 1.0), 0.0),
    "hard_tanh": lambda x: jnp.maximum(jnp.minimum(x, 1.0), -1.0),
    "relu": lambda x: jnp.maximum(x, 0.0),
    "leaky_relu": lambda x: jnp.where(x > 0, x, 0.01 * x),
    "elu": lambda x: jnp.where(x > 0, x, jnp.exp(x) - 1),
    "softplus": lambda x: jnp.log(1 + jnp.exp(x)),
}


def grad_of_sum(f: Callable[[jax.Array], jax.Array]) -> Callable[[jax.Array], jax.Array]:
    """``jit(grad(x ↦ Σ f(x)))``: one forward and one backward pass."""
    return jax.jit(jax.grad(lambda x: f(x).sum()))


def reference(name: str) -> tuple[str, Callable[[jax.Array], jax.Array]]:
    """The baseline for ``name``: ``("jax.nn", f)`` or ``("formula", f)``."""
    f = JAX_NN[name]
    return ("jax.nn", f) if f is not None else ("formula", FORMULA[name])


def run(ctx: Ctx) -> CaseResult:
    res = CaseResult()
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (N_VALUES,), jnp.float32)
    rounds = ctx.pick(5, 15)
    elementwise = Table(
        f"activations: jit(grad(sum(f(x)))) on {N_VALUES:,} float32 ({rounds} rounds)",
        ["activation", "baseline", "baseline ms", "funnet ms", "funnet × baseline",
         "formula ms", "formula × baseline", "note"])
    data: dict[str, Any] = {"elementwise": {}, "in_step": {}}
    for name in NAMES:
        base_name, base_f = reference(name)
        comps: dict[str, Callable[[], Any]] = {}
        g_base = grad_of_sum(base_f)
        comps[base_name] = lambda g=g_base: g(x)
        f_fn, err = guarded(lambda n=name: getattr(require_funnet(ctx).activations, n))
        if f_fn is not None:
            g_fn = grad_of_sum(f_fn)
            comps["funnet"] = lambda g=g_fn: g(x)
        if base_name != "formula":
            g_formula = grad_of_sum(FORMULA[name])
            comps["formula"] = lambda g=g_formula: g(x)
        cmp = interleaved(comps, baseline=base_name, rounds=rounds, warmup=1,
                          min_time=ctx.pick(0.03, 0.1))
        r = cmp.results
        fn_r = r.get("funnet")
        note = (f"funnet: {err}" if err else fn_r.error or "") if fn_r or err else ""
        formula_ms = (r["formula"].median_s if "formula" in r else r[base_name].median_s)
        formula_ratio = cmp.ratio("formula") if "formula" in r else 1.0
        elementwise.add(name, base_name, fmt(r[base_name].median_s, ".2f", scale=1e3),
                        fmt(fn_r.median_s if fn_r else None, ".2f", scale=1e3),
                        fmt_ratio(cmp.ratio("funnet") if fn_r else None),
                        fmt(formula_ms, ".2f", scale=1e3), fmt_ratio(formula_ratio), note)
        data["elementwise"][name] = cmp.to_dict()
    elementwise.notes += [
        ("ratios: median of per-round ratios; hard_logistic has no jax.nn counterpart "
        "(jax.nn.hard_sigmoid is relu6(x+3)/6), so its baseline is the formula"),
        "target: funnet ≤ 1.05× jax.nn",
    ]
    res.tables.append(elementwise)

    in_step = Table(
        f"activations inside the digits train step (raw jax per-step loop, {SIZES}, Adam)",
        ["activation", "baseline", "baseline ms/epoch", "funnet ms/epoch", "funnet × baseline",
         "note"])
    xd, yd, _ = load_digits_arrays(ctx.fn)
    xd, yd = xd[:N_USED], yd[:N_USED]
    init = lecun_init(SIZES, seed=0)
    step_names = NAMES if not ctx.quick else ("logistic", "tanh", "relu", "elu")
    step_rounds = ctx.pick(3, 10)
    for name in step_names:
        base_name, base_f = reference(name)
        f_fn, err = guarded(lambda n=name: getattr(require_funnet(ctx).activations, n))
        if f_fn is None:
            in_step.add(name, base_name, "—", "—", "—", f"funnet: {err}")
            continue
        comps = {
            base_name: EpochCompetitor(RawJax(init, optax.adam(LR), act=base_f), xd, yd,
                                       batch=BATCH),
            "funnet": EpochCompetitor(RawJax(init, optax.adam(LR), act=f_fn), xd, yd,
                                      batch=BATCH),
        }
        cmp = interleaved(comps, baseline=base_name, rounds=step_rounds, warmup=1,
                          min_time=ctx.pick(0.03, 0.1))
        r = cmp.results
        in_step.add(name, base_name, fmt(r[base_name].median_s, ".2f", scale=1e3),
                    fmt(r["funnet"].median_s, ".2f", scale=1e3), fmt_ratio(cmp.ratio("funnet")),
                    r["funnet"].error or r[base_name].error or "")
        data["in_step"][name] = cmp.to_dict()
    if ctx.quick:
        in_step.notes.append(f"--quick: only {', '.join(step_names)}")
    res.tables.append(in_step)
    res.data = data
    return res
