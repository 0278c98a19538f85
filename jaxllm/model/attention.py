"""Causal multi-head attention with grouped KV heads (MHA / GQA / MQA).

`num_kv_heads` K divides `num_heads` H: query head h reads KV head h // (H/K).
K = H is classic multi-head attention, K = 1 is multi-query attention.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.model.context import context_attention
from jaxllm.model.kv_cache import ring_window, write_ring
from jaxllm.model.layers import constrain, context_shards, dense, norm
from jaxllm.model.primitives import MASK_VALUE, attention
from jaxllm.model.rope import apply_rope, rope_inv_freq
from jaxllm.model.splash import fits_splash, on_tpu, splash_attention

# A window larger than any sequence: "no window" for a layer whose window is traced.
NO_WINDOW = 2**30


def attention_mask(segment_ids: jax.Array | None, length: int, window: int | jax.Array = 0) -> jax.Array:
    """(B or 1, T, T) bool, True where query t may attend to key s.

    Causal (s <= t) and, with packed sequences, same segment only: segment_ids (B, T)
    number the documents 1, 2, ... and 0 marks padding, which forms its own segment so
    real tokens never see it and no row is ever empty (the diagonal is always allowed).
    window > 0: only the last `window` keys, the query's own included (t - s < window);
    within a packed document the slot distance is the position distance.
    """
    t = jnp.arange(length)
    causal = (t[None, :] <= t[:, None])[None]  # (1, T, T)
    if not isinstance(window, int) or window:
        causal &= (t[:, None] - t[None, :] < window)[None]
    if segment_ids is None:
        return causal
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    return causal & same_segment


def xla_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    mask: jax.Array,
    dropout: nn.Dropout | None = None,
    softcap: float = 0.0,
) -> jax.Array:
    """Reference attention as plain einsums. q (B,T,H,D), k/v (B,S,K,D), mask (B|1,T,S)."""
    B, T, H, D = q.shape
    K = k.shape[2]
    q = q.reshape(B, T, K, H // K, D)  # (B, T, K, G, D): G query heads share a KV head
    if dropout is None:  # the memory-lean path: probabilities recomputed in the backward
        return attention(q, k, v, mask, softcap).reshape(B, T, H, D)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(D))
    if softcap:
        scores = softcap * jnp.tanh(scores / softcap)
    scores = jnp.where(mask[:, None, None], scores, MASK_VALUE)  # softmax in float32
    probs = dropout(jax.nn.softmax(scores, axis=-1))
    out = jnp.einsum("bkgts,bskd->btkgd", probs.astype(v.dtype), v)
    return out.reshape(B, T, H, D)


def layer_window(cfg: ModelConfig, local: jax.Array | None) -> int | jax.Array:
    """Keys a query sees on this layer, 0 for all of them. Every layer windowed (Mistral):
    the static window; mixed local/global layers (Gemma): traced from this layer's flag."""
    if not cfg.sliding_window:
        return 0
    if cfg.sliding_window_pattern == 1 or local is None:
        return cfg.sliding_window
    return jnp.where(local, cfg.sliding_window, NO_WINDOW)


def layer_inv_freq(cfg: ModelConfig, local: jax.Array | None) -> jax.Array:
    """(D/2,) RoPE frequencies of this layer: the local base on windowed layers when
    rope_local_theta is set (Gemma 3: 10k local, 1M and rope_scaling global)."""
    global_freq = rope_inv_freq(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
    if not (cfg.sliding_window and cfg.rope_local_theta):
        return global_freq
    local_freq = rope_inv_freq(cfg.head_dim, cfg.rope_local_theta)
    if cfg.sliding_window_pattern == 1 or local is None:
        return local_freq
    return jnp.where(local, local_freq, global_freq)


def layer_is_local(cfg: ModelConfig) -> np.ndarray:
    """(L,) bool: which layers have the sliding window: every one with pattern 1 (Mistral),
    else all but those with (i + 1) % sliding_window_pattern == 0 (Gemma)."""
    i = np.arange(cfg.num_layers)
    if not cfg.sliding_window:
        return np.zeros(cfg.num_layers, bool)
    if cfg.sliding_window_pattern == 1:
        return np.ones(cfg.num_layers, bool)
    return (i + 1) % cfg.sliding_window_pattern != 0


class Attention(nn.Module):
    """q/k/v projections (with Qwen2's biases), QK-norm (Qwen3, Gemma 3), RoPE (if
    configured, per layer for Gemma's local and global layers), masked attention (causal,
    packed, sliding window, soft-capped), output projection."""

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
        local: jax.Array | None = None,
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Self-attention over x (B, T, E).

        Decoding passes this layer's cache `kv` = (k, v) each (B, S, K, D) and
        `decode` = (index, mask (B, T, S)): the new keys/values are written at slots
        index.., the queries attend to the whole cache under `mask`, and the updated
        (k, v) is returned next to the output. With a ring cache (every layer windowed,
        jaxllm/model/kv_cache.py) the queries attend to the ring and the new keys, mask
        (B, T, S + T). `local`: this layer's sliding-window flag, () bool, when windowed and
        global layers alternate (a scanned input); None otherwise.
        """
        cfg = self.config
        H, K, D = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        resid_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5  # GPT-2: residual writes scaled by depth
        o_proj = dense(cfg, cfg.d_model, ("heads", "head_dim", "embed"), axis=(-2, -1), std=resid_std, name="o_proj")
        qkv_bias = cfg.use_bias or cfg.qkv_bias
        q = dense(cfg, (H, D), ("embed", "heads", "head_dim"), bias=qkv_bias, name="q_proj")(x)  # (B, T, H, D)
        k = dense(cfg, (K, D), ("embed", "kv_heads", "head_dim"), bias=qkv_bias, name="k_proj")(x)  # (B, T, K, D)
        v = dense(cfg, (K, D), ("embed", "kv_heads", "head_dim"), bias=qkv_bias, name="v_proj")(x)  # (B, T, K, D)
        if cfg.qk_norm:  # RMSNorm of every head's query and key, one (D,) scale each
            q = norm(cfg, "q_norm", "head_dim")(q)
            k = norm(cfg, "k_norm", "head_dim")(k)
        if cfg.position == "rope":
            inv_freq = layer_inv_freq(cfg, local)
            q = apply_rope(q, positions, inv_freq)
            k = apply_rope(k, positions, inv_freq)
        if cfg.query_pre_attn_scalar and cfg.query_pre_attn_scalar != D:
            # Every backend scales scores by D^-0.5; Gemma scales by query_pre_attn_scalar^-0.5.
            q = q * jnp.asarray((D / cfg.query_pre_attn_scalar) ** 0.5, q.dtype)
        q = constrain(q, ("batch", "length", "heads", "head_dim"))
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
        # For jaxllm.viz (attention maps): kept only when "intermediates" is mutable, else free.
        self.sow("intermediates", "q", q)
        self.sow("intermediates", "k", k)
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
        window, softcap = layer_window(cfg, local), cfg.attn_logit_softcap

        if kv is not None:
            return self._decode(q, k, v, kv, decode, window, o_proj)

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
            out = self._splash(q, k, v, segment_ids, local)
        elif impl == "dot_product":
            # Without packing or a window, is_causal instead of a mask: the form a fused implementation can take.
            plain = segment_ids is None and not cfg.sliding_window
            mask = None if plain else attention_mask(segment_ids, x.shape[1], window)[:, None]
            out = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=plain)
        else:
            drop = nn.Dropout(cfg.attention_dropout, deterministic=False) if active else None
            out = xla_attention(q, k, v, attention_mask(segment_ids, x.shape[1], window), drop, softcap)
        return o_proj(constrain(out, ("batch", "length", "heads", "head_dim")))

    def _splash(self, q, k, v, segment_ids, local):
        """The splash kernel; with alternating local and global layers, one of two kernels
        chosen per layer by `lax.cond` (each kernel's mask is static, the flag is not)."""
        cfg = self.config
        run = lambda window: splash_attention(  # noqa: E731
            q, k, v, segment_ids, cfg.attention_block, window, cfg.attn_logit_softcap
        )
        if not cfg.sliding_window:
            return run(0)
        if cfg.sliding_window_pattern == 1 or local is None:
            return run(cfg.sliding_window)
        return jax.lax.cond(local, lambda: run(cfg.sliding_window), lambda: run(0))

    def _decode(self, q, k, v, kv, decode, window, o_proj):
        """One decoding step against this layer's cache (see __call__)."""
        cfg = self.config
        index, mask = decode
        names = ("batch", "length", "kv_heads", "head_dim")
        if ring_window(cfg):  # attend to the ring and the new keys, then keep the newest W
            k_all = jnp.concatenate([kv[0].astype(q.dtype), k], axis=1)
            v_all = jnp.concatenate([kv[1].astype(q.dtype), v], axis=1)
            k_cache, v_cache = (constrain(write_ring(c, new, index), names) for c, new in zip(kv, (k, v), strict=True))
        else:
            k_cache, v_cache = (
                constrain(jax.lax.dynamic_update_slice(c, new.astype(c.dtype), (0, index, 0, 0)), names)
                for c, new in zip(kv, (k, v), strict=True)
            )
            k_all, v_all = k_cache.astype(q.dtype), v_cache.astype(q.dtype)
            if not isinstance(window, int) or window:  # a windowed layer of a mixed model: mask by distance
                T, S = q.shape[1], k_all.shape[1]
                query_slot = index + jnp.arange(T)
                mask = mask & (query_slot[:, None] - jnp.arange(S)[None, :] < window)[None]
        if cfg.attention_impl == "dot_product":
            out = jax.nn.dot_product_attention(q, k_all, v_all, mask=mask[:, None])
        else:
            out = xla_attention(q, k_all, v_all, mask, softcap=cfg.attn_logit_softcap)
        return o_proj(constrain(out, ("batch", "length", "heads", "head_dim"))), (k_cache, v_cache)
