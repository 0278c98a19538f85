"""The train state, created and described in the run's layout.

State is a plain dict pytree, which is also the checkpoint layout:
    {"step": int32 scalar, "params": ..., "opt_state": ..., "rng": uint32[2]}
Parameters and the AdamW moments carry the same logical names, so FSDP shards the
optimizer state exactly like the parameters (ZeRO-3) with no extra code. Where each leaf
lives is the run's `Layout` (jaxllm/parallel/layout.py), built once and passed in here.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxllm.config import Config
from jaxllm.model.api import boxed_init_fn
from jaxllm.parallel.layout import Layout

State = dict[str, Any]


def as_layout(cfg: Config, where: Layout | Mesh, tx: optax.GradientTransformation | None) -> Layout:
    """`where` as a Layout: a run passes its own; a bare Mesh (one-off callers: benchmarks,
    tests, `jaxllm plan`) gets a layout built for this one use."""
    if isinstance(where, Layout):
        if tx is not None and where.state is None:
            raise ValueError("this layout was built without an optimizer; build it with the run's tx")
        return where
    return Layout.build(cfg, where, tx)


def state_shardings(cfg: Config, mesh: Mesh, tx: optax.GradientTransformation) -> State:
    """NamedSharding of every state leaf (a one-off layout; a run reads its Layout's `state`)."""
    return Layout.build(cfg, mesh, tx).state


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


def init_state(cfg: Config, layout: Layout | Mesh, tx: optax.GradientTransformation, params: Any = None) -> State:
    """A fresh state, created directly in its sharded layout (no host copy of the model).

    `params` (e.g. a pre-trained run's, for instruction tuning) replaces the random
    initialisation: copied into new buffers in the layout (the train step donates the
    state; the caller keeps its own), with fresh optimizer moments."""
    layout = as_layout(cfg, layout, tx)
    shardings = layout.state
    state = jax.jit(lambda rng: _init_state(cfg, tx, rng), out_shardings=shardings)(jax.random.PRNGKey(cfg.train.seed))
    if params is None:
        return state
    placed = jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings["params"])(params)
    return {**state, "params": placed, "opt_state": jax.jit(tx.init, out_shardings=shardings["opt_state"])(placed)}
