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
    # a checkpoint of 4 devices resumed on 2 and on 1, and a sharded one of 4 on 2 sharded
    elsewhere = {}
    with tempfile.TemporaryDirectory() as tmp:
        run(jax.devices(), epochs=2, checkpoint=f"{tmp}/rep")
        run(jax.devices(), epochs=2, checkpoint=f"{tmp}/sh", shard_params=True)
        for name, devices, where, kw in (("2", jax.devices()[:2], "rep", {}),
                                         ("1", None, "rep", {}),
                                         ("2 sharded", jax.devices()[:2], "sh",
                                          {"shard_params": True})):
            elsewhere[name] = run(devices, checkpoint=f"{tmp}/{where}", resume=True, **kw)[0]

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in
                   zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    try:
        run(jax.devices()[:3])
        divisibility = None
    except ValueError as e:
        divisibility = str(e)

    # local_data=True: the rows sharded over the devices, 90 = 4 x 23 - 2 training rows and
    # 21 = 4 x 6 - 3 validation rows (the last blocks padded); the data each device holds
    held = []
    one_epoch = train.loop._one_epoch

    def spy(run_state, model, loss, optimizer, options, data, *rest):
        held.append([[list(s.data.shape) for s in a.addressable_shards] for a in data[:4]])
        one_epoch(run_state, model, loss, optimizer, options, data, *rest)

    train.loop._one_epoch = spy
    local, hl = run(jax.devices(), local_data=True)
    train.loop._one_epoch = one_epoch
    local_hand, _ = run(Mesh(np.array(jax.devices()), ("data",)), grad="hand",
                        local_data=True)
    local_one, _ = run(None, local_data=True)  # one device: nothing to shard

    # a tuple of inputs (ids, mask) of a sequence model, rows sharded together
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 5, (30, 6)).astype(np.int32)
    mask = np.arange(6)[None] < rng.integers(1, 7, 30)[:, None]
    labels = (ids[:, 0] % 2).astype(np.int32)
    seq = funnet.serial(funnet.parallel(funnet.Embedding(5, 4), funnet.Identity),
                        funnet.GRU(8, return_sequences=False), funnet.Dense(2))
    _, seq_params = seq.init(jax.random.PRNGKey(0), ((-1, 6), (-1, 6)))

    def seq_run(**kw):
        return train.fit(seq, seq_params, ((ids, mask), labels), valid=((ids, mask), labels),
                         loss=funnet.softmax_cross_entropy, optimizer=tx, epochs=2,
                         batch_size=8, key=jax.random.PRNGKey(1), progress=False,
                         devices=jax.devices(), **kw)

    def same(a, b):
        return all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in
                   zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    try:
        run(None, local_data="yes")
        flag = None
    except TypeError as e:
        flag = str(e)
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
        "local_bitwise": same(local, multi), "local_history": all(hl.column(c) == h4.column(c) for c in
                                                 ("train_loss", "valid_loss", "valid_accuracy")),
        "local_hand_bitwise": same(local_hand, mesh), "local_one_bitwise": same(local_one, single),
        "local_held": held, "local_seq_bitwise": same(seq_run(local_data=True)[0], seq_run()[0]),
        "local_flag": flag,
        "resumed_elsewhere": {k: max_diff(v, multi) for k, v in elsewhere.items()},
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
    # resumed onto another number of devices (2, 1; sharded over 4 then over 2): the last
    # epoch sums each batch's gradient in another order, float32 rounding only (1e-5 as
    # above; a lost or doubled epoch or a misplaced shard moves the params by ~1e-2)
    assert set(got["resumed_elsewhere"]) == {"2", "1", "2 sharded"}
    assert max(got["resumed_elsewhere"].values()) <= 1e-5, got["resumed_elsewhere"]
    # local_data=True: each device holds one block of ceil(90 / 4) = 23 training rows and
    # ceil(21 / 4) = 6 validation rows (the data of every epoch); the run is bitwise the
    # replicated one (a batch is gathered from every device's block: masked gathers summed
    # over the devices, which adds only zeros), with autodiff and with the hand backward,
    # for a tuple of inputs too, and on one device nothing changes
    blocks = [[[23, 5]] * 4, [[23]] * 4, [[6, 5]] * 4, [[6]] * 4]
    assert got["local_held"] == [blocks] * 3, got["local_held"]
    assert got["local_bitwise"] and got["local_history"]
    assert got["local_hand_bitwise"] and got["local_one_bitwise"] and got["local_seq_bitwise"]
    assert "local_data must be True or False, got 'yes'" in got["local_flag"]


SHARDED = textwrap.dedent(r"""
    import json, tempfile, time
    import jax, numpy as np, optax
    import funnet
    from funnet import train
    from funnet.train import loop
    from funnet.train.devices import shard_spec
    from jax.sharding import NamedSharding

    t0 = time.perf_counter()
    devices = jax.devices()
    assert len(devices) == 2, devices
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 90).astype(np.int32)
    x = (rng.normal(0, 3, (3, 16))[y] + rng.normal(0, 1, (90, 16))).astype(np.float32)
    # W [16, 64] splits its output axis, W [64, 32] its input (contracted) axis; W [32, 3]
    # and the biases are under 1024 elements and stay replicated
    model = funnet.serial(funnet.Dense(64), funnet.Tanh, funnet.Dense(32), funnet.Tanh,
                          funnet.Dense(3))
    _, params = model.init(jax.random.PRNGKey(0), (-1, 16))
    tx = optax.adam(0.02)

    def run(**kw):
        kw = {"epochs": 3, "devices": devices, **kw}
        return train.fit(model, params, (x, y), valid=(x[:21], y[:21]),
                         loss=funnet.softmax_cross_entropy, optimizer=tx, batch_size=8,
                         key=jax.random.PRNGKey(1), progress=False, **kw)

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(u) - np.asarray(v)))) for u, v in
                   zip(jax.tree.leaves(a), jax.tree.leaves(b)))

    def layout(state):
        # per leaf: its shape, the spec the rule gives, whether its sharding is that,
        # the shapes and the index ranges the two devices hold
        tree = (state.params, state.opt_state)
        def one(a):
            rule = shard_spec(a.shape, 2, "batch")
            shards = sorted(a.addressable_shards, key=lambda s: s.device.id)
            return [list(a.shape), list(rule),
                    a.sharding.is_equivalent_to(NamedSharding(a.sharding.mesh, rule), a.ndim),
                    [list(s.data.shape) for s in shards], [str(s.index) for s in shards]]
        return [one(a) for a in jax.tree.leaves(tree)]

    seen = []  # the layout of the train state between the compiled epochs (the epoch
    one_epoch = loop._one_epoch  # donates its input: look before and after, not later)

    def spy(run_state, *args):
        seen.append(layout(run_state.state))
        one_epoch(run_state, *args)
        seen.append(layout(run_state.state))

    loop._one_epoch = spy

    replicated, h_rep = run()
    seen.clear()
    sharded, h_sh = run(shard_params=True)
    layouts = list(seen)
    hand, _ = run(shard_params=True, grad="hand")
    seen.clear()
    with tempfile.TemporaryDirectory() as tmp:
        run(shard_params=True, epochs=2, checkpoint=tmp)
        seen.clear()
        resumed, _ = run(shard_params=True, checkpoint=tmp, resume=True)
        # the finished sharded run restored replicated (no epoch left to run)
        unsharded, _ = run(checkpoint=tmp, resume=True)
    restored = seen[0]  # the state restored from the checkpoint
    with tempfile.TemporaryDirectory() as tmp:  # a replicated checkpoint resumed sharded
        run(epochs=2, checkpoint=tmp)
        seen.clear()
        crossed, _ = run(shard_params=True, checkpoint=tmp, resume=True)
    crossed_layout = seen[0]
    errors = []
    for kw in ({"devices": None}, {"devices": devices[:1]}, {"shard_params": "yes"}):
        try:
            run(**{"shard_params": True, **kw})
        except (TypeError, ValueError) as e:
            errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({
        "diff_sharded": max_diff(replicated, sharded),
        "diff_hand": max_diff(replicated, hand),
        "diff_crossed": max_diff(replicated, crossed),
        "loss_rep": h_rep.column("train_loss"), "loss_sh": h_sh.column("train_loss"),
        "vacc_rep": h_rep.column("valid_accuracy"), "vacc_sh": h_sh.column("valid_accuracy"),
        "layouts": layouts, "restored": restored, "crossed": crossed_layout,
        "resume_bitwise": all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in
                              zip(jax.tree.leaves(resumed), jax.tree.leaves(sharded))),
        "unsharded_bitwise": all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in
                                 zip(jax.tree.leaves(unsharded), jax.tree.leaves(sharded))),
        "returned": sorted({(a.is_fully_replicated, len(a.sharding.device_set))
                            for a in jax.tree.leaves((sharded, hand, resumed, unsharded))}),
        "errors": errors, "seconds": time.perf_counter() - t0,
    }))
""")


def test_sharded_params_split_over_two_devices_and_match_the_replicated_run():
    """``fit(shard_params=True)`` on 2 emulated devices: every leaf the rule shards is held
    half by each device between the epochs (Adam's ``mu``/``nu`` too, and the state
    restored from a checkpoint, sharded or replicated); the params equal the replicated
    run's, with autodiff and with the hand backward; resuming a sharded checkpoint is
    bitwise the uninterrupted run.
    """
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SHARDED], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    split = {(16, 64): 1, (64, 32): 0}  # the axis the rule splits
    for state in (*got["layouts"], got["restored"], got["crossed"]):
        assert len(state) == 3 * 6 + 1  # params, Adam's mu and nu (6 leaves each), count
        for shape, rule, as_rule, shapes, index in state:
            assert as_rule, (shape, rule)  # laid out by the rule, not by XLA's choice
            if tuple(shape) in split:
                axis = split[tuple(shape)]
                assert rule == [None] * axis + ["batch"] + [None] * (1 - axis)
                half = [d // 2 if i == axis else d for i, d in enumerate(shape)]
                assert shapes == [half, half], (shape, shapes)  # 1/2 of it on each device
                assert index[0] != index[1]  # different halves
            else:
                assert rule == [] and shapes == [shape, shape]  # replicated
    assert len(got["layouts"]) == 6  # before and after each of the 3 epochs
    # Sharding changes where the sums of the matmuls happen (W [64, 32] splits the
    # contracted axis: each device a partial sum, then an all-reduce) and so their float32
    # rounding order (2^-24 ≈ 6e-8 relative); 36 Adam steps amplify that on params of size
    # ~1 to ~1e-7 (measured 3.9e-7). A real difference (a lost shard, a half counted
    # twice) moves the params by the learning rate's order, 1e-2.
    assert got["diff_sharded"] <= 1e-5
    assert got["diff_hand"] <= 1e-5
    assert got["loss_sh"] == __import__("pytest").approx(got["loss_rep"], rel=1e-5)
    assert got["vacc_sh"] == got["vacc_rep"]
    assert got["resume_bitwise"]
    assert got["unsharded_bitwise"]  # a sharded checkpoint restores replicated too
    assert got["diff_crossed"] <= 1e-5  # resharded on restore: 2 epochs replicated, 1 not
    assert got["returned"] == [[True, 2]]  # gathered: whole arrays on both devices
    assert len(got["errors"]) == 3, got["errors"]
    assert "ValueError: shard_params=True needs several devices" in got["errors"][0]
    assert "ValueError: shard_params=True needs several devices" in got["errors"][1]
    assert "TypeError: shard_params must be True or False" in got["errors"][2]
    print(f"max |Δ| sharded vs replicated: {got['diff_sharded']:.2g} (reverse), "
          f"{got['diff_hand']:.2g} (hand); {got['seconds']:.1f} s in the child")
