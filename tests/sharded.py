"""Running a function of a model's parameters on a mesh, the parameters placed by the default
rules table, and comparing gradient trees: what the sharded-equals-one-device tests
(pipeline, context, experts) share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxllm
from jaxllm.config import MeshConfig, ModelConfig
from jaxllm.parallel.mesh import make_mesh
from jaxllm.parallel.rules import flax_rules, named_shardings, parse_rules


def on_mesh(fn: Callable[[Any], Any], params: Any, cfg: ModelConfig, mesh_cfg: MeshConfig) -> tuple[Any, str]:
    """fn(params) jitted on the mesh `mesh_cfg` (parameters sharded by their logical names,
    activations by the model's constraints): (its result, the compiled program's text)."""
    mesh = make_mesh(mesh_cfg)
    rules = parse_rules(())
    placed = jax.device_put(params, named_shardings(jaxllm.param_logical_axes(cfg), mesh, rules))

    def f(p):
        with nn.logical_axis_rules(flax_rules(rules)):
            return fn(p)

    with jax.set_mesh(mesh):
        jitted = jax.jit(f)
        text = jitted.lower(placed).compile().as_text()
        return jitted(placed), text


def max_rel_error(grads: Any, ref: Any) -> float:
    """The largest leaf-wise max |a - b| / max |b| between two gradient trees."""
    pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(ref), strict=True)
    return max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in pairs)
