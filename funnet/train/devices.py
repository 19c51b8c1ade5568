r"""Where training runs: one device, or data parallelism over a 1-D mesh.

Several processes (``jax.distributed.initialize`` called by the user or a launcher before
``fit``): the mesh spans the devices of every process (``devices=None`` means all of
``jax.devices()``), every process holds the same full data set, and :meth:`Placement.put`
turns each process's copy into one global array, replicated over the mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["Placement", "placement"]


class Placement:
    """The mesh (or ``None``: the default device) and the sharding of replicated values."""

    def __init__(self, mesh: tuple[Mesh, str] | None):
        self.mesh = mesh
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

    def put(self, *arrays: Any) -> tuple:
        """The arrays on the device(s), replicated (``None`` stays ``None``).

        With a mesh over several processes each process passes its own full copy (the same
        values everywhere) and gets one global array whose every device holds all rows.
        """
        if not self.multiprocess:
            return tuple(None if a is None else jax.device_put(a, self.replicated)
                         for a in arrays)
        return tuple(None if a is None else jax.tree.map(self._global, a) for a in arrays)

    def _global(self, a: Any) -> jax.Array:
        host = np.asarray(a)  # a process-local jax.Array comes to the host first
        return jax.make_array_from_callback(host.shape, self.replicated,
                                            lambda index: host[index])


def placement(devices: Any, batch_size: int) -> Placement:
    """A :class:`Placement` for ``fit(devices=...)``: a list of devices or a 1-D mesh.

    With several processes ``devices=None`` is every device of every process.
    """
    if devices is None:
        if jax.process_count() == 1:
            return Placement(None)
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
    if batch_size % mesh.size:
        where = (f"devices of all {jax.process_count()} processes"
                 if jax.process_count() > 1 else "devices")
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of "
                         f"{where} ({mesh.size}) for data parallelism")
    return Placement((mesh, axis))


def _check_processes(mesh: Mesh) -> None:
    """Every process must own a device of the mesh (a process without one cannot join)."""
    have = {d.process_index for d in mesh.devices.flat}
    missing = sorted(set(range(jax.process_count())) - have)
    if missing:
        raise ValueError(f"devices: the mesh has no device of process(es) {missing} of "
                         f"{jax.process_count()}; with several processes pass a mesh over "
                         "the global jax.devices() (or devices=None)")
