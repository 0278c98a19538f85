"""Splash attention: JAX's own Pallas TPU flash-attention kernel, for training on TPU.

Why a kernel: XLA attention materialises the (T, S) scores and probabilities of every
head (float32), and their gradients in the backward pass: at 8192 tokens that is most of
a Llama step's memory. A flash kernel walks (block_q, block_kv) tiles with an online
softmax and keeps only the output and the log-sum-exp per query, recomputing the tiles in
the backward pass.

Why this kernel: `jax.experimental.pallas.ops.tpu.splash_attention` ships with jax
itself (no extra dependency, always the installed jax's version), is what MaxText runs
by default on TPU, skips fully-masked tiles of the causal mask, takes segment ids (packed
documents), grouped KV heads (query head h reads KV head h // (H / K)), local windows and
logit soft-capping, and has an interpret mode that runs the same kernel on CPU, which is
how the tests check it against `xla_attention` (docs/performance.md compares it with
tokamax's build of the same kernel).

The kernel works on one sequence's (heads, length, head_dim) arrays; this module vmaps it
over the batch and, under a mesh, runs it in `shard_map` over the batch axes and the
heads' axis (each device attends its own sequences and heads: no communication).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxllm.model.layers import context_shards

QKV_NAMES = ("batch", "length", "heads", "head_dim")
KV_NAMES = ("batch", "length", "kv_heads", "head_dim")


def _tile(length: int, requested: int = 0) -> int | None:
    """The tile edge for `length`, or None when the kernel cannot take that length: the
    kernel's tiles are multiples of 128 (the TPU's lanes) and must divide the length."""
    if requested:
        return requested if requested % 128 == 0 and length % requested == 0 else None
    return next((b for b in (512, 256, 128) if length % b == 0), None)


def block_size(length: int, requested: int = 0) -> int:
    """The tile edge for a sequence of `length`: `requested` if set, else the largest of
    512, 256, 128 that divides the length (512 is splash's usual TPU choice for head_dim
    64-128). Config validation refuses bad lengths first; this names them if one gets here."""
    tile = _tile(length, requested)
    if tile is None:
        raise ValueError(f"splash attention cannot tile a sequence of {length} tokens with model.attention_block="
                         f"{requested}: it needs a multiple of 128 that divides the length; set data.seq_len to a "
                         "multiple of 128, or model.attention_impl=xla")  # fmt: skip
    return tile


def fits_splash(length: int, requested: int = 0) -> bool:
    """Whether `attention_impl=auto` can take the splash kernel for this length."""
    return _tile(length, requested) is not None


def _kernel(heads: int, q_len: int, kv_len: int, block: int, interpret: bool, window: int = 0, softcap: float = 0.0):
    """The splash kernel for one sequence: causal mask over (q_len, kv_len), `heads` query heads;
    with `window` > 0 a sliding window of that many keys (the query's own included), which the
    kernel skips tile by tile like the causal mask's upper triangle; `softcap` > 0 soft-caps the
    scores. Built per trace, not cached: it holds arrays made while tracing (its mask tables)."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # slow import (0.26 s): only when used

    def one_mask():
        if window:
            return splash.LocalMask((q_len, kv_len), window_size=(window - 1, 0), offset=0)
        return splash.CausalMask((q_len, kv_len))

    mask = splash.MultiHeadMask([one_mask() for _ in range(heads)])
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    return splash.make_splash_mha(
        mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret,
        attn_logits_soft_cap=softcap or None,
    )  # fmt: skip


def on_tpu() -> bool:
    """Whether the program being traced runs on TPU: the context mesh's devices when one is
    set (`jaxllm plan` compiles for TPU devices from a CPU host), else the default backend."""
    device = getattr(jax.sharding.get_abstract_mesh(), "abstract_device", None)
    if device is not None:
        return device.platform == "tpu"
    return jax.default_backend() == "tpu"


def splash_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    block: int = 0,
    window: int = 0,
    softcap: float = 0.0,
) -> jax.Array:
    """Causal attention through the splash kernel. q (B, T, H, D), k/v (B, S, K, D),
    segment_ids (B, T) or None (one document per row); returns (B, T, H, D) in q's dtype.
    window > 0: each query sees its last `window` keys (sliding window); softcap > 0: scores
    soft-capped, cap * tanh(s / cap).
    Same contract as `xla_attention`: scores scaled by 1/sqrt(D), softmax in float32, padding
    (segment 0) its own segment. Off TPU the kernel runs in Pallas interpret mode (slow: for
    tests and debugging)."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds  # slow import: only when used

    B, T, H, D = q.shape
    interpret = not on_tpu()
    blk = block_size(T, block)
    scale = jnp.asarray(D**-0.5, q.dtype)

    def local(q, k, v, seg):  # this device's rows and heads
        kernel = _kernel(q.shape[2], q.shape[1], k.shape[1], blk, interpret, window, softcap)

        def one(qb, kb, vb, sb):  # one sequence: (T, H, D) -> (H, T, D)
            ids = None if sb is None else SegmentIds(q=sb, kv=sb)
            out = kernel((qb * scale).swapaxes(0, 1), kb.swapaxes(0, 1), vb.swapaxes(0, 1), segment_ids=ids)
            return out.swapaxes(0, 1)

        if seg is None:
            return jax.vmap(lambda a, b, c: one(a, b, c, None))(q, k, v)
        return jax.vmap(one)(q, k, v, seg)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(q, k, v, segment_ids)
    q_spec, kv_spec = (PartitionSpec(*nn.logical_to_mesh_axes(n)) for n in (QKV_NAMES, KV_NAMES))
    if context_shards()[1] > 1:
        raise ValueError(f"splash_attention needs whole sequences per device; the length is split ({q_spec}): "
                         "jaxllm.model.context.context_attention attends across the shards")  # fmt: skip
    seg_spec = PartitionSpec(q_spec[0], None)
    specs = (q_spec, kv_spec, kv_spec) + ((seg_spec,) if segment_ids is not None else ())
    run = local if segment_ids is not None else (lambda q_, k_, v_: local(q_, k_, v_, None))
    args = (q, k, v) + ((segment_ids,) if segment_ids is not None else ())
    return jax.shard_map(run, in_specs=specs, out_specs=q_spec, check_vma=False)(*args)
