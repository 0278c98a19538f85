"""Rotary position embeddings (RoPE), with Llama-3.1 and linear frequency scaling.

Pairing convention: "rotate half". Dimension i of a head is rotated together with
dimension i + head_dim/2 (the GPT-NeoX / Hugging Face Llama layout), not with i+1
(the original interleaved complex-number layout). The two conventions give different
models for the same weights; tests/parity checks that the wrong one is caught.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxllm.config import RopeScalingConfig


def rope_inv_freq(head_dim: int, theta: float, scaling: RopeScalingConfig | None = None) -> jax.Array:
    """Per-pair rotation frequencies theta^(-2i/d), i < d/2, optionally Llama-3 scaled."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))  # (D/2,)
    if scaling is None or scaling.kind == "none":
        return inv_freq
    if scaling.kind == "linear":  # position interpolation: every position divided by `factor`
        return inv_freq / scaling.factor
    # Llama-3.1: long wavelengths (low frequencies) are stretched by `factor` so the model
    # sees positions past its original context as it saw positions inside it; short
    # wavelengths (local order) are kept; the band between is linearly blended.
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = scaling.original_max_seq_len / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_seq_len / scaling.high_freq_factor
    smooth = (scaling.original_max_seq_len / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    blended = (1 - smooth) * inv_freq / scaling.factor + smooth * inv_freq
    return jnp.where(
        wavelen < high_freq_wavelen,
        inv_freq,
        jnp.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, blended),
    )


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate x (B, T, N, D) by angle position * freq, pairing dim i with i + D/2."""
    angles = positions[..., None].astype(jnp.float32) * inv_freq  # (B, T, D/2)
    cos = jnp.cos(angles)[:, :, None, :]  # (B, T, 1, D/2): same rotation for every head
    sin = jnp.sin(angles)[:, :, None, :]
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)  # (B, T, N, D/2) each
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
