"""Shared building blocks: initializers with logical axis names, dense layers, norms.

Every parameter is created through `param_init(init, names)` so that it carries its
logical axis names (DESIGN.md §4). The model never mentions a mesh: a rules table
(in jaxllm.parallel) maps these names to mesh axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig

# Logical names. Parameters: embed, heads, kv_heads, head_dim, mlp, vocab, layers.
# Activations: batch, length, embed, heads, kv_heads, head_dim, mlp, vocab.
BATCH_LENGTH_EMBED = ("batch", "length", "embed")


def param_init(init: nn.initializers.Initializer, names: Sequence[str | None]) -> nn.initializers.Initializer:
    """Wrap an initializer so the parameter it makes carries logical axis names."""
    return nn.with_logical_partitioning(init, tuple(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Annotate an activation with logical names (a no-op outside a sharding context)."""
    return nn.with_logical_constraint(x, tuple(names))


def dense(
    config: ModelConfig,
    features: int | Sequence[int],
    kernel_names: Sequence[str | None],
    *,
    axis: int | Sequence[int] = -1,
    std: float | None = None,
    name: str,
) -> nn.DenseGeneral:
    """A DenseGeneral with normal(std) init, the config's dtypes, and logical names.

    Bias names are the kernel's output names (the axes in `features`).
    """
    n_out = 1 if isinstance(features, int) else len(features)
    return nn.DenseGeneral(
        features=features,
        axis=axis,
        use_bias=config.use_bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=param_init(nn.initializers.normal(std or config.init_std), kernel_names),
        bias_init=param_init(nn.initializers.zeros, tuple(kernel_names)[-n_out:]),
        name=name,
    )


def norm(config: ModelConfig, name: str) -> nn.Module:
    """LayerNorm (GPT-2: scale + bias) or RMSNorm (Llama: scale only), per config.

    Statistics are reduced in float32 whatever the compute dtype (flax does this by
    default), so bf16 training does not lose the variance estimate.
    """
    kwargs = dict(
        epsilon=config.norm_eps,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        scale_init=param_init(nn.initializers.ones, ("embed",)),
        name=name,
    )
    if config.norm == "rmsnorm":
        return nn.RMSNorm(**kwargs)
    return nn.LayerNorm(bias_init=param_init(nn.initializers.zeros, ("embed",)), **kwargs)
