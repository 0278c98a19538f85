"""Who holds what: one parameter's shards on a device mesh, drawn as a grid of blocks.

The sharding comes from the same place the trainer takes it: the parameter's logical
axis names (jaxllm.param_logical_axes) mapped to mesh axes by the rules table
(jaxllm/parallel/rules.py, `mesh.rules` in the config). Each block of the picture is one
shard of the parameter's two drawn dimensions; its label lists the devices that hold it
(more than one device: the shard is replicated over the remaining mesh axes). A third
sharded dimension (e.g. `layers` over `pipeline`) gives one panel per shard of it; the
drawn dimensions are the last two (a kernel's in and out features).

Over several TPU slices (`mesh.slices`), `data` is the axis that crosses them
(jaxllm/parallel/mesh.py), so slice s holds the devices numbered s*n/S ... (s+1)*n/S - 1.
Each block's label then lists its devices slice by slice, and a last panel draws the
devices grouped by slice: a shard held once per slice is gathered and updated inside
each slice, and only the data-parallel gradient all-reduce crosses between them.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import jax
import numpy as np

from jaxllm.config import Config
from jaxllm.errors import ConfigError, DataError
from jaxllm.model.api import param_logical_axes, param_shapes
from jaxllm.parallel.mesh import AXES, mesh_shape
from jaxllm.parallel.rules import mesh_specs, parse_rules
from jaxllm.viz._figure import plt, save


def _leaf(tree, path: str):
    node = tree
    for key in path.replace("/", ".").split("."):
        if not isinstance(node, dict) or key not in node:
            options = sorted(node) if isinstance(node, dict) else []
            raise DataError(f"parameter {path!r}: no {key!r} here; choose among {options}")
        node = node[key]
    return node


def parameter_names(cfg: Config) -> list[str]:
    """Dotted names of every parameter, e.g. blocks.mlp.up_proj.kernel."""
    flat = jax.tree_util.tree_flatten_with_path(param_shapes(cfg))[0]
    return [".".join(str(getattr(k, "key", k)) for k in path) for path, _ in flat]


def shard_layout(cfg: Config, path: str, n_devices: int) -> dict:
    """{shape, logical, mesh (axis -> size), spec (mesh axes per dim), holders}: holders maps
    each shard index (one int per dim) to the device numbers (row-major over the mesh) holding it."""
    shape = tuple(_leaf(param_shapes(cfg), path).shape)
    logical = tuple(_leaf(param_logical_axes(cfg), path))
    spec = tuple(_leaf(mesh_specs(param_logical_axes(cfg), parse_rules(cfg.mesh.rules)), path))
    spec = spec + (None,) * (len(shape) - len(spec))
    sizes = dict(zip(AXES, mesh_shape(cfg.mesh, n_devices), strict=True))
    per_dim = [() if s is None else ((s,) if isinstance(s, str) else tuple(s)) for s in spec]
    holders: dict[tuple[int, ...], list[int]] = {}
    for device, coords in enumerate(itertools.product(*(range(sizes[a]) for a in AXES))):
        at = dict(zip(AXES, coords, strict=True))
        index = []
        for axes in per_dim:  # mixed radix, first mesh axis most significant (as GSPMD tiles)
            i = 0
            for a in axes:
                i = i * sizes[a] + at[a]
            index.append(i)
        holders.setdefault(tuple(index), []).append(device)
    return {"shape": shape, "logical": logical, "mesh": sizes, "spec": per_dim, "holders": holders}


def slice_of_devices(cfg: Config, n_devices: int) -> list[int]:
    """The slice of each device number (row-major over the mesh): `data` is the outermost
    axis and the only one spanning slices, so the devices of a slice are consecutive.
    `mesh.slices=0` (taken from real devices when training) draws one slice."""
    slices = max(cfg.mesh.slices, 1)
    data = mesh_shape(cfg.mesh, n_devices)[AXES.index("data")]
    if data % slices:
        raise ConfigError(f"mesh.data={data} is not divisible by mesh.slices={slices}; only data spans slices, "
                          f"so make mesh.data a multiple of {slices}")  # fmt: skip
    return [d * slices // n_devices for d in range(n_devices)]


def _holders_text(devices: list[int], slice_of: list[int]) -> str:
    if max(slice_of) == 0:
        return "devices\n" + ",".join(map(str, devices)) if len(devices) > 1 else f"device {devices[0]}"
    by_slice: dict[int, list[int]] = {}
    for d in devices:
        by_slice.setdefault(slice_of[d], []).append(d)
    return "\n".join(f"slice {s}: " + ",".join(map(str, ds)) for s, ds in by_slice.items())


def _draw_slices(ax, lay: dict, slice_of: list[int]) -> None:
    """One row per slice, a cell per device with its mesh coordinates (axes larger than 1)."""
    n, slices = len(slice_of), max(slice_of) + 1
    per = n // slices
    colours = plt.get_cmap("Pastel1")
    shown = [a for a, size in lay["mesh"].items() if size > 1]
    coords = list(itertools.product(*(range(size) for size in lay["mesh"].values())))
    for d in range(n):
        s, k = slice_of[d], d % per
        ax.add_patch(plt.Rectangle((k / per, 1 - (s + 1) / slices), 1 / per, 1 / slices,
                                   color=colours(s % 9), ec="black", lw=0.5))  # fmt: skip
        at = dict(zip(lay["mesh"], coords[d], strict=True))
        text = f"device {d}\n" + " ".join(f"{a[0]}{at[a]}" for a in shown)
        ax.text((k + 0.5) / per, 1 - (s + 0.5) / slices, text, ha="center", va="center", fontsize=7)
    for s in range(1, slices):  # the slice boundaries: DCN between them
        ax.axhline(1 - s / slices, color="black", lw=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xticks([])
    ax.set_yticks([(slices - s - 0.5) / slices for s in range(slices)], [f"slice {s}" for s in range(slices)])
    ax.set_title("devices by slice (" + ", ".join(f"{a[0]}={a}" for a in shown) + "); DCN between slices",
                 fontsize=9)  # fmt: skip


def plot_mesh(cfg: Config, path: str, n_devices: int, out: str | Path) -> Path:
    """The picture described in the module docstring."""
    lay = shard_layout(cfg, path, n_devices)
    slice_of = slice_of_devices(cfg, n_devices)
    extra = 1 if max(slice_of) else 0  # the devices-by-slice panel
    shape, spec = lay["shape"], lay["spec"]
    counts = [math.prod(lay["mesh"][a] for a in axes) for axes in spec]
    sharded = [d for d in range(len(shape)) if counts[d] > 1]
    drawn = [len(shape) - 2, len(shape) - 1] if len(shape) >= 2 else [0]  # the matrix itself
    panel_dims = [d for d in sharded if d not in drawn]
    panels = list(itertools.product(*(range(counts[d]) for d in panel_dims))) or [()]
    rows_dim, cols_dim = (drawn[0], drawn[1]) if len(drawn) == 2 else (None, drawn[0])
    n_r = counts[rows_dim] if rows_dim is not None else 1
    n_c = counts[cols_dim]
    cmap = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(panels) + extra, figsize=(4.2 * (len(panels) + extra) + 0.5, 4.4),
                             squeeze=False)  # fmt: skip
    for p, panel in enumerate(panels):
        ax = axes[0][p]
        for r, c in itertools.product(range(n_r), range(n_c)):
            index = [0] * len(shape)
            for d, i in zip(panel_dims, panel, strict=True):
                index[d] = i
            if rows_dim is not None:
                index[rows_dim] = r
            index[cols_dim] = c
            devices = lay["holders"].get(tuple(index), [])
            ax.add_patch(plt.Rectangle((c / n_c, 1 - (r + 1) / n_r), 1 / n_c, 1 / n_r,
                                       color=cmap(devices[0] % 20 if devices else 0), ec="black", lw=1.0))  # fmt: skip
            text = _holders_text(devices, slice_of)
            ax.text((c + 0.5) / n_c, 1 - (r + 0.5) / n_r, text, ha="center", va="center", fontsize=8, wrap=True)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xticks([])
        ax.set_yticks([])

        def dim_name(d):
            axes_txt = "+".join(spec[d]) if spec[d] else "replicated"
            return f"dim {d}: {lay['logical'][d]} ({shape[d]}) over {axes_txt}"

        ax.set_xlabel(dim_name(cols_dim), fontsize=9)
        if rows_dim is not None:
            ax.set_ylabel(dim_name(rows_dim), fontsize=9)
        if panel_dims:
            ax.set_title(", ".join(f"{lay['logical'][d]} shard {i}" for d, i in zip(panel_dims, panel, strict=True)),
                         fontsize=9)  # fmt: skip
    if extra:
        _draw_slices(axes[0][-1], lay, slice_of)
    mesh_txt = " x ".join(f"{a} {s}" for a, s in lay["mesh"].items())
    mesh_txt += f", {max(slice_of) + 1} slices" if extra else ""
    fig.suptitle(f"{path} {shape} on {n_devices} devices ({mesh_txt})", fontsize=10)
    return save(fig, out)


def device_table(cfg: Config, n_devices: int) -> list[str]:
    """'device i: data a, fsdp b, ... pipeline d' lines (', slice s' over several slices):
    what the numbers mean."""
    sizes = mesh_shape(cfg.mesh, n_devices)
    grid = np.arange(n_devices).reshape(sizes)
    slice_of = slice_of_devices(cfg, n_devices)
    where = (lambda d: f", slice {slice_of[d]}") if max(slice_of) else (lambda d: "")  # noqa: E731
    return [f"device {int(grid[c])}: " + ", ".join(f"{a} {i}" for a, i in zip(AXES, c, strict=True))
            + where(int(grid[c])) for c in itertools.product(*(range(s) for s in sizes))]  # fmt: skip
