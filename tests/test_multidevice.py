"""Data-parallel fit over 4 (fake) CPU devices agrees with single-device fit.

The device count of a process is fixed when JAX starts, so the check runs in a subprocess
with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` and reports back as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r"""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from jax.sharding import Mesh
    import funnet
    from funnet import train

    assert len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90).astype(np.int32)
    x = (rng.normal(0, 3, (3, 5))[y] + rng.normal(0, 1, (90, 5))).astype(np.float32)
    model = funnet.serial(funnet.Dense(16), funnet.Tanh, funnet.Dense(3))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 5))

    tx = optax.adam(0.02)

    def run(devices, grad="reverse", **kw):
        # 90 rows in batches of 8: the last batch is padded and masked
        kw = {"epochs": 3, **kw}
        # 21 validation rows: 4 devices score 6 each, the last chunk padded and masked
        return train.fit(model, params, (x, y), valid=(x[:21], y[:21]),
                         loss=funnet.softmax_cross_entropy, optimizer=tx, batch_size=8,
                         key=jax.random.PRNGKey(1), progress=False, devices=devices,
                         grad=grad, **kw)

    single, h1 = run(None)
    multi, h4 = run(jax.devices())
    mesh, _ = run(Mesh(np.array(jax.devices()), ("data",)), grad="hand")
    # checkpoint after 2 epochs on 4 devices, resume to 3: bitwise the uninterrupted run
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        run(jax.devices(), epochs=2, checkpoint=tmp)
        resumed, _ = run(jax.devices(), checkpoint=tmp, resume=True)
    bitwise = all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in
                  zip(jax.tree.leaves(resumed), jax.tree.leaves(multi)))

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in
                   zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    try:
        run(jax.devices()[:3])
        divisibility = None
    except ValueError as e:
        divisibility = str(e)
    print(json.dumps({
        "diff_devices": max_diff(single, multi),
        "diff_mesh_hand": max_diff(single, mesh),
        "loss_single": h1.column("train_loss"),
        "loss_multi": h4.column("train_loss"),
        "valid_single": h1.column("valid_accuracy"),
        "valid_multi": h4.column("valid_accuracy"),
        "vloss_single": h1.column("valid_loss"),
        "vloss_multi": h4.column("valid_loss"),
        "devices_per_leaf": sorted({len(a.sharding.device_set) for a in jax.tree.leaves(multi)}),
        "divisibility": divisibility,
        "resume_bitwise": bitwise,
    }))
""")


def test_data_parallel_fit_matches_single_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["diff_devices"] < 1e-5
    assert got["diff_mesh_hand"] < 1e-5
    assert got["loss_multi"] == __import__("pytest").approx(got["loss_single"], rel=1e-5)
    assert got["valid_multi"] == got["valid_single"]
    assert got["vloss_multi"] == __import__("pytest").approx(got["vloss_single"], rel=1e-5)
    assert got["devices_per_leaf"] == [4]  # params come back replicated on all 4 devices
    assert "batch_size 8 must be divisible by the number of devices (3)" in got["divisibility"]
    assert got["resume_bitwise"]
