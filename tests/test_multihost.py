"""``fit`` across two real processes on 127.0.0.1 (gloo collectives, one CPU device each).

Each process runs tests/multihost_worker.py: ``jax.distributed.initialize`` with a free
port, then ``fit(devices=None)`` on the embedded digits. Beside them a third process fits the
same run on two emulated devices and on one device (the reference). Every child has a
timeout and is killed in a ``finally`` block.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from funnet.train.agreement import check_agreement, fingerprint, on_every_process

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "multihost_worker.py")
TIMEOUT = 150  # seconds for all children together; the test takes ~50 s on 2 busy cores


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(devices: int = 1) -> dict:
    flags = os.environ.get("XLA_FLAGS", "")  # conftest's -O0 flags: faster compiles
    if devices > 1:
        flags += f" --xla_force_host_platform_device_count={devices}"
    return {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu",
            "PYTHONPATH": str(ROOT)}


def start(args: list[str], log: Path, devices: int = 1) -> subprocess.Popen:
    """A child writing its output to ``log`` (a pipe left unread could fill and block it,
    and with it the collectives of the other process)."""
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, WORKER, *args], env=env(devices), cwd=ROOT,
                                stdout=f, stderr=subprocess.STDOUT)


def finish(procs: list[subprocess.Popen], timeout: float = TIMEOUT) -> list[int | None]:
    """The exit codes (None: still running after ``timeout`` seconds in all); every child
    is killed and reaped whatever happens."""
    deadline = time.monotonic() + timeout
    try:
        codes = []
        for p in procs:
            try:
                codes.append(p.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                codes.append(None)
        return codes
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()


def load(path: Path, prefix: str) -> list[np.ndarray]:
    with np.load(path) as f:
        return [f[f"{prefix}_{i}"] for i in range(sum(k.rsplit("_", 1)[0] == prefix
                                                       for k in f))]


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b]
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_two_processes_match_two_devices_and_one(tmp_path):
    address = f"127.0.0.1:{free_port()}"
    outs = [tmp_path / f"rank{i}.npz" for i in range(2)]
    ref = tmp_path / "reference.npz"
    logs = [p.with_suffix(".log") for p in (*outs, ref)]
    procs = [start([str(out), "--coordinator", address, "--num-processes", "2",
                    "--process-id", str(i), "--checkpoint", str(tmp_path / "run"),
                    "--shard", "--local"], logs[i])
             for i, out in enumerate(outs)]
    procs.append(start([str(ref), "--reference", "--shard", "--local"], logs[2], devices=2))
    for code, log in zip(finish(procs), logs):
        assert code == 0, f"{log.name}: exit {code}\n" + log.read_text()[-3000:]

    reports = [json.loads(p.with_suffix(".json").read_text()) for p in (*outs, ref)]
    assert [(r["process_count"], r["devices"]) for r in reports] == [(2, 2), (2, 2), (1, 2)]
    rank0, rank1 = load(outs[0], "mesh"), load(outs[1], "mesh")
    two_devices, one_device = load(ref, "mesh"), load(ref, "single")
    assert len(rank0) == 4  # two Dense layers: W, b each
    # the params are one replicated global array: both processes hold the same bits
    assert all(np.array_equal(a, b) for a, b in zip(rank0, rank1))
    assert reports[0]["mesh"] == reports[1]["mesh"]  # the same history on both
    # Two processes run the program that two emulated devices run in one process (the
    # same partition of every batch, the all-reduce over gloo instead of in memory); one
    # device sums each batch's gradient in another order. 60 Adam steps amplify float32
    # rounding (2^-24 ≈ 6e-8 relative) on params of size ~1 to at most ~1e-6; 1e-5 allows
    # for that, while any real difference (a lost shard, a batch counted twice) changes the
    # params by the learning rate's order, 1e-2.
    assert max_diff(rank0, two_devices) <= 1e-5
    assert max_diff(rank0, one_device) <= 1e-5
    for key in ("mesh", "single"):
        np.testing.assert_allclose(reports[0]["mesh"]["train_loss"],
                                   reports[2][key]["train_loss"], rtol=1e-5)
    assert reports[0]["mesh"]["valid_accuracy"] == reports[2]["mesh"]["valid_accuracy"]
    # checkpointed by both processes into one directory after 2 epochs, resumed to 3:
    # bitwise the uninterrupted run, on both
    for out in outs:
        assert all(np.array_equal(a, b) for a, b in zip(load(out, "resumed"), rank0))
    assert reports[0]["resumed"]["train_loss"] == reports[0]["mesh"]["train_loss"]
    entries = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert [e for e in entries if e.isdigit()] == ["1", "2", "3"], entries  # keep=3
    assert not [e for e in entries if "tmp" in e], entries  # every save committed
    # shard_params=True: W [64, 32] of the first layer is split along its 64 rows, each
    # process holding 32 of them after every epoch; the run computes what the replicated
    # one does up to float32 rounding (XLA may partition the sums of the matmuls otherwise;
    # measured max |Δ| = 0 for this model, bound as above), and exactly what 2 emulated
    # devices compute with shard_params=True (the same program)
    for report in reports[:2]:
        assert report["layout"] == [{"spec": ["batch"], "local": [[32, 32]],
                                     "global": [64, 32]}] * 3, report["layout"]
    sharded = [load(out, "sharded") for out in outs]
    assert all(np.array_equal(a, b) for a, b in zip(*sharded))
    assert max_diff(sharded[0], rank0) <= 1e-5
    assert max_diff(sharded[0], load(ref, "sharded")) == 0
    # a sharded checkpoint written by both processes (each its half), resumed: bitwise
    for out in outs:
        assert all(np.array_equal(a, b) for a, b in zip(load(out, "sharded_resumed"),
                                                        sharded[0]))
    # local_data=True: process 0 passed training rows 0-699, process 1 rows 700-1257 (and
    # half of the validation rows each); each device holds its process's rows, and a batch
    # is gathered from both (masked gathers summed over the devices: adding zeros, exact):
    # bitwise the run on the full data, on both processes, and what 2 emulated devices
    # compute with local_data=True
    for out in outs:
        assert all(np.array_equal(a, b) for a, b in zip(load(out, "local"), rank0))
    assert reports[0]["local"] == reports[1]["local"] == reports[0]["mesh"]
    assert all(np.array_equal(a, b) for a, b in zip(load(ref, "local"), two_devices))
    message = reports[0]["divisibility"]
    assert "batch_size 63 must be divisible by the number of devices of all 2 processes (2)" \
        in message
    print("max |Δ| 2 processes vs 2 devices:", max_diff(rank0, two_devices),
          "vs 1 device:", max_diff(rank0, one_device),
          "sharded vs replicated:", max_diff(sharded[0], rank0),
          "sharded vs 2 sharded devices:", max_diff(sharded[0], load(ref, "sharded")),
          "local rows vs full data:", max_diff(load(outs[0], "local"), rank0))


def test_early_stopping_and_the_non_finite_guard_agree_across_processes(tmp_path):
    """Two processes with their own rows (``local_data=True``) and a reference on two
    emulated devices with all rows: early stopping stops every process at the same epoch
    and returns the same best params; a loss that turns non-finite raises the same
    ``NonFiniteLossError`` (epoch, step, history, last good params) on every process."""
    address = f"127.0.0.1:{free_port()}"
    outs = [tmp_path / f"rank{i}.npz" for i in range(2)]
    ref = tmp_path / "reference.npz"
    logs = [p.with_suffix(".log") for p in (*outs, ref)]
    common = ["--faults", "--epochs", "12"]
    procs = [start([str(out), "--coordinator", address, "--num-processes", "2",
                    "--process-id", str(i), *common], logs[i]) for i, out in enumerate(outs)]
    procs.append(start([str(ref), "--reference", *common], logs[2], devices=2))
    for code, log in zip(finish(procs), logs):
        assert code == 0, f"{log.name}: exit {code}\n" + log.read_text()[-3000:]
    reports = [json.loads(p.with_suffix(".json").read_text()) for p in (*outs, ref)]
    # refused at the start, on both processes: every process passing all 1258 rows, and a
    # label out of range in process 1's rows only (process 0 names process 1)
    for report in reports[:2]:
        assert report["same_rows"].startswith("fit(local_data=True): all 2 processes passed "
                                              "the same training rows (1258 each)"), report
    own = "train.y: 1 label outside [0, 10), first at index 3 (value 10)"
    assert own in reports[1]["bad_shard"], reports[1]["bad_shard"]
    assert reports[0]["bad_shard"] == f"fit(local_data=True): process 1: {reports[1]['bad_shard']}"

    early = reports[0]["early"]
    # shuffled validation labels: the validation loss rises from epoch 1 on, so with
    # patience 2 training stops after epoch 3 and returns epoch 1's params
    assert early["stopped_early"] and early["epochs"] == 3 and early["best_epoch"] == 1, early
    assert reports[1]["early"] == reports[2]["early"] == early
    for out in (outs[1], ref):
        assert all(np.array_equal(a, b) for a, b in zip(load(out, "early"),
                                                        load(outs[0], "early")))
    bad = reports[0]["non_finite"]
    assert bad["epoch"] >= 2 and len(bad["history"]) == bad["epoch"] - 1, bad
    assert f"non-finite loss or gradient at epoch {bad['epoch']}" in bad["message"]
    assert reports[1]["non_finite"] == reports[2]["non_finite"] == bad
    good = [load(out, "last_good") for out in (*outs, ref)]
    assert all(np.isfinite(a).all() for a in good[0])
    assert all(np.array_equal(a, b) for other in good[1:] for a, b in zip(other, good[0]))


def test_own_rows_on_a_mesh_of_two_devices_of_one_process_and_one_of_the_other(tmp_path):
    """Two processes of two devices each, ``fit`` on three of the four: process 0's 58 rows
    (fewer than a batch of 63) split over its two devices, process 1's 1200 on one
    (``local_data=True``; blocks of 1200 rows): bitwise the run with all rows everywhere on
    the same mesh. Rows 29-57 of the data set lie at 1200-1228 of the global array."""
    # found by the mutation review (h-mut16): nothing failed when put_rows sized the global
    # array from this process's devices (len(mine) * process_count) instead of the mesh's,
    # when the batch size was checked against this process's rows instead of all rows, or
    # when the epoch or the evaluation read row r at r (not rows[r]): in every other test
    # the layout kept each row at its index
    address = f"127.0.0.1:{free_port()}"
    outs = [tmp_path / f"rank{i}.npz" for i in range(2)]
    logs = [p.with_suffix(".log") for p in outs]
    procs = [start([str(out), "--coordinator", address, "--num-processes", "2",
                    "--process-id", str(i), "--uneven"], logs[i], devices=2)
             for i, out in enumerate(outs)]
    for code, log in zip(finish(procs), logs):
        assert code == 0, f"{log.name}: exit {code}\n" + log.read_text()[-3000:]
    reports = [json.loads(p.with_suffix(".json").read_text()) for p in outs]
    assert reports[0]["owners"] == [0, 0, 1] and reports[0]["devices"] == 4
    full = load(outs[0], "uneven_full")
    for out, report in zip(outs, reports):
        assert all(np.array_equal(a, b) for a, b in zip(load(out, "uneven_local"), full))
        assert report["uneven_local"] == reports[0]["uneven_full"]


def test_processes_with_different_numbers_of_devices_are_refused_naming_them(tmp_path):
    """Process 0 with 2 devices, process 1 with 1: JAX's gathers would fail with a reshape
    error naming nothing; fit names the counts, on both processes."""
    address = f"127.0.0.1:{free_port()}"
    outs = [tmp_path / f"rank{i}.npz" for i in range(2)]
    logs = [p.with_suffix(".log") for p in outs]
    procs = [start([str(out), "--coordinator", address, "--num-processes", "2",
                    "--process-id", str(i), "--one-fit"], logs[i], devices=2 - i)
             for i, out in enumerate(outs)]
    for code, log in zip(finish(procs), logs):
        assert code == 0, f"{log.name}: exit {code}\n" + log.read_text()[-3000:]
    for out in outs:
        error = json.loads(out.with_suffix(".json").read_text()).get("error", "")
        assert error.startswith("fit: every process needs the same number of devices, got "
                                "2 on process 0, 1 on process 1"), error


def test_killing_either_process_ends_the_other_with_an_error(tmp_path):
    """SIGKILL one of two training processes: the other fails, it does not hang.

    Two pairs run at once: in one the coordinator (process 0) is killed, in the other
    process 1. The survivor's next all-reduce fails (gloo: connection reset by peer) and the
    distributed runtime then ends the process (abort) once the coordination service has
    noticed the dead task (``heartbeat_timeout_seconds=10``).
    """
    pairs = []
    for victim in (0, 1):
        address = f"127.0.0.1:{free_port()}"
        logs = [tmp_path / f"kill{victim}_rank{i}.log" for i in range(2)]
        procs = [start([str(tmp_path / f"kill{victim}_rank{i}.npz"), "--coordinator", address,
                        "--num-processes", "2", "--process-id", str(i), "--epochs", "100000",
                        "--heartbeat", "10", "--warm-up"], logs[i]) for i in range(2)]
        pairs.append((victim, procs, logs))
    killed_at: dict[int, float] = {}
    ended: dict[int, tuple[int, float]] = {}  # victim -> (survivor's exit code, seconds)
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(ended) < len(pairs) and time.monotonic() < deadline:
            for victim, procs, logs in pairs:
                if victim not in killed_at and all("warm" in log.read_text() for log in logs):
                    time.sleep(0.5)  # inside the 100000-epoch loop: training, not compiling
                    procs[victim].kill()
                    killed_at[victim] = time.monotonic()
                code = procs[1 - victim].poll()
                if victim in killed_at and victim not in ended and code is not None:
                    ended[victim] = code, time.monotonic() - killed_at[victim]
            time.sleep(0.1)
    finally:
        finish([p for _, procs, _ in pairs for p in procs], timeout=0)
    for victim, _, logs in pairs:
        text = logs[1 - victim].read_text()
        assert victim in killed_at, f"pair {victim} never trained:\n{text[-3000:]}"
        assert victim in ended, f"the survivor of killing {victim} hangs:\n{text[-3000:]}"
        code, seconds = ended[victim]
        print(f"killed process {victim}: the other exited {code} after {seconds:.1f} s")
        assert code != 0, text[-3000:]
        assert "Gloo all-reduce failed" in text, text[-3000:]
        assert seconds < 60


def test_processes_that_differ_are_refused_naming_the_difference(tmp_path):
    """Process 1 changes one training pixel, the key and ``shard_params``: ``fit`` raises
    on both processes (after comparing fingerprints, before training), naming the three
    parts, and both exit."""
    address = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"rank{i}.log" for i in range(2)]
    procs = [start([str(tmp_path / f"rank{i}.npz"), "--coordinator", address,
                    "--num-processes", "2", "--process-id", str(i),
                    *(["--disagree"] if i else [])], logs[i]) for i in range(2)]
    codes = finish(procs)
    for code, log in zip(codes, logs):
        text = log.read_text()
        assert code == 1, f"{log.name}: exit {code}\n{text[-3000:]}"  # the ValueError
        assert ("ValueError: fit: the processes do not start the same run; they differ in "
                "options (process 1 ≠ process 0); key (process 1 ≠ process 0); train data "
                "(process 1 ≠ process 0)") in text, text[-3000:]


def test_an_error_of_one_process_raises_on_both_and_differing_flags_are_named(tmp_path):
    """After a first fit (the collectives set up), process 1 alone has a NaN pixel in its
    copy of the full data, then a batch_size the devices do not divide; then the processes
    differ in local_data, then in resume. Each raises a ValueError on both processes
    (before the fix process 0 waited in a collective: a gloo error after 30 s, or the
    5-minute shutdown barrier)."""
    address = f"127.0.0.1:{free_port()}"
    logs = [tmp_path / f"rank{i}.log" for i in range(2)]
    procs = [start([str(tmp_path / f"rank{i}.npz"), "--coordinator", address,
                    "--num-processes", "2", "--process-id", str(i), "--one-sided",
                    "--checkpoint", str(tmp_path / "ck")], logs[i]) for i in range(2)]
    codes = finish(procs, timeout=90)
    reports = []
    for code, log, i in zip(codes, logs, range(2)):
        assert code == 0, f"{log.name}: exit {code}\n{log.read_text()[-3000:]}"
        reports.append(json.loads((tmp_path / f"rank{i}.json").read_text()))
    zero, one = reports
    assert one["nan_row"] == "train.x: 1 non-finite value (NaN or inf), first at index (5, 3)"
    assert zero["nan_row"] == f"fit: process 1: {one['nan_row']}"
    assert one["batch_size"].startswith("batch_size 63 must be divisible by the number of "
                                        "devices of all 2 processes (2)"), one
    assert zero["batch_size"] == f"fit: process 1: {one['batch_size']}"
    for report in reports:  # told at the first collective, not left in another one
        assert report["local_data"] == (
            "fit: the processes differ in local_data: True on process 0, False on process "
            "1; every process passes either its own rows (local_data=True) or all rows "
            "(False)"), report
        assert report["resume"].startswith("fit: the processes do not start the same run; "
                                           "they differ in options (process 1 ≠ process 0)"), \
            report


def test_fingerprint_tells_apart_values_dtypes_shapes_and_key_implementations():
    x = np.arange(6, dtype=np.float32)
    same = fingerprint({"x": x.copy(), "n": 3})
    assert fingerprint({"x": x, "n": 3}) == same
    variants = [{"x": x + np.float32(1e-6), "n": 3}, {"x": x.astype(np.float64), "n": 3},
                {"x": x.reshape(2, 3), "n": 3}, {"x": x, "n": 4}, {"y": x, "n": 3}]
    assert all(fingerprint(v) != same for v in variants)
    assert (fingerprint(jax.random.key(0)) != fingerprint(jax.random.key(0, impl="rbg"))
            != fingerprint(jax.random.key(1)))
    check_agreement({"data": x})  # one process: agrees with itself


def _as_process(monkeypatch, me: int, others: dict) -> None:
    """This process as process ``me`` of ``len(others) + 1``: the other processes'
    outcomes of ``on_every_process`` (``{"ok": ...}`` or ``{"error": ..., "message": ...}``)
    come from a stand-in for ``process_allgather``."""
    from jax.experimental import multihost_utils

    blobs = {p: np.frombuffer(json.dumps(o).encode(), np.uint8) for p, o in others.items()}
    count = len(others) + 1

    def allgather(x):
        x = np.asarray(x)
        if x.ndim == 0:  # the lengths
            return np.array([int(x) if p == me else blobs[p].size for p in range(count)])
        return np.stack([x if p == me else np.pad(blobs[p], (0, x.size - blobs[p].size))
                         for p in range(count)])

    monkeypatch.setattr(jax, "process_count", lambda: count)
    monkeypatch.setattr(multihost_utils, "process_allgather", allgather)


def test_on_every_process_gathers_in_process_order_and_names_the_first_failing_one(
        monkeypatch):
    # found by the mutation review (h-mut16): nothing failed when the outcomes came back in
    # another order, a TypeError elsewhere became a RuntimeError, the error named the
    # last failing process or this one, or this process's own error was not the one raised
    _as_process(monkeypatch, 1, {0: {"ok": {"rows": 700, "name": "a longer outcome"}},
                                 2: {"ok": [5]}})
    assert on_every_process(lambda: 3, "check") == [{"rows": 700, "name": "a longer outcome"},
                                                    3, [5]]
    _as_process(monkeypatch, 0, {1: {"ok": 1}, 2: {"error": "TypeError", "message": "bad y"},
                                 3: {"error": "ValueError", "message": "bad x"}})
    with pytest.raises(TypeError) as info:
        on_every_process(lambda: 0, "fit(local_data=True)")
    assert str(info.value) == "fit(local_data=True): process 2: bad y"
    _as_process(monkeypatch, 0, {1: {"error": "KeyError", "message": "'x'"}})
    with pytest.raises(RuntimeError, match=r"^check: process 1: 'x'$"):
        on_every_process(lambda: 0, "check")
    own = ValueError("my own rows")

    def fail():
        raise own

    _as_process(monkeypatch, 1, {0: {"error": "TypeError", "message": "theirs"}})
    with pytest.raises(ValueError) as info:
        on_every_process(fail, "check")
    assert info.value is own


TRAIN = ["-m", "funnet", "train", "--epochs", "2", "--batch-size", "64", "--hidden", "16",
         "--no-progress"]


def _table(output: str, prefix: str = "") -> list[list[str]]:
    """The history rows of ``funnet train``'s output, without the seconds column."""
    rows = [line[len(prefix):].split() for line in output.splitlines()
            if line.startswith(prefix)]
    return [r[:-1] for r in rows if r and r[0].rstrip("*").isdigit()]


def test_funnet_train_under_the_launcher_prints_once_and_trains_as_one_process(tmp_path):
    """Two ranks by ``python -m funnet.launch``, checkpointed, each passing fit only its own
    rows (``local_data``) and holding half of every large weight (``--shard-params``);
    beside them one process on one device, with all rows and whole weights."""
    logs = [tmp_path / "launch.log", tmp_path / "single.log"]
    with open(logs[0], "w") as f:
        launched = subprocess.Popen([sys.executable, "-m", "funnet.launch", "-n", "2", "--",
                                     sys.executable, *TRAIN, "--shard-params",
                                     "--checkpoint", str(tmp_path / "run")], env=env(),
                                    cwd=ROOT, stdout=f,
                                    stderr=subprocess.STDOUT)
    with open(logs[1], "w") as f:
        single = subprocess.Popen([sys.executable, *TRAIN], env=env(), cwd=ROOT, stdout=f,
                                  stderr=subprocess.STDOUT)
    # and two ranks as Slurm starts them (srun --ntasks 2 on one node): --coordinator auto
    # lets jax.distributed.initialize read Slurm's variables (JAX_COORDINATOR_PORT chooses
    # the port it would derive from the job id)
    port, slurm = free_port(), []
    for rank in range(2):
        variables = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost",
                     "SLURM_NTASKS": "2", "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0",
                     "JAX_COORDINATOR_PORT": str(port)}
        logs.append(tmp_path / f"slurm{rank}.log")
        with open(logs[-1], "w") as f:
            slurm.append(subprocess.Popen([sys.executable, *TRAIN, "--coordinator", "auto"],
                                          env={**env(), **variables}, cwd=ROOT, stdout=f,
                                          stderr=subprocess.STDOUT))
    codes = finish([launched, single, *slurm])
    out, one, *ranks = (log.read_text() for log in logs)
    assert codes == [0, 0, 0, 0], out[-3000:] + one[-3000:] + "".join(ranks)[-3000:]
    assert _table(ranks[0]) == _table(one) and "test accuracy" in ranks[0]
    assert not [line for line in ranks[1].splitlines() if "Gloo" not in line], ranks[1]
    assert "[0] test accuracy:" in out
    assert ", params sharded" in out  # --shard-params reached the run (h-mut16)
    rank1 = [line for line in out.splitlines() if line.startswith("[1] ")]
    assert not [line for line in rank1 if "[Gloo]" not in line], rank1  # only 0 prints
    table = _table(out, "[0] ")
    assert len(table) == 2 and table == _table(one)  # loss, accuracy, lr to 4 digits
    test_line = next(line for line in one.splitlines() if line.startswith("test accuracy"))
    assert f"[0] {test_line.split(';')[0]}" in out
    # --checkpoint: orbax steps written by both, the flags and params by process 0
    entries = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert {"1", "2", "params.safetensors", "train-args.json"} <= set(entries), entries
    assert not [e for e in entries if "tmp" in e], entries


def test_coordinator_auto_without_a_cluster_says_what_it_looked_for():
    clean = {k: v for k, v in env().items()
             if not k.startswith(("SLURM_", "OMPI_", "KUBERNETES_", "TPU_"))}
    got = subprocess.run([sys.executable, *TRAIN, "--coordinator", "auto"], env=clean,
                         cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                         check=False)
    assert got.returncode == 1, got.stdout + got.stderr
    assert "funnet train: error: --coordinator auto: JAX found no cluster to join" \
        in got.stderr and "--coordinator HOST:PORT" in got.stderr, got.stderr


def test_an_unreachable_coordinator_is_named_within_the_timeout():
    address = f"127.0.0.1:{free_port()}"  # nobody listens there
    start_time = time.monotonic()
    got = subprocess.run([sys.executable, *TRAIN, "--coordinator", address,
                          "--num-processes", "2", "--process-id", "1", "--init-timeout", "2"],
                         env=env(), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
                         check=False)
    assert got.returncode == 1, got.stdout + got.stderr
    assert (f"funnet train: error: coordinator {address} unreachable after 2 s"
            in got.stderr), got.stderr
    assert time.monotonic() - start_time < 60


def test_rows_that_two_of_three_processes_both_pass_are_refused():
    # found by the new-user review (h-rev16): only all processes passing the same rows was
    # refused; with three, two of them passing the same rows trained on those rows twice
    from funnet.train.loop import _check_shards

    with pytest.raises(ValueError, match=r"processes 0, 2 passed the same training rows "
                                         r"\(5 each\), which would count those rows 2 times"):
        _check_shards([{"digest": d, "rows": 5} for d in "aba"])
    with pytest.raises(ValueError, match=r"all 3 processes passed the same training rows"):
        _check_shards([{"digest": d, "rows": 5} for d in "aaa"])
    _check_shards([{"digest": d, "rows": 5} for d in "abc"])  # each its own rows
