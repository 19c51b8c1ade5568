r"""Where training runs: one device, or data parallelism over a 1-D mesh."""

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

    def put(self, *arrays: Any) -> tuple:
        """The arrays on the device(s), replicated (``None`` stays ``None``)."""
        return tuple(None if a is None else jax.device_put(a, self.replicated)
                     for a in arrays)


def placement(devices: Any, batch_size: int) -> Placement:
    """A :class:`Placement` for ``fit(devices=...)``: a list of devices or a 1-D mesh."""
    if devices is None:
        return Placement(None)
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
    if batch_size % mesh.size:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of "
                         f"devices ({mesh.size}) for data parallelism")
    return Placement((mesh, axis))
