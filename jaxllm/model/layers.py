"""Shared building blocks: initializers with logical axis names, dense layers, norms.

Every parameter is created through `param_init(init, names)` so that it carries its
logical axis names (DESIGN.md §4). The model never mentions a mesh: a rules table
(in jaxllm.parallel) maps these names to mesh axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.model import lora, quant
from jaxllm.model.primitives import layer_norm, linear, rms_norm

# Logical names. Parameters: embed, heads, kv_heads, head_dim, mlp, vocab, layers.
# Activations: batch, length, embed, heads, kv_heads, head_dim, mlp, vocab.
BATCH_LENGTH_EMBED = ("batch", "length", "embed")
# The residual stream between blocks: its length is "sequence", which the rules split over
# `tensor` (Megatron sequence parallelism). Inside a block the projections gather it back
# (an all-gather instead of nothing) and the output projections reduce-scatter into it (in
# place of tensor parallelism's all-reduce: the same bytes), and what remat keeps per layer
# and what the norms compute shrink by the tensor-parallel degree.
RESIDUAL = ("batch", "sequence", "embed")


def param_init(init: nn.initializers.Initializer, names: Sequence[str | None]) -> nn.initializers.Initializer:
    """Wrap an initializer so the parameter it makes carries logical axis names."""
    return nn.with_logical_partitioning(init, tuple(names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Annotate an activation with logical names (a no-op outside a sharding context)."""
    return nn.with_logical_constraint(x, tuple(names))


def context_shards() -> tuple[tuple[str, ...], int]:
    """The mesh axes the logical `length` is split over in the program being traced (its mesh
    and rules context), and how many devices that is: ((), 1) outside a mesh."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return (), 1
    axes = nn.logical_to_mesh_axes(("length",))[0]
    axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
    axes = tuple(a for a in axes if mesh.shape[a] > 1)
    return axes, math.prod(mesh.shape[a] for a in axes)


class Dense(nn.Module):
    """y = x @ kernel + bias, contracting the last `in_axes` axes of x.

    The kernel is created at its true shape, e.g. q_proj (E, H, D), so its logical
    names line up with its axes (flax's DenseGeneral initializes a flattened 2-D view).

    With `lora_rank` > 0 a low-rank adapter is added (jaxllm/model/lora.py): y += (alpha / r)
    (dropout(x) A) B, A (*in, r) and B (r, *out) in float32, B starting at 0. With `quantize`
    the frozen kernel is stored as block-quantized codes and scales (jaxllm/model/quant.py)
    and dequantized to the compute dtype at each use.
    """

    features: tuple[int, ...]
    in_axes: int
    kernel_names: tuple[str | None, ...]
    std: float
    use_bias: bool
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    lora_rank: int = 0
    lora_alpha: float = 1.0
    lora_dropout: float = 0.0
    quantize: str = "none"
    quant_block: int = 64

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_shape = x.shape[x.ndim - self.in_axes :]
        shape = (*in_shape, *self.features)
        if self.quantize == "none":
            kernel = self.param(
                "kernel", param_init(nn.initializers.normal(self.std), self.kernel_names), shape, self.param_dtype
            )
        else:
            kernel = self._quantized_kernel(shape)
        y = linear(x.astype(self.dtype), kernel.astype(self.dtype), self.in_axes)
        if self.lora_rank:
            y = y + self._adapter(x, in_shape)
        if self.use_bias:
            bias_names = self.kernel_names[self.in_axes :]
            bias = self.param("bias", param_init(nn.initializers.zeros, bias_names), self.features, self.param_dtype)
            y = y + bias.astype(self.dtype)
        return y

    def _adapter(self, x: jax.Array, in_shape: tuple[int, ...]) -> jax.Array:
        """(alpha / r) (x A) B; A as PEFT initialises it (Kaiming-uniform, bound 1 / sqrt(fan_in))."""
        r, n_in = self.lora_rank, self.in_axes
        a_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform", in_axis=tuple(range(n_in)))
        a = self.param("lora_a", param_init(a_init, (*self.kernel_names[:n_in], None)), (*in_shape, r), jnp.float32)
        b_names = (None, *self.kernel_names[n_in:])
        b = self.param("lora_b", param_init(nn.initializers.zeros, b_names), (r, *self.features), jnp.float32)
        h = x.astype(self.dtype)
        if self.lora_dropout > 0 and self.has_rng("dropout"):  # rngs are passed only when training
            h = nn.Dropout(self.lora_dropout, deterministic=False)(h)
        low = linear(h, a.astype(self.dtype), n_in)  # (..., r)
        return linear(low, b.astype(self.dtype), 1) * jnp.asarray(self.lora_alpha / r, self.dtype)

    def _quantized_kernel(self, shape: tuple[int, ...]) -> jax.Array:
        """The frozen kernel from `kernel_q` / `kernel_scale`. A fresh init quantizes a random
        kernel (shapes only: QLoRA starts from a base model's weights, lora.adapt)."""
        fmt, n_in, block = self.quantize, self.in_axes, self.quant_block

        def init_codes(rng, shape_):
            return quant.quantize(nn.initializers.normal(self.std)(rng, shape), n_in, fmt, block)[0]

        def init_scales(rng, shape_):
            return quant.quantize(nn.initializers.normal(self.std)(rng, shape), n_in, fmt, block)[1]

        codes = self.param("kernel_q", param_init(init_codes, self.kernel_names), quant.code_shape(shape, n_in, 0, fmt))
        scale_names = (None, *self.kernel_names[n_in:])
        scales = self.param(
            "kernel_scale", param_init(init_scales, scale_names), quant.scale_shape(shape, n_in, 0, block)
        )
        return quant.dequantize(codes, scales, n_in, fmt, self.dtype)


def dense(
    config: ModelConfig,
    features: int | Sequence[int],
    kernel_names: Sequence[str | None],
    *,
    axis: int | Sequence[int] = -1,
    std: float | None = None,
    bias: bool | None = None,
    name: str,
) -> Dense:
    """A Dense with normal(std) init, the config's dtypes, and logical names.

    `axis` is -1 (contract the last input axis) or (-2, -1) (the last two, for o_proj).
    `bias` overrides config.use_bias (Qwen2's q/k/v biases on an otherwise bias-free model).
    `name` also says whether model.lora adapts or quantizes it (jaxllm/model/lora.py).
    """
    lo = config.lora
    return Dense(
        features=(features,) if isinstance(features, int) else tuple(features),
        in_axes=1 if isinstance(axis, int) else len(axis),
        kernel_names=tuple(kernel_names),
        std=std or config.init_std,
        use_bias=config.use_bias if bias is None else bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        lora_rank=lora.adapter_rank(config, name),
        lora_alpha=lo.alpha,
        lora_dropout=lo.dropout,
        quantize=lora.storage(config, name),
        quant_block=lo.quant_block,
        name=name,
    )


class Norm(nn.Module):
    """LayerNorm (scale + bias) or RMSNorm (scale only) over the last axis.

    Parameters are named as flax's LayerNorm / RMSNorm name them (scale, bias), so
    checkpoints and the torch/Hugging Face layouts are unchanged. The math runs in
    jaxllm.model.primitives, whose backward keeps only x and two statistics per row instead of
    autodiff's chain of intermediates (see that module for the measurement).
    """

    kind: str  # "layernorm" | "rmsnorm"
    epsilon: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype
    unit_offset: bool = False  # Gemma: multiply by (1 + scale), the scale starting at 0
    axis_name: str = "embed"  # the logical name of the normalised axis ("head_dim" for QK-norm)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        E = x.shape[-1]
        init = nn.initializers.zeros if self.unit_offset else nn.initializers.ones
        scale = self.param("scale", param_init(init, (self.axis_name,)), (E,), self.param_dtype)
        if self.kind == "rmsnorm":
            if self.unit_offset:  # (1 + w) in float32, as Gemma computes it
                scale = scale.astype(jnp.float32) + 1.0
            return rms_norm(x, scale, self.epsilon).astype(self.dtype)
        bias = self.param("bias", param_init(nn.initializers.zeros, (self.axis_name,)), (E,), self.param_dtype)
        return layer_norm(x, scale, bias, self.epsilon).astype(self.dtype)


def norm(config: ModelConfig, name: str, axis_name: str = "embed") -> nn.Module:
    """LayerNorm (GPT-2: scale + bias) or RMSNorm (Llama: scale only; Gemma: 1 + scale), per
    config, over the axis with logical name `axis_name` (d_model, or head_dim for QK-norm).

    Statistics are reduced in float32 whatever the compute dtype, so bf16 training does
    not lose the variance estimate.
    """
    return Norm(
        kind=config.norm,
        epsilon=config.norm_eps,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        unit_offset=config.norm_unit_offset,
        axis_name=axis_name,
        name=name,
    )
