"""Kill a process while it saves checkpoints; check what it leaves behind.

Run as a script for the long version (the closing note of the training issue quotes it)::

    python tests/fault_injection.py --kills 40

tests/test_checkpoint.py runs a few kills of the same loop. Each round starts a child that
saves steps ``1, 2, …`` of a pytree (``MB`` megabytes; step ``s`` holds the value ``s``
everywhere) into one directory, SIGKILLs it at a random moment, then checks in this
process: every step the directory lists restores, and to its own values (0 corrupt
checkpoints, no earlier checkpoint damaged); opening the directory for the next save
removes the temporary files the kill left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

CHILD = r"""
import sys
import jax.numpy as jnp
from funnet import checkpoint
directory, mb = sys.argv[1], float(sys.argv[2])
n = int(mb * 2**20 / 4 / 2)
run = checkpoint.CheckpointRun(directory, keep=3)
step = (run.latest_step() or 0) + 1
print("ready", flush=True)
while True:
    tree = {"a": jnp.full((n,), step, jnp.float32), "b": [jnp.full((n,), -step, jnp.float32)]}
    run.save(step, tree, {"step": step})
    step += 1
"""


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "tmp" in p.name)


def _tmp_bytes(directory: Path) -> int:
    total = 0
    for p in directory.iterdir():
        if "tmp" in p.name:
            total += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return total


def check_directory(directory: Path) -> dict:
    """Restore every listed step and compare with its expected values."""
    from funnet import checkpoint

    steps = checkpoint.CheckpointRun(directory, keep=3)
    try:
        listed = []
        mgr_steps = steps._manager.all_steps()
        for s in sorted(mgr_steps):
            tree, meta = steps.restore(s)
            a, b = np.asarray(tree["a"]), np.asarray(tree["b"][0])
            if meta["step"] != s or not (np.all(a == s) and np.all(b == -s)):
                raise AssertionError(f"step {s} of {directory} restored wrong values")
            listed.append(s)
        return {"steps": listed, "leftovers_after_open": _leftovers(directory)}
    finally:
        steps.close()


def run(kills: int, directory: Path, *, mb: float = 8.0, seed: int = 0,
        max_delay: float = 1.5) -> dict:
    """``kills`` rounds of start, wait, SIGKILL, check; returns the figures."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    figures = {"kills": 0, "corrupt": 0, "max_leftovers": 0, "max_leftover_bytes": 0,
               "leftovers_after_reopen": 0, "steps_seen": 0}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for _ in range(kills):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(directory), str(mb)],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
        assert child.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, max_delay))
        child.send_signal(signal.SIGKILL)
        child.wait()
        figures["kills"] += 1
        figures["max_leftovers"] = max(figures["max_leftovers"], len(_leftovers(directory)))
        figures["max_leftover_bytes"] = max(figures["max_leftover_bytes"], _tmp_bytes(directory))
        try:
            result = check_directory(directory)
        except (AssertionError, OSError, ValueError) as e:  # a step that does not restore
            figures["corrupt"] += 1
            figures.setdefault("errors", []).append(f"{type(e).__name__}: {e}"[:300])
            continue
        figures["steps_seen"] = max(figures["steps_seen"], max(result["steps"], default=0))
        figures["leftovers_after_reopen"] += len(result["leftovers_after_open"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--mb", type=float, default=8.0, help="size of the saved pytree")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    import tempfile

    directory = args.dir or Path(tempfile.mkdtemp()) / "run"
    print(json.dumps(run(args.kills, directory, mb=args.mb), indent=1))


if __name__ == "__main__":
    main()
