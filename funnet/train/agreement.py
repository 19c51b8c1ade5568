r"""Several processes must start ``fit`` from the same run: a fingerprint compared at start.

Each process holds its own copy of the params and key, and of the data unless
``fit(local_data=True)`` (:mod:`funnet.train.devices` puts them on the global mesh as they
are); copies that differ would train silently inconsistent replicas.
:func:`check_agreement` hashes each part of the run on the host (BLAKE2b, 8 bytes a part),
gathers the digests of every process (one small all-gather) and raises on every process,
naming the parts and processes that differ.

:func:`on_every_process` runs a check that may fail on one process only (a process's own
shard of the data holding a bad label) and makes every process raise: a process that
raised alone would leave the others waiting in their next collective.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

__all__ = ["check_agreement", "fingerprint", "on_every_process"]


def fingerprint(value: Any) -> bytes:
    """An 8-byte digest of a pytree of arrays (dtype, shape, bytes) and JSON-able leaves."""
    h = hashlib.blake2b(digest_size=8)
    leaves, treedef = jax.tree.flatten(value)
    h.update(str(treedef).encode())
    for leaf in leaves:
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype,
                                                                  jax.dtypes.prng_key):
            h.update(str(jax.random.key_impl(leaf)).encode())
            leaf = jax.random.key_data(leaf)
        if isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
            a = np.ascontiguousarray(np.asarray(leaf))
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        else:
            h.update(json.dumps(leaf, sort_keys=True, default=repr).encode())
    return h.digest()


def check_agreement(parts: dict[str, Any]) -> None:
    """Raise ``ValueError`` (on every process) unless all processes hold equal ``parts``.

    Collective: every process must call it, with the same part names in the same order.
    """
    words = np.frombuffer(b"".join(fingerprint(v) for v in parts.values()), np.uint32)
    table = np.asarray(multihost_utils.process_allgather(words)).reshape(
        jax.process_count(), len(parts), 2)
    differ = []
    for i, name in enumerate(parts):
        others = [p for p in range(1, len(table)) if not np.array_equal(table[p, i],
                                                                         table[0, i])]
        if others:
            differ.append(f"{name} (process{'es' if len(others) > 1 else ''} "
                          f"{', '.join(map(str, others))} ≠ process 0)")
    if differ:
        raise ValueError("fit: the processes do not start the same run; they differ in "
                         + "; ".join(differ) + ". Every process must pass the same "
                         "arguments: the same params, state, key and options, and the same "
                         "full data (with local_data=True: rows of the same dtypes and "
                         "shapes)")


_ERRORS = {"ValueError": ValueError, "TypeError": TypeError}


def check_devices_per_process(what: str) -> None:
    """A ``ValueError`` (on every process alike: it reads the global device list) unless
    every process has as many devices as the others; JAX's multi-process gathers
    (``multihost_utils.process_allgather``) assume it and would fail with a reshape error
    naming nothing."""
    counts = collections.Counter(d.process_index for d in jax.devices())
    if len(set(counts.values())) > 1:
        raise ValueError(
            f"{what}: every process needs the same number of devices, got "
            + ", ".join(f"{c} on process {p}" for p, c in sorted(counts.items()))
            + "; give each process as many (CUDA_VISIBLE_DEVICES, local_device_ids of "
            "jax.distributed.initialize, or the same XLA_FLAGS device count on CPUs)")


def on_every_process(fn: Callable[[], Any], what: str) -> list[Any]:
    """``[fn() of process 0, fn() of process 1, ...]``: ``fn``'s JSON-able result gathered
    from every process.

    If ``fn`` raises on any process, every process raises: that process its own exception,
    the others the same type (``ValueError``, ``TypeError``, else ``RuntimeError``) with the
    message prefixed by ``what`` and the failing process. Collective: every process must call
    it (two small all-gathers). With one process it is ``[fn()]``.
    """
    if jax.process_count() == 1:
        return [fn()]
    check_devices_per_process(what)
    error = None
    try:
        outcome = {"ok": fn()}
    except Exception as e:  # noqa: BLE001 - re-raised below, after the others know
        error, outcome = e, {"error": type(e).__name__, "message": str(e)}
    blob = np.frombuffer(json.dumps(outcome).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(blob.size))).ravel()
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:blob.size] = blob
    table = np.asarray(multihost_utils.process_allgather(padded))
    outcomes = [json.loads(row[:size].tobytes()) for row, size in zip(table, lengths)]
    failed = [(p, o) for p, o in enumerate(outcomes) if "error" in o]
    if error is not None:
        raise error
    if failed:
        p, o = failed[0]
        raise _ERRORS.get(o["error"], RuntimeError)(f"{what}: process {p}: {o['message']}")
    return [o["ok"] for o in outcomes]
