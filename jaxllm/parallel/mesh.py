"""The device mesh: axes `data, fsdp, context, expert, tensor, pipeline` sized from `MeshConfig`.

Axis types are `Auto` on purpose (DESIGN.md §4): GSPMD propagates shardings from the
logical-axis annotations, so the model never names a mesh axis. (`jax.make_mesh`
defaults to Explicit axes from jax 0.10; explicit mode would put shardings into every
op's types.)

Multi-slice (a TPU pod of several slices joined by the data-centre network, DCN): only
`data` spans slices; fsdp, context, expert, tensor and pipeline groups stay inside one slice.
Why: data parallelism talks once per step (the gradients' all-reduce), while FSDP
gathers every layer's weights, tensor/context parallelism exchange activations and expert
parallelism routed tokens (all-to-all) inside every layer, traffic that needs the slice's
fast interconnect (ICI).
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
# The global batch is split over all three: FSDP is data parallel too, and expert devices hold
# their own rows for the dense parts of the model (jaxllm/parallel/axes.py).
BATCH_AXES = ("data", "fsdp", "expert")


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


def device_slices(devices: Sequence[jax.Device]) -> dict[int, list[jax.Device]]:
    """Devices grouped by their slice (`slice_index`; devices without one, e.g. CPU and
    GPU devices, are all slice 0), in slice order."""
    groups: dict[int, list[jax.Device]] = {}
    for d in devices:
        groups.setdefault(int(getattr(d, "slice_index", 0) or 0), []).append(d)
    return dict(sorted(groups.items()))


def slice_count(cfg: MeshConfig, devices: Sequence[jax.Device]) -> int:
    """The number of slices the mesh spans: `mesh.slices`, or (0) the devices' own count.

    Checks what the hybrid mesh needs: the configured count is the devices' count, every
    slice has as many devices, and `data` (resolved from -1 if need be) splits over them."""
    groups = device_slices(devices)
    found = len(groups)
    slices = cfg.slices or found
    if slices != found:
        raise ConfigError(
            f"mesh.slices={cfg.slices} but the {len(devices)} devices span {found} slice(s) (by slice_index); "
            f"set mesh.slices={found}, or 0 to take it from the devices"
        )
    sizes = {k: len(v) for k, v in groups.items()}
    if len(set(sizes.values())) > 1:
        raise ConfigError(f"mesh: the devices do not split evenly into slices (devices per slice_index: {sizes}); "
                          "a multi-slice mesh needs slices of one shape")  # fmt: skip
    data = mesh_shape(cfg, len(devices))[AXES.index("data")]
    if data % slices:
        raise ConfigError(
            f"mesh.data={data} is not divisible by the {slices} slices; only data spans slices (over DCN), "
            f"so make mesh.data a multiple of {slices} (e.g. mesh.data={slices} and the other axes within a slice)"
        )
    return slices


def _grid(shape: Sequence[int], devices: list, slices: int, split: bool):
    """Devices arranged in `shape`: within one slice's torus, or (slices > 1) one such
    arrangement per slice, stacked along `data` (slice s holds data rows s*d/S ... )."""
    if slices == 1:
        return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=split)
    data = AXES.index("data")
    ici = tuple(s // slices if i == data else s for i, s in enumerate(shape))
    dcn = tuple(slices if i == data else 1 for i in range(len(shape)))
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, allow_split_physical_axes=split)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A mesh over `devices` (default: all), axes in AXES order, Auto axis types; over
    several slices, `data` is the only axis that crosses a slice boundary."""
    devices = list(devices) if devices is not None else jax.devices()
    shape = mesh_shape(cfg, len(devices))
    slices = slice_count(cfg, devices)
    if slices > 1:
        try:
            grid = _grid(shape, devices, slices, split=False)
        except NotImplementedError:  # as below, within each slice's torus
            grid = _grid(shape, devices, slices, split=True)
        return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    try:
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES), devices=devices)
    except NotImplementedError:
        # A TPU torus assigns each mesh axis a product of whole physical axes; an axis that
        # needs part of one (pipeline 2 on a 4x4x4 slice) is placed by splitting physical
        # axes instead: still correct, with some links shared by two mesh axes.
        return Mesh(_grid(shape, devices, 1, split=True), AXES, axis_types=(AxisType.Auto,) * len(AXES))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))
