"""The logical-axis rules table applied to arrays: logical PartitionSpecs -> mesh shardings.

One table decides the whole layout (DESIGN.md §4); the table itself, the axis names and
`parse_rules` live in jaxllm/parallel/axes.py (plain data, no JAX, so the config can check
`mesh.rules` without importing this module) and are re-exported here.

Rules are applied in order and a mesh axis is used at most once per array (flax's
resolution), so an activation (batch, length, embed) gets batch -> (data, fsdp) and
embed -> nothing: activations are never split along d_model by FSDP, parameters are.
"""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.errors import ConfigError
from jaxllm.model.api import param_logical_axes, param_shapes
from jaxllm.parallel.axes import DEFAULT_RULES, LOGICAL_AXES, MESH_AXES, Rules, parse_rules

__all__ = [
    "DEFAULT_RULES",
    "LOGICAL_AXES",
    "MESH_AXES",
    "Rules",
    "check_divisible",
    "flax_rules",
    "mesh_specs",
    "named_shardings",
    "parse_rules",
    "sharding_table",
]


def sharding_table(cfg) -> str:
    """Every parameter's shape, logical names and mesh PartitionSpec, as YAML comment lines
    (so `jaxllm config show` output still loads back as the same config)."""
    rules = parse_rules(cfg.mesh.rules)
    logical = param_logical_axes(cfg)
    mesh = mesh_specs(logical, rules)
    is_spec = lambda x: isinstance(x, PartitionSpec)  # noqa: E731
    flat_logical = dict(jax.tree_util.tree_leaves_with_path(logical, is_leaf=is_spec))
    flat_mesh = dict(jax.tree_util.tree_leaves_with_path(mesh, is_leaf=is_spec))
    lines = [f"# parameter shardings (mesh.rules: {list(cfg.mesh.rules) or 'defaults'}):"]
    for path, leaf in jax.tree_util.tree_leaves_with_path(param_shapes(cfg)):
        name = ".".join(str(p.key) for p in path)
        lines.append(f"#   {name:<34} {str(leaf.shape):<22} {str(tuple(flat_logical[path])):<42} -> {flat_mesh[path]}")
    return "\n".join(lines)


def flax_rules(rules: Rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    """The table in the form flax's `logical_axis_rules` and `logical_to_mesh_*` take."""
    return tuple((name, axes if axes is None or len(axes) > 1 else axes[0]) for name, axes in rules)


def mesh_specs(logical_specs, rules: Rules):
    """Tree of logical PartitionSpecs -> tree of mesh PartitionSpecs."""
    return nn.logical_to_mesh(logical_specs, flax_rules(rules))


def named_shardings(logical_specs, mesh: Mesh, rules: Rules):
    """Tree of logical PartitionSpecs -> tree of NamedShardings on `mesh`."""
    specs = mesh_specs(logical_specs, rules)
    return jax.tree.map(
        lambda spec: NamedSharding(mesh, spec), specs, is_leaf=lambda x: isinstance(x, PartitionSpec)
    )


def check_divisible(shapes, shardings) -> None:
    """Raise ConfigError for the first array whose sharded dimension the mesh does not divide.

    jax's own error names a shape and tiling factors; this one names the parameter, the
    mesh axes and the fix, before anything is compiled or allocated."""
    def check(path, shape, sharding) -> None:
        for dim, (size, axes) in enumerate(zip(shape.shape, sharding.spec, strict=False)):
            names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
            names = tuple(n for n in names if sharding.mesh.shape[n] > 1)  # the axes that split it
            ways = 1
            for name in names:
                ways *= sharding.mesh.shape[name]
            if ways > 1 and size % ways:
                where = jax.tree_util.keystr(path, simple=True, separator=".")
                fix = (
                    f"set model.vocab_size to a multiple of {ways} (e.g. {-(-size // 64) * 64})"
                    if "vocab" in where or "wte" in where or "lm_head" in where
                    else f"choose mesh sizes whose product over {' x '.join(names)} divides {size}"
                )
                raise ConfigError(
                    f"{where}: dimension {dim} of shape {tuple(shape.shape)} has size {size}, which the mesh "
                    f"axes {' x '.join(names)} = {ways} devices cannot split evenly; {fix}"
                )

    jax.tree_util.tree_map_with_path(check, shapes, shardings)
