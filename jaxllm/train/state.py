"""The train state and where every piece of it lives on the mesh.

State is a plain dict pytree, which is also the checkpoint layout:
    {"step": int32 scalar, "params": ..., "opt_state": ..., "rng": uint32[2]}
Parameters and the AdamW moments carry the same logical names, so FSDP shards the
optimizer state exactly like the parameters (ZeRO-3) with no extra code.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.config import Config
from jaxllm.model.api import boxed_init_fn
from jaxllm.parallel.rules import check_divisible, named_shardings, parse_rules

State = dict[str, Any]


def state_logical_specs(cfg: Config, tx: optax.GradientTransformation) -> State:
    """Logical PartitionSpecs of the whole state, from the boxed (named) parameters."""
    boxed = jax.eval_shape(boxed_init_fn(cfg.model), jax.random.key(0))
    opt_boxed = jax.eval_shape(tx.init, boxed)  # optax maps over the boxes: moments inherit the names
    return {
        "step": PartitionSpec(),
        "params": nn.get_partition_spec(boxed),
        "opt_state": nn.get_partition_spec(opt_boxed),
        "rng": PartitionSpec(),
    }


def state_shardings(cfg: Config, mesh: Mesh, tx: optax.GradientTransformation) -> State:
    """NamedSharding of every state leaf, from the logical names and the rules table."""
    shardings = named_shardings(state_logical_specs(cfg, tx), mesh, parse_rules(cfg.mesh.rules))
    check_divisible(nn.meta.unbox(jax.eval_shape(boxed_init_fn(cfg.model), jax.random.key(0))), shardings["params"])
    return shardings


def abstract_state(cfg: Config, tx: optax.GradientTransformation, shardings: State | None = None) -> State:
    """ShapeDtypeStructs of the state (with shardings if given): what a restore fills in."""
    shapes = jax.eval_shape(lambda: _init_state(cfg, tx, jax.random.PRNGKey(0)))
    if shardings is None:
        return shapes
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)


def _init_state(cfg: Config, tx: optax.GradientTransformation, rng: jax.Array) -> State:
    init_rng, train_rng = jax.random.split(rng)
    params = nn.meta.unbox(boxed_init_fn(cfg.model)(init_rng))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params), "rng": train_rng}


def init_state(cfg: Config, mesh: Mesh, tx: optax.GradientTransformation) -> State:
    """A fresh state, created directly in its sharded layout (no host copy of the model)."""
    shardings = state_shardings(cfg, mesh, tx)
    init = jax.jit(lambda rng: _init_state(cfg, tx, rng), out_shardings=shardings)
    return init(jax.random.PRNGKey(cfg.train.seed))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
