"""Who holds what: one parameter's shards on a device mesh, drawn as a grid of blocks.

The sharding comes from the same place the trainer takes it: the parameter's logical
axis names (jaxllm.param_logical_axes) mapped to mesh axes by the rules table
(jaxllm/parallel/rules.py, `mesh.rules` in the config). Each block of the picture is one
shard of the parameter's two drawn dimensions; its label lists the devices that hold it
(more than one device: the shard is replicated over the remaining mesh axes). A third
sharded dimension (e.g. `layers` over `pipeline`) gives one panel per shard of it; the
drawn dimensions are the last two (a kernel's in and out features).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import jax
import numpy as np

from jaxllm.config import Config
from jaxllm.errors import DataError
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


def plot_mesh(cfg: Config, path: str, n_devices: int, out: str | Path) -> Path:
    """The picture described in the module docstring."""
    lay = shard_layout(cfg, path, n_devices)
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
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 0.5, 4.4), squeeze=False)
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
            text = "devices\n" + ",".join(map(str, devices)) if len(devices) > 1 else f"device {devices[0]}"
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
    mesh_txt = " x ".join(f"{a} {s}" for a, s in lay["mesh"].items())
    fig.suptitle(f"{path} {shape} on {n_devices} devices ({mesh_txt})", fontsize=10)
    return save(fig, out)


def device_table(cfg: Config, n_devices: int) -> list[str]:
    """'device i: data a, fsdp b, tensor c, pipeline d' lines: what the numbers mean."""
    sizes = mesh_shape(cfg.mesh, n_devices)
    grid = np.arange(n_devices).reshape(sizes)
    return [f"device {int(grid[c])}: " + ", ".join(f"{a} {i}" for a, i in zip(AXES, c, strict=True))
            for c in itertools.product(*(range(s) for s in sizes))]  # fmt: skip
