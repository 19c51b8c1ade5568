r"""Case ``checkcost``: what ``funnet.check_model`` costs, in units of one ``jax.grad``.

The digits MLP of ``funnet train`` (64-128-128-10, ReLU, float32). Both competitors are
timed once compiled (a warm-up call first), in interleaved rounds; the table gives the
median of the per-round ratios:

- ``jax.grad``: one jitted ``jax.grad`` of the softmax cross-entropy on the batch;
- ``check_model``: every method but the numerical one (hand, formula, reverse, forward —
  one JVP per params leaf), the per-layer verdicts and the δ-trace, with the report built.

Two batches: 64 rows (a quick check) and the whole training split. The target of the
gradient-truth issue is ``check_model ≤ 5 ×`` one jitted ``jax.grad`` once compiled.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from benchmarks._common import CaseResult, Ctx, Table, fmt_ratio
from benchmarks._timing import interleaved

METHODS = ("hand", "formula", "reverse", "forward")


def run(ctx: Ctx) -> CaseResult:
    fn = ctx.fn
    result = CaseResult()
    table = Table("checkcost: check_model (all methods but numerical) per jax.grad, "
                  "once compiled", ["batch rows", "check_model / jax.grad (median of rounds)",
                                    "target"])
    splits = fn.data.split(fn.load_digits(), seed=0)
    model = fn.serial(fn.Dense(128), fn.Relu, fn.Dense(128), fn.Relu, fn.Dense(10))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 64))
    loss = fn.softmax_cross_entropy
    rows: dict[str, Any] = {}
    for n in (64, len(splits.train.x)):
        x, y = jnp.asarray(splits.train.x[:n]), jnp.asarray(splits.train.y[:n])
        grad = jax.jit(jax.grad(lambda p, x=x, y=y: loss(model.apply(p, x), y)))
        comps = {
            "jax.grad": lambda g=grad: g(params),
            "check_model": lambda x=x, y=y: fn.check_model(model, params, x, y, loss,
                                                           methods=METHODS).ok,
        }
        cmp = interleaved(comps, baseline="jax.grad", rounds=ctx.pick(3, 7), warmup=1,
                          min_time=ctx.pick(0.05, 0.2))
        ratio = cmp.ratio("check_model")
        rows[str(n)] = ratio
        table.add(n, fmt_ratio(ratio), "≤ 5×")
    table.notes.append("ratio > 5 at 64 rows: the report is built on the host (per-leaf "
                       "comparisons, layer verdicts), a fixed cost of a few ms that one "
                       "0.1 ms gradient cannot amortise")
    result.tables.append(table)
    result.data["ratio_by_batch"] = rows
    return result
