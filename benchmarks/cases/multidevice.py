"""Case ``multidevice``: data-parallel scaling of ``fn.fit(..., devices=...)``.

Only when ``len(jax.devices()) > 1`` (on a CPU, emulate with ``--host-devices N``).
Model 784-1024-1024-10, synthetic data of ``N_BATCHES`` batches of 512, SGD. Per-epoch
time of ``fit(devices=[first device])`` vs ``fit(devices=jax.devices())``, interleaved;
speedup = median of per-round ``t_1 / t_all``. Per-epoch times come from the same
``FitRunner`` logic as the ``digits`` case (history seconds, else a difference of calls).
A third runner, in the same rounds, shards the rows over the devices
(``fit(..., local_data=True)``): its cost against the replicated data is the all-reduce
of each batch's gathered rows.
"""

from __future__ import annotations

import jax
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
from benchmarks._timing import interleaved
from benchmarks.cases.digits import FitRunner

SIZES = (784, 1024, 1024, 10)
BATCH = 512
N_BATCHES = 8
LR = 0.01


class DeviceFit(FitRunner):
    """``FitRunner`` passing ``devices=`` to every ``fit`` call."""

    def __init__(self, *args, devices, local_data=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.devices, self.local_data = devices, local_data

    def fit(self, epochs, **kwargs):
        return super().fit(epochs, devices=self.devices, local_data=self.local_data,
                           **kwargs)


def run(ctx: Ctx) -> CaseResult:
    devices = jax.devices()
    res = CaseResult()
    table = Table("multidevice: fn.fit data-parallel scaling (784-1024-1024-10, batch 512)",
                  ["devices", "first epoch s", "ms/epoch", "speedup vs 1 device", "note"])
    res.tables.append(table)
    if len(devices) < 2:
        table.add(1, "—", "—", "—", "skipped: 1 device (emulate on CPU: --host-devices 2)")
        return res
    rng = np.random.default_rng(0)
    n = BATCH * N_BATCHES
    x = rng.standard_normal((n, SIZES[0])).astype(np.float32)
    y = rng.integers(0, SIZES[-1], n).astype(np.int32)
    init = lecun_init(SIZES, seed=0)
    tx = optax.sgd(LR)
    one, err1 = guarded(lambda: DeviceFit(require_funnet(ctx), init, x, y, tx, batch=BATCH,
                                          devices=devices[:1]))
    everything, err2 = guarded(lambda: DeviceFit(require_funnet(ctx), init, x, y, tx,
                                                 batch=BATCH, devices=devices))
    rows, err3 = guarded(lambda: DeviceFit(require_funnet(ctx), init, x, y, tx, batch=BATCH,
                                           devices=devices, local_data=True))
    if one is None or everything is None or rows is None:
        table.add(len(devices), "—", "—", "—", f"funnet: {err1 or err2 or err3}")
        return res
    k = len(devices)
    names = {"1": "1 device", str(k): f"{k} devices",
             f"{k}, rows": f"{k} devices, rows sharded"}
    runners = dict(zip(names.values(), (one, everything, rows)))
    cmp = interleaved(runners, baseline=names["1"], rounds=ctx.pick(3, 8), warmup=1,
                      fixed_inner=dict.fromkeys(runners, 1))
    for count, name in names.items():
        r = cmp.results[name]
        speedup = cmp.ratio(names["1"], to=name)
        table.add(count, fmt(r.first_s, ".2f"), fmt(r.median_s, ".1f", scale=1e3),
                  fmt_ratio(speedup), r.error or "")
    table.notes.append(f"devices: {[str(d) for d in devices]}; ideal speedup {k}×")
    cost = cmp.ratio(names[f"{k}, rows"], to=names[str(k)])
    if cost is not None:
        table.notes.append(f"rows sharded (local_data=True): epoch time {fmt_ratio(cost)} "
                           f"the replicated data's (median of per-round ratios)")
    res.data = {"comparison": cmp.to_dict()}
    return res
