"""``python -m funnet.launch``: ranks, prefixed output, one failure ends all (no JAX)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def launch(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "funnet.launch", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)


def test_each_process_gets_its_rank_and_its_lines_are_prefixed():
    code = ("import os; e = os.environ; print(e['FUNNET_PROCESS_ID'], e['FUNNET_NUM_PROCESSES'],"
            " e['FUNNET_COORDINATOR'] == e['JAX_COORDINATOR_ADDRESS'], e['FUNNET_COORDINATOR'])")
    got = launch("-n", "3", "--", sys.executable, "-c", code)
    assert got.returncode == 0, got.stderr
    lines = sorted(got.stdout.splitlines())
    assert [line.split()[:4] for line in lines] == [
        [f"[{i}]", str(i), "3", "True"] for i in range(3)]
    addresses = {line.split()[4] for line in lines}
    assert len(addresses) == 1 and addresses.pop().startswith("127.0.0.1:")


def test_a_failing_process_ends_the_others_and_its_code_is_returned(tmp_path):
    marker = tmp_path / "survived"
    code = ("import os, sys, time\n"
            "if os.environ['FUNNET_PROCESS_ID'] == '1':\n"
            "    print('failing', flush=True); sys.exit(7)\n"
            f"time.sleep(120); open({str(marker)!r}, 'w').write('x')\n")
    start = time.monotonic()
    got = launch("-n", "2", "--grace", "2", "--", sys.executable, "-c", code)
    took = time.monotonic() - start
    assert got.returncode == 7, got.stdout + got.stderr
    assert "[1] failing" in got.stdout
    # rank 0 (sleeping 120 s) was ended, not waited for; the margin is for a loaded machine
    # (22 s seen for two Python start-ups and the grace period at load 5 on 2 cores)
    assert took < 60
    time.sleep(0.5)
    assert not marker.exists()


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period():
    code = ("import os, signal, sys, time\n"
            "if os.environ['FUNNET_PROCESS_ID'] == '0':\n"
            "    signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True)\n"
            "    time.sleep(120)\n"
            "time.sleep(1); sys.exit(2)\n")
    start = time.monotonic()
    got = launch("-n", "2", "--grace", "1", "--", sys.executable, "-c", code)
    assert got.returncode == 2, got.stdout + got.stderr
    assert time.monotonic() - start < 60  # not the 120 s of rank 0's sleep


def test_without_a_command_it_says_how_to_give_one():
    got = launch("-n", "2")
    assert got.returncode == 2
    assert "give the command after --" in got.stderr
