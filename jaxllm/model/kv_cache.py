"""The key/value cache for autoregressive decoding, in the scanned layout.

One fixed-size buffer per tensor, with the layer axis first like the parameters:
k, v: (layers, batch, slots, kv_heads, head_dim). A fixed size keeps every decode step
the same compiled program; the price is attending over all slots (masked) each step.

Prompts of different lengths are left-padded to a common length, so every row writes
slot `index` at the same step. Row b's real tokens start at slot `start[b]`: its token
in slot s sits at position s - start[b] (RoPE and learned positions both use that), and
it may attend to slots start[b] .. its own slot. Padding slots are never attended to.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig

# Logical names of k and v (DESIGN.md §4): batch over the data axes, KV heads over
# `tensor`, so a model that trains sharded also decodes sharded.
CACHE_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")


class KVCache(NamedTuple):
    """Decoding state of the attention layers (a pytree: passes through jit and loops)."""

    k: jax.Array  # (L, B, S, K, D) compute dtype
    v: jax.Array  # (L, B, S, K, D)
    index: jax.Array  # () int32: the next slot to write
    start: jax.Array  # (B,) int32: first real (non-padding) slot of each row


def init_cache(config: ModelConfig, batch: int, slots: int, start: jax.Array | None = None) -> KVCache:
    """An empty cache of `slots` positions for `batch` rows (start defaults to 0)."""
    shape = (config.num_layers, batch, slots, config.num_kv_heads, config.head_dim)
    dtype = jnp.dtype(config.dtype)
    if start is None:
        start = jnp.zeros((batch,), jnp.int32)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32), start)


def cache_positions(cache: KVCache, length: int) -> jax.Array:
    """(B, T) positions of `length` new tokens written from slot cache.index (padding -> 0)."""
    slots = cache.index + jnp.arange(length, dtype=jnp.int32)  # (T,)
    return jnp.maximum(slots[None, :] - cache.start[:, None], 0)


def cache_mask(cache: KVCache, length: int) -> jax.Array:
    """(B, T, S) bool: new token t (in slot index + t) may attend to slot s.

    Causal (s <= own slot) and not padding (s >= start). A padding query has no key it
    may see; it softmaxes to uniform over masked scores (finite, never NaN) and its
    output is never used.
    """
    slots = cache.k.shape[2]
    query_slot = cache.index + jnp.arange(length, dtype=jnp.int32)  # (T,)
    key_slot = jnp.arange(slots, dtype=jnp.int32)  # (S,)
    causal = key_slot[None, :] <= query_slot[:, None]  # (T, S)
    real = key_slot[None, :] >= cache.start[:, None]  # (B, S)
    return causal[None] & real[:, None, :]
