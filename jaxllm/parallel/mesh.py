"""The device mesh: axes `data, fsdp, tensor, pipeline` sized from `MeshConfig`.

Axis types are `Auto` on purpose (DESIGN.md §4): GSPMD propagates shardings from the
logical-axis annotations, so the model never names a mesh axis. (`jax.make_mesh`
defaults to Explicit axes from jax 0.10; explicit mode would put shardings into every
op's types.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxllm.config import ConfigError, MeshConfig
from jaxllm.parallel.axes import MESH_AXES

AXES = MESH_AXES  # the mesh's axis names, in order (written once, in jaxllm/parallel/axes.py)
BATCH_AXES = ("data", "fsdp")  # the global batch is split over both (FSDP is data parallel too)


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, ...]:
    """Axis sizes with -1 resolved; their product must be the device count."""
    sizes = [getattr(cfg, a) for a in AXES]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % known:
            fixed = {a: getattr(cfg, a) for a in AXES}
            raise ConfigError(f"mesh: the fixed axes {fixed} do not divide {n_devices} devices")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise ConfigError(
            f"mesh: {dict(zip(AXES, sizes, strict=True))} multiplies to {math.prod(sizes)}, "
            f"but there are {n_devices} devices; set one axis to -1 or make the product {n_devices}"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all), axes in AXES order, Auto axis types."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(cfg, len(devices))
    try:
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
    except NotImplementedError:
        # A TPU torus assigns each mesh axis a product of whole physical axes; an axis that
        # needs part of one (pipeline 2 on a 4x4x4 slice) is placed by splitting physical
        # axes instead: still correct, with some links shared by two mesh axes.
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))
