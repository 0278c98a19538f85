"""Axis names and the logical-axis rules table, as plain data: no JAX, no flax.

Why a leaf: the config checks `mesh.rules` and the mesh axis sizes at load time, and the
mesh, the shardings and the plots all name the same axes. Keeping the names and the
table here, importing only jaxllm.errors, lets every layer use them without a cycle
(config -> rules -> config) and without importing JAX to validate a YAML file.

The table maps logical names (on parameters and activations) to mesh axes. With the
default below:

| logical  | mesh axes      | effect |
| -------- | -------------- | ------ |
| batch    | data, fsdp, expert | the batch is split over every data-parallel device (DP, FSDP and expert devices) |
| embed    | fsdp, context  | FSDP / ZeRO-3: parameters and their AdamW moments are split along d_model |
| heads    | tensor         | Megatron: attention heads split over `tensor` |
| kv_heads | tensor         | ... and their K/V heads |
| mlp      | tensor         | Megatron: the MLP hidden dimension split over `tensor` |
| vocab    | tensor         | embedding rows and the logits' vocabulary split over `tensor` |
| layers   | pipeline       | the scanned [L, ...] axis: with S stages each device stores L/S layers |
| stage    | pipeline       | the pipeline schedule's stage axis (jaxllm/model/pipelined.py) |
| length   | context        | context parallelism: activations split along the sequence (long context) |
| sequence | context, tensor| ... and the residual stream's length, also over `tensor` (Megatron sequence parallelism) |
| expert   | expert         | MoE: each device holds num_experts / mesh.expert of each MoE layer's experts |
| head_dim | (replicated)   | |

`sequence` names the length of the residual stream between blocks only (what remat keeps,
what the norms read), so tensor parallelism splits it too; `length` (attention's queries,
keys and values, the MLP's hidden units, the logits) is split over `context` only, and
attention then reads the keys of the other shards (jaxllm/model/context.py). Context
devices also hold a share of the parameters (`embed -> fsdp, context`): they see the same
rows, so like FSDP devices they store 1/n of each weight and gather it per layer.
Expert devices hold their own share of the batch too (as MaxText does): the dense parts
(attention, norms, the router) run data parallel over `expert`, and only the routed tokens
travel to the devices that hold their experts and back (an all-to-all each way,
jaxllm/model/moe.py). `mesh.rules` in the config changes entries ("embed=" replicates
parameters: plain DP).
How the table is applied to arrays: jaxllm/parallel/rules.py.
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxllm.errors import ConfigError

# (logical name, the mesh axes it is split over, or None: replicated), applied in order.
Rules = tuple[tuple[str, tuple[str, ...] | None], ...]

LOGICAL_AXES = (
    "batch", "length", "sequence", "embed", "heads", "kv_heads", "head_dim", "mlp", "vocab", "layers", "stage",
    "expert",
)  # fmt: skip
# The device mesh's axes, in mesh order; MeshConfig has one size field for each, in this order.
MESH_AXES = ("data", "fsdp", "context", "expert", "tensor", "pipeline")

DEFAULT_RULES: Rules = (
    ("batch", ("data", "fsdp", "expert")),
    ("length", ("context",)),
    ("sequence", ("context", "tensor")),
    ("embed", ("fsdp", "context")),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("head_dim", None),
    ("mlp", ("tensor",)),
    ("vocab", ("tensor",)),
    ("layers", ("pipeline",)),
    ("stage", ("pipeline",)),
    ("expert", ("expert",)),
)


def parse_rules(changes: Sequence[str]) -> Rules:
    """DEFAULT_RULES with `mesh.rules` entries ("logical=a+b", "logical=") applied.

    Raises ConfigError naming the entry, so a typo in `mesh.rules` fails at config load."""
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
