"""Block-quantized storage of frozen projection kernels (QLoRA's base), through qwix.

A kernel W (*in, *out) is quantized on its (K_in, *out) view in blocks of `block`
consecutive input features per output feature: each block keeps one float32 absmax scale
and a code per weight. "nf4" codes are the 16 NormalFloat levels of Dettmers et al. (QLoRA,
appendix E), the nearest level to w / absmax; "int8" codes are round(127 w / absmax).

Why qwix: it is the maintained JAX quantization library (Google's), whose `quantize` /
`dequantize` implement both formats with tiled (per-block) scales, so jaxllm keeps only the
storage layout. qwix's model-rewriting LoRA is not used: it intercepts `jax.lax.dot_general`,
which jaxllm's hand-written backward (`primitives.linear`, a custom VJP) hides from it (the
adapter lives in layers.Dense instead; docs/posttrain.md).

Storage: checkpoints (orbax / tensorstore) cannot hold 4-bit arrays, so two NF4 codes are
packed per uint8 along the last input axis, which keeps the kernel's other axes and so its
logical names and sharding; int8 codes are stored as they are. Per weight that is 0.5 + 4 /
block bytes for nf4 (0.5625 at block 64) and 1 + 4 / block for int8, against 2 for bfloat16.
The leading axes of a stacked (scanned) kernel are carried through: `lead` counts them.

The stated error of a dequantized weight, per block: nf4 at most absmax x (the largest half
gap between neighbouring levels, 0.152); int8 at most absmax / 254. `max_error` gives it.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from qwix._src.core import numerics, qarray

FORMATS = ("nf4", "int8")


def _how(fmt: str, ndim: int, axis: int, block: int) -> qarray.HowToQuantize:
    channels = tuple(a for a in range(ndim) if a != axis)
    return qarray.HowToQuantize(qtype=fmt, channelwise_axes=channels, tiled_axes={axis: block})


def code_shape(kernel_shape: tuple[int, ...], in_axes: int, lead: int, fmt: str) -> tuple[int, ...]:
    """Shape of the stored codes: the kernel's, the last input axis halved for nf4."""
    if fmt != "nf4":
        return tuple(kernel_shape)
    last = lead + in_axes - 1
    return (*kernel_shape[:last], kernel_shape[last] // 2, *kernel_shape[last + 1 :])


def scale_shape(kernel_shape: tuple[int, ...], in_axes: int, lead: int, block: int) -> tuple[int, ...]:
    """Shape of the scales: (*lead, K_in / block, *out)."""
    k_in = math.prod(kernel_shape[lead : lead + in_axes])
    return (*kernel_shape[:lead], k_in // block, *kernel_shape[lead + in_axes :])


def quantize(kernel: jax.Array, in_axes: int, fmt: str, block: int, lead: int = 0) -> tuple[jax.Array, jax.Array]:
    """(codes, scales) of `kernel` (*lead, *in, *out) in `fmt`, blocks of `block` inputs."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; choose from {', '.join(FORMATS)}")
    if lead:  # one layer at a time: qwix's nearest-level search holds (weights, 16) floats
        return jax.lax.map(lambda k: quantize(k, in_axes, fmt, block, lead - 1), kernel)
    shape = kernel.shape
    k_in = math.prod(shape[lead : lead + in_axes])
    view = kernel.astype(jnp.float32).reshape(*shape[:lead], k_in, *shape[lead + in_axes :])
    q = qarray.quantize(view, _how(fmt, view.ndim, lead, block))
    codes = q.qvalue.reshape(shape)
    if fmt == "nf4":  # two 4-bit codes per byte, along the last input axis
        last = lead + in_axes - 1
        codes = codes.astype(jnp.uint8)
        pairs = codes.reshape(*shape[:last], shape[last] // 2, 2, *shape[last + 1 :])
        lo, hi = jnp.take(pairs, 0, axis=last + 1), jnp.take(pairs, 1, axis=last + 1)
        codes = lo | (hi << 4)
    return codes, q.scale.astype(jnp.float32)


def dequantize(
    codes: jax.Array, scales: jax.Array, in_axes: int, fmt: str, dtype: jnp.dtype, lead: int = 0
) -> jax.Array:
    """The kernel (*lead, *in, *out) in `dtype` from its stored codes and scales."""
    if fmt == "nf4":
        last = lead + in_axes - 1
        lo, hi = codes & 15, codes >> 4
        pairs = jnp.stack([lo, hi], axis=last + 1)  # (..., K/2, 2, ...)
        shape = (*codes.shape[:last], codes.shape[last] * 2, *codes.shape[last + 1 :])
        codes = pairs.reshape(shape).astype(jnp.uint4)
    shape = codes.shape
    k_in = math.prod(shape[lead : lead + in_axes])
    view = codes.reshape(*shape[:lead], k_in, *shape[lead + in_axes :])
    q = qarray.QArray(qvalue=view, scale=scales, zero_point=None, qtype=fmt)
    return qarray.dequantize(q).reshape(shape).astype(dtype)


def max_error(fmt: str) -> float:
    """The largest |w - dequantize(quantize(w))| per unit of block absmax (round to nearest)."""
    if fmt == "int8":
        return 1.0 / 254.0
    levels = jnp.sort(numerics.get_nf4_buckets())
    return float(jnp.max(jnp.diff(levels)) / 2)
