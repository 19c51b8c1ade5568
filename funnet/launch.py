r"""``python -m funnet.launch -n N -- COMMAND ...``: N local processes of one distributed run.

Starts ``COMMAND`` N times on this machine, each with the environment of one process of a
run coordinated at ``HOST:PORT`` (a free port on 127.0.0.1 unless given)::

    FUNNET_COORDINATOR=HOST:PORT  JAX_COORDINATOR_ADDRESS=HOST:PORT
    FUNNET_NUM_PROCESSES=N        FUNNET_PROCESS_ID=I        (I = 0 .. N-1)

(JAX itself reads only ``JAX_COORDINATOR_ADDRESS``; ``funnet train`` reads the others, a
script passes them to ``jax.distributed.initialize``.) Every line a process prints comes
out prefixed with its rank, ``[I] ...``. When one process fails (a non-zero exit) the others
are ended (SIGTERM, then SIGKILL after ``--grace`` seconds) and the launcher exits with the
failing process's code (128 + the signal for one killed by a signal); 0 when all succeed.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

__all__ = ["environment", "free_port", "launch", "main"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (the OS picks it; another program could take it
    before the coordinator binds it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def environment(coordinator: str, num_processes: int, process_id: int) -> dict[str, str]:
    """The variables that make a process rank ``process_id`` of the run."""
    return {"FUNNET_COORDINATOR": coordinator, "JAX_COORDINATOR_ADDRESS": coordinator,
            "FUNNET_NUM_PROCESSES": str(num_processes), "FUNNET_PROCESS_ID": str(process_id)}


def _exit_code(code: int) -> int:
    return 128 - code if code < 0 else code


def launch(command: Sequence[str], num_processes: int, *, coordinator: str | None = None,
           grace: float = 5.0, out=None) -> int:
    """Run ``command`` as ``num_processes`` ranks; the exit code (see the module)."""
    if num_processes < 1:
        raise ValueError(f"num_processes must be ≥ 1, got {num_processes}")
    if not command:
        raise ValueError("no command to launch")
    out = sys.stdout if out is None else out
    coordinator = coordinator or f"127.0.0.1:{free_port()}"
    lock = threading.Lock()
    procs: list[subprocess.Popen] = []
    readers = []

    def forward(rank: int, stream) -> None:
        for line in stream:
            with lock:
                out.write(f"[{rank}] {line}" if line.endswith("\n") else f"[{rank}] {line}\n")
                out.flush()

    try:
        for rank in range(num_processes):
            env = {**os.environ, **environment(coordinator, num_processes, rank),
                   "PYTHONUNBUFFERED": "1"}
            p = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, errors="replace",
                                 start_new_session=True)  # its own group: ended as a whole
            procs.append(p)
            t = threading.Thread(target=forward, args=(rank, p.stdout), daemon=True)
            t.start()
            readers.append(t)
        while True:
            codes = [p.poll() for p in procs]
            failed = [c for c in codes if c not in (None, 0)]
            if failed:
                return _exit_code(failed[0])
            if all(c == 0 for c in codes):
                return 0
            time.sleep(0.05)
    finally:
        _end(procs, grace)
        for t in readers:
            t.join(timeout=1.0)


def _end(procs: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM every running process group, SIGKILL what is left after ``grace`` s; reap."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (wait or 0)
        for p in alive:
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.01) if wait else None)
            except subprocess.TimeoutExpired:
                pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m funnet.launch",
        description="Start N local processes of one distributed run, output prefixed by "
                    "rank; if one fails, end them all.")
    parser.add_argument("-n", "--num-processes", type=int, required=True, metavar="N")
    parser.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                        help="default: 127.0.0.1 and a free port")
    parser.add_argument("--grace", type=float, default=5.0, metavar="S",
                        help="seconds between SIGTERM and SIGKILL when ending processes")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="-- then the command each process runs")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --, e.g. -- funnet train ...")
    if args.num_processes < 1:
        parser.error(f"-n must be ≥ 1, got {args.num_processes}")
    return launch(command, args.num_processes, coordinator=args.coordinator,
                  grace=args.grace)


if __name__ == "__main__":
    raise SystemExit(main())
