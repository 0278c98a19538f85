"""The key/value cache for autoregressive decoding, in the scanned layout.

One fixed-size buffer per tensor, with the layer axis first like the parameters:
k, v: (layers, batch, slots, kv_heads, head_dim). A fixed size keeps every decode step
the same compiled program; the price is attending over all slots (masked) each step.

Prompts of different lengths are left-padded to a common length, so every row writes
slot `index` at the same step. Row b's real tokens start at slot `start[b]`: its token
in slot s sits at position s - start[b] (RoPE and learned positions both use that), and
it may attend to slots start[b] .. its own slot. Padding slots are never attended to.

Sliding windows (Mistral): when every layer sees only its last W keys, the cache keeps
only W slots, used as a ring: absolute slot a lives at a % W. A step attends to the ring
(the W slots before it) and to its own new keys, then writes the newest W of those into
the ring. Memory and per-step work then stop growing with the generated length. Models
that mix windowed and global layers (Gemma) keep every slot: the layers share one stacked
cache, and the global ones need it all; their windowed layers mask by distance instead.
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
    index: jax.Array  # () int32: the next (absolute) slot to write
    start: jax.Array  # (B,) int32: first real (non-padding) slot of each row


def ring_window(config: ModelConfig) -> int:
    """W when every layer has a sliding window of W keys (the cache is then a ring of W
    slots), else 0 (the cache holds every slot)."""
    return config.sliding_window if config.sliding_window and config.sliding_window_pattern == 1 else 0


def init_cache(config: ModelConfig, batch: int, slots: int, start: jax.Array | None = None) -> KVCache:
    """An empty cache for `slots` positions for `batch` rows (start defaults to 0); a ring of
    min(slots, W) when every layer has a window of W keys."""
    window = ring_window(config)
    kept = min(slots, window) if window else slots
    shape = (config.num_layers, batch, kept, config.num_kv_heads, config.head_dim)
    dtype = jnp.dtype(config.dtype)
    if start is None:
        start = jnp.zeros((batch,), jnp.int32)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32), start)


def cache_positions(cache: KVCache, length: int) -> jax.Array:
    """(B, T) positions of `length` new tokens written from slot cache.index (padding -> 0)."""
    slots = cache.index + jnp.arange(length, dtype=jnp.int32)  # (T,)
    return jnp.maximum(slots[None, :] - cache.start[:, None], 0)


def key_slots(cache: KVCache, length: int, ring: bool) -> jax.Array:
    """Absolute slot of every key a step of `length` new tokens attends to: the cache's
    slots 0..S-1, or with a ring the slot each ring entry holds (-1: never written) followed
    by the new tokens' own slots, (S + T,)."""
    S = cache.k.shape[2]
    held = jnp.arange(S, dtype=jnp.int32)
    if not ring:
        return held
    last = cache.index - 1  # the newest slot already written
    held = last - jnp.mod(last - held, S)  # the largest a <= last with a % S == j
    return jnp.concatenate([held, cache.index + jnp.arange(length, dtype=jnp.int32)])


def cache_mask(cache: KVCache, length: int, window: int = 0) -> jax.Array:
    """(B, T, S) bool, or (B, T, S + T) for a ring of `window` slots: new token t (in slot
    index + t) may attend to key s.

    Causal (key slot <= own slot), not padding (>= start), and within the window when there
    is one. A padding query has no key it may see; it softmaxes to uniform over masked scores
    (finite, never NaN) and its output is never used.
    """
    query_slot = cache.index + jnp.arange(length, dtype=jnp.int32)  # (T,)
    key_slot = key_slots(cache, length, bool(window))  # (S,) or (S + T,)
    allowed = key_slot[None, :] <= query_slot[:, None]  # (T, S)
    if window:
        allowed &= query_slot[:, None] - key_slot[None, :] < window
    real = key_slot[None, :] >= cache.start[:, None]  # (B, S); also excludes never-written ring slots
    return allowed[None] & real[:, None, :]


def write_ring(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """This layer's ring (B, S, K, D) with the newest min(T, S) of new (B, T, K, D) written at
    their slots (absolute slot a at a % S)."""
    S, T = cache.shape[1], new.shape[1]
    kept = min(T, S)
    slots = jnp.mod(index + (T - kept) + jnp.arange(kept, dtype=jnp.int32), S)  # distinct
    return cache.at[:, slots].set(new[:, T - kept :].astype(cache.dtype))
