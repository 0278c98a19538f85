"""The logical-axis rules table: logical names (on parameters and activations) -> mesh axes.

One table decides the whole layout (DESIGN.md §4). With the default below:

| logical  | mesh axes      | effect |
| -------- | -------------- | ------ |
| batch    | data, fsdp     | the batch is split over every data-parallel device (DP and FSDP) |
| embed    | fsdp           | FSDP / ZeRO-3: parameters and their AdamW moments are split along d_model |
| heads    | tensor         | Megatron: attention heads split over `tensor` |
| kv_heads | tensor         | ... and their K/V heads |
| mlp      | tensor         | Megatron: the MLP hidden dimension split over `tensor` |
| vocab    | tensor         | embedding rows and the logits' vocabulary split over `tensor` |
| layers   | pipeline       | the scanned [L, ...] axis: with S stages each device stores L/S layers |
| stage    | pipeline       | the pipeline schedule's stage axis (jaxllm/model/pipelined.py) |
| length, head_dim | (replicated) | |

Rules are applied in order and a mesh axis is used at most once per array (flax's
resolution), so an activation (batch, length, embed) gets batch -> (data, fsdp) and
embed -> nothing: activations are never split along d_model by FSDP, parameters are.
`mesh.rules` in the config changes entries ("embed=" replicates parameters: plain DP).
"""

from __future__ import annotations

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.config import ConfigError

Rules = tuple[tuple[str, tuple[str, ...] | None], ...]

LOGICAL_AXES = ("batch", "length", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers", "stage")
MESH_AXES = ("data", "fsdp", "tensor", "pipeline")

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", ("fsdp",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", None),
    ("mlp", ("tensor",)),
    ("vocab", ("tensor",)),
    ("layers", ("pipeline",)),
    ("stage", ("pipeline",)),
)


def parse_rules(changes: tuple[str, ...] | list[str]) -> Rules:
    """DEFAULT_RULES with `mesh.rules` entries ("logical=a+b", "logical=") applied."""
    table = dict(DEFAULT_RULES)
    for entry in changes:
        name, sep, axes = entry.partition("=")
        name = name.strip()
        if not sep or name not in LOGICAL_AXES:
            raise ConfigError(
                f"mesh.rules entry {entry!r} must be 'logical=axis[+axis]' "
                f"with logical one of {', '.join(LOGICAL_AXES)}"
            )
        parts = tuple(a.strip() for a in axes.split("+") if a.strip())
        bad = [a for a in parts if a not in MESH_AXES]
        if bad:
            raise ConfigError(f"mesh.rules entry {entry!r}: {bad[0]!r} is not a mesh axis ({', '.join(MESH_AXES)})")
        table[name] = parts or None
    return tuple(table.items())


def sharding_table(cfg) -> str:
    """Every parameter's shape, logical names and mesh PartitionSpec, as YAML comment lines
    (so `jaxllm config show` output still loads back as the same config)."""
    from jaxllm.model.api import param_logical_axes, param_shapes

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
    from jaxllm.config import ConfigError

    def check(path, shape, sharding) -> None:
        for dim, (size, axes) in enumerate(zip(shape.shape, sharding.spec, strict=False)):
            names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
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
