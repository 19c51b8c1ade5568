r"""Where training runs: one device, or data parallelism over a 1-D mesh, optionally with
the train state sharded over the same mesh axis (``fit(shard_params=True)``, FSDP-style).

Several processes (``jax.distributed.initialize`` called by the user or a launcher before
``fit``): the mesh spans the devices of every process (``devices=None`` means all of
``jax.devices()``), and :meth:`Placement.put` turns each process's copy of the full data
into one global array, replicated over the mesh.

Data sharded by rows (``fit(local_data=True)``, :meth:`Placement.put_rows`): each process
passes only its own rows; the data set is their concatenation in process order. Every
device of the mesh holds one block of ``k`` rows (its process's rows, split over that
process's devices in mesh order, padded to the largest process's block), so each device
stores about ``1/n`` of the data when the processes hold about as many rows, and :func:`row_layout`'s index map takes row ``r`` of the concatenation to its
place. A mini-batch gather then reads rows of every device: XLA's SPMD partitioner gathers
on each device what it holds and sums the pieces over the devices (one all-reduce of the
batch per step), never the whole data set.

Parameter sharding (:func:`shard_spec`): each leaf of the train state (params, optimiser
state, model state) of at least :data:`MIN_SHARD_SIZE` elements is split along its largest
axis whose length the number of devices divides; every other leaf stays replicated. The
rule looks at a leaf's shape only, so an optimiser's per-param statistics (Adam's ``mu``
and ``nu``) get their param's sharding. Inside the compiled epoch XLA's SPMD partitioner
adds the collectives: it gathers a weight, or the activations, where a layer needs them
whole.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["MIN_SHARD_SIZE", "Placement", "placement", "row_layout", "shard_spec",
           "state_shardings"]

MIN_SHARD_SIZE = 1024
"""Leaves with fewer elements stay replicated under ``shard_params``: a 4 KiB float32 leaf
saves nothing worth a collective."""


def shard_spec(shape: tuple[int, ...], size: int, axis: str) -> PartitionSpec:
    """The :class:`PartitionSpec` of a leaf of ``shape`` sharded over ``size`` devices of mesh
    axis ``axis``: its largest axis divisible by ``size`` (the first of equal ones), or
    ``PartitionSpec()`` (replicated) for a leaf under :data:`MIN_SHARD_SIZE` elements or
    without such an axis.

    >>> shard_spec((64, 32), 2, "batch"), shard_spec((3, 1024), 2, "batch")
    (P('batch', None), P(None, 'batch'))
    >>> shard_spec((32, 10), 2, "batch"), shard_spec((1025,), 2, "batch")
    (P(), P())
    """
    shape = tuple(shape)
    fits = [i for i, d in enumerate(shape) if d % size == 0]
    if size < 2 or math.prod(shape) < MIN_SHARD_SIZE or not fits:
        return PartitionSpec()
    split = max(fits, key=lambda i: shape[i])  # max keeps the first of equal lengths
    return PartitionSpec(*(axis if i == split else None for i in range(len(shape))))


def state_shardings(tree: Any, mesh: tuple[Mesh, str]) -> Any:
    """A :class:`NamedSharding` per leaf of ``tree`` (arrays or shape structs), by
    :func:`shard_spec`."""
    mesh_, axis = mesh
    return jax.tree.map(lambda a: NamedSharding(mesh_, shard_spec(np.shape(a), mesh_.size,
                                                                  axis)), tree)


class Placement:
    """The mesh (or ``None``: the default device), the sharding of replicated values and
    whether the train state is sharded (``shard_params``)."""

    def __init__(self, mesh: tuple[Mesh, str] | None, shard_params: bool = False):
        if shard_params and mesh is None:
            raise ValueError("shard_params=True needs several devices: pass devices= (a "
                             "list or a 1-D Mesh of at least 2), or run several processes")
        self.mesh = mesh
        self.shard_params = shard_params
        if mesh is None:
            self.replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        else:
            self.replicated = NamedSharding(mesh[0], PartitionSpec())

    @property
    def size(self) -> int:
        return 1 if self.mesh is None else self.mesh[0].size

    @property
    def multiprocess(self) -> bool:
        """Whether the mesh spans devices of other processes (the arrays are global)."""
        return not self.replicated.is_fully_addressable

    @property
    def layout(self) -> tuple[Mesh, str] | None:
        """The mesh and axis the train state is sharded over, or ``None`` (replicated)."""
        return self.mesh if self.shard_params else None

    def gather(self, tree: Any) -> Any:
        """``tree`` replicated over the mesh (unchanged without ``shard_params``): every
        device, and every process, then holds whole arrays."""
        if not self.shard_params or tree is None:
            return tree
        return _gatherer(self.replicated)(tree)

    def put(self, *arrays: Any) -> tuple:
        """The arrays on the device(s), replicated (``None`` stays ``None``).

        With a mesh over several processes each process passes its own full copy (the same
        values everywhere) and gets one global array whose every device holds all rows.
        """
        if not self.multiprocess:
            return tuple(None if a is None else jax.device_put(a, self.replicated)
                         for a in arrays)
        return tuple(None if a is None else jax.tree.map(self._global, a) for a in arrays)

    def put_rows(self, arrays: Any, counts: list[int]) -> tuple[Any, jax.Array | None]:
        """``(arrays sharded by rows, rows)`` for ``fit(local_data=True)``: ``arrays`` (a
        pytree) are this process's ``counts[jax.process_index()]`` rows, ``rows`` the index
        map of :func:`row_layout`, replicated. Without a mesh (one device) the arrays are
        put as they are and ``rows`` is ``None``."""
        if self.mesh is None:
            return self.put(arrays)[0], None
        mesh, axis = self.mesh
        k, rows = row_layout(mesh, counts)
        devices = list(mesh.devices.flat)
        mine = [d for d in devices if d.process_index == jax.process_index()]
        sharding = NamedSharding(mesh, PartitionSpec(axis))

        def leaf(a):
            host = np.asarray(a)
            block = np.zeros((len(mine) * k,) + host.shape[1:], host.dtype)
            block[:len(host)] = host  # the padding is never read: rows points past it
            pieces = [jax.device_put(block[j * k:(j + 1) * k], d) for j, d in enumerate(mine)]
            return jax.make_array_from_single_device_arrays(
                (mesh.size * k,) + host.shape[1:], sharding, pieces)

        return jax.tree.map(leaf, arrays), self.put(rows)[0]

    def _global(self, a: Any) -> jax.Array:
        host = np.asarray(a)  # a process-local jax.Array comes to the host first
        return jax.make_array_from_callback(host.shape, self.replicated,
                                            lambda index: host[index])


def row_layout(mesh: Mesh, counts: list[int]) -> tuple[int, np.ndarray]:
    """``(k, rows)`` for data sharded by rows over the 1-D ``mesh``, process ``p`` holding
    ``counts[p]`` rows.

    Each device holds ``k`` rows: its process's rows in order, split in blocks of ``k`` over
    that process's devices in mesh order (``k`` the smallest size that fits every process's
    rows). ``rows [Σ counts]`` is the index, in the global array of ``mesh.size · k`` rows,
    of each row of the concatenation of the processes' rows in process order.

    >>> from types import SimpleNamespace as Fake  # stand-ins for devices and a mesh
    >>> def mesh_of(*owners):
    ...     return Fake(devices=np.array([Fake(process_index=p) for p in owners]))
    >>> k, rows = row_layout(mesh_of(0, 1), [3, 2])  # process 0: rows 0-2, 1: rows 3-4
    >>> k, rows.tolist()
    (3, [0, 1, 2, 3, 4])
    >>> k, rows = row_layout(mesh_of(0, 0, 1, 1), [3, 2])
    >>> k, rows.tolist()  # device blocks of 2: [0 1] [2 .] [3 4] [. .]
    (2, [0, 1, 2, 4, 5])
    """
    owners = [d.process_index for d in mesh.devices.flat]
    slots = [np.flatnonzero(np.array(owners) == p) for p in range(len(counts))]
    k = max(1, max(-(-c // len(s)) for c, s in zip(counts, slots)))
    rows = [s[np.arange(c) // k] * k + np.arange(c) % k for c, s in zip(counts, slots)]
    return k, np.concatenate(rows).astype(np.int32)


@functools.lru_cache(maxsize=8)
def _gatherer(sharding: NamedSharding):
    return jax.jit(lambda tree: tree, out_shardings=sharding)  # XLA: all-gathers


def placement(devices: Any, batch_size: int, shard_params: bool = False) -> Placement:
    """A :class:`Placement` for ``fit(devices=..., shard_params=...)``: a list of devices or
    a 1-D mesh.

    With several processes ``devices=None`` is every device of every process.
    ``shard_params=True`` needs at least two devices.
    """
    if not isinstance(shard_params, (bool, np.bool_)):
        raise TypeError(f"shard_params must be True or False, got {shard_params!r}")
    shard_params = bool(shard_params)
    if devices is None:
        if jax.process_count() == 1:
            return Placement(None, shard_params)
        devices = jax.devices()
    if isinstance(devices, Mesh):
        if devices.devices.ndim != 1:
            raise ValueError(f"devices: need a 1-D mesh, got axes {devices.axis_names} of "
                             f"shape {devices.devices.shape}")
        mesh, axis = devices, devices.axis_names[0]
    else:
        devs = list(devices)
        if not devs:
            raise ValueError("devices is empty")
        mesh, axis = Mesh(np.array(devs), ("batch",)), "batch"
    if jax.process_count() > 1:
        _check_processes(mesh)
    if shard_params and mesh.size < 2:
        raise ValueError("shard_params=True needs several devices, got a mesh of 1 device; "
                         "pass devices= with at least 2 (or shard_params=False)")
    if batch_size % mesh.size:
        where = (f"devices of all {jax.process_count()} processes"
                 if jax.process_count() > 1 else "devices")
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of "
                         f"{where} ({mesh.size}) for data parallelism")
    return Placement((mesh, axis), shard_params)


def _check_processes(mesh: Mesh) -> None:
    """Every process must own a device of the mesh (a process without one cannot join)."""
    have = {d.process_index for d in mesh.devices.flat}
    missing = sorted(set(range(jax.process_count())) - have)
    if missing:
        raise ValueError(f"devices: the mesh has no device of process(es) {missing} of "
                         f"{jax.process_count()}; with several processes pass a mesh over "
                         "the global jax.devices() (or devices=None)")
