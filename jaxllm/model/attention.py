"""Causal multi-head attention with grouped KV heads (MHA / GQA / MQA).

`num_kv_heads` K divides `num_heads` H: query head h reads KV head h // (H/K).
K = H is classic multi-head attention, K = 1 is multi-query attention.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.model.context import context_attention
from jaxllm.model.layers import constrain, context_shards, dense
from jaxllm.model.primitives import MASK_VALUE, attention
from jaxllm.model.rope import apply_rope, rope_inv_freq
from jaxllm.model.splash import fits_splash, on_tpu, splash_attention


def attention_mask(segment_ids: jax.Array | None, length: int) -> jax.Array:
    """(B or 1, T, T) bool, True where query t may attend to key s.

    Causal (s <= t) and, with packed sequences, same segment only: segment_ids (B, T)
    number the documents 1, 2, ... and 0 marks padding, which forms its own segment so
    real tokens never see it and no row is ever empty (the diagonal is always allowed).
    """
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))[None]  # (1, T, T)
    if segment_ids is None:
        return causal
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    return causal & same_segment


def xla_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, dropout: nn.Dropout | None = None
) -> jax.Array:
    """Reference attention as plain einsums. q (B,T,H,D), k/v (B,S,K,D), mask (B|1,T,S)."""
    B, T, H, D = q.shape
    K = k.shape[2]
    q = q.reshape(B, T, K, H // K, D)  # (B, T, K, G, D): G query heads share a KV head
    if dropout is None:  # the memory-lean path: probabilities recomputed in the backward
        return attention(q, k, v, mask).reshape(B, T, H, D)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(D))
    scores = jnp.where(mask[:, None, None], scores, MASK_VALUE)  # softmax in float32
    probs = jax.nn.softmax(scores, axis=-1)
    if dropout is not None:
        probs = dropout(probs)
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)
    return out.reshape(B, T, H, D)


class Attention(nn.Module):
    """q/k/v projections, RoPE (if configured), masked attention, output projection."""

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array | None,
        kv: tuple[jax.Array, jax.Array] | None = None,
        decode: tuple[jax.Array, jax.Array] | None = None,
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Self-attention over x (B, T, E).

        Decoding passes this layer's cache `kv` = (k, v) each (B, S, K, D) and
        `decode` = (index, mask (B, T, S)): the new keys/values are written at slots
        index.., the queries attend to the whole cache under `mask`, and the updated
        (k, v) is returned next to the output.
        """
        cfg = self.config
        H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        resid_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5  # GPT-2: residual writes scaled by depth
        o_proj = dense(cfg, cfg.d_model, ("heads", "head_dim", "embed"), axis=(-2, -1), std=resid_std, name="o_proj")
        q = dense(cfg, (H, D), ("embed", "heads", "head_dim"), name="q_proj")(x)  # (B, T, H, D)
        k = dense(cfg, (K, D), ("embed", "kv_heads", "head_dim"), name="k_proj")(x)  # (B, T, K, D)
        v = dense(cfg, (K, D), ("embed", "kv_heads", "head_dim"), name="v_proj")(x)  # (B, T, K, D)
        if cfg.position == "rope":
            inv_freq = rope_inv_freq(D, cfg.rope_theta, cfg.rope_scaling)
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        # For jaxllm.viz (attention maps): kept only when "intermediates" is mutable, else free.
        self.sow("intermediates", "q", q)
        self.sow("intermediates", "k", k)
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))

        if kv is not None:
            index, mask = decode
            k_cache, v_cache = (
                constrain(
                    jax.lax.dynamic_update_slice(c, new.astype(c.dtype), (0, index, 0, 0)),
                    ("batch", "length", "kv_heads", "head_dim"),
                )
                for c, new in zip(kv, (k, v), strict=True)
            )
            k, v = k_cache.astype(q.dtype), v_cache.astype(q.dtype)
            if cfg.attention_impl == "dot_product":
                out = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])
            else:
                out = xla_attention(q, k, v, mask)
            return o_proj(constrain(out, ("batch", "length", "heads", "head_dim"))), (k_cache, v_cache)

        active = cfg.attention_dropout > 0 and not self.deterministic  # dropout needs the probabilities
        impl = cfg.attention_impl
        _, shards = context_shards()
        if impl == "auto":
            length = x.shape[1] // shards  # the kernel tiles each device's share of the queries
            impl = "splash" if on_tpu() and fits_splash(length, cfg.attention_block) and not active else "xla"
        if shards > 1 and not self.is_initializing():  # the length is split over `context` devices
            kernel = impl == "splash" and cfg.context_attention == "allgather"
            out = context_attention(
                q, k, v, segment_ids, cfg.context_attention, cfg.context_load_balance, kernel, cfg.attention_block
            )
        elif impl == "splash" and not self.is_initializing():  # init traces an 8-token row: shapes only
            out = splash_attention(q, k, v, segment_ids, cfg.attention_block)
        elif impl == "dot_product":
            # Without packing, is_causal instead of a mask: the form a fused implementation can take.
            mask = None if segment_ids is None else attention_mask(segment_ids, x.shape[1])[:, None]
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=segment_ids is None)
        else:
            drop = nn.Dropout(cfg.attention_dropout, deterministic=False) if active else None
            out = xla_attention(q, k, v, attention_mask(segment_ids, x.shape[1]), drop)
        return o_proj(constrain(out, ("batch", "length", "heads", "head_dim")))
