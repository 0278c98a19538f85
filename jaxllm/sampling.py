"""Choosing the next token from logits: greedy, temperature, top-k, top-p, min-p.

Order (the conventional one): repetition penalty on the raw logits -> temperature ->
top-k -> top-p (nucleus, on the top-k survivors) -> min-p -> sample. Every parameter
is an array with one value per row, passed to the compiled program as data, so a new
temperature or top-p does not recompile and rows of one batch may differ.

Conventions, where implementations differ:
- temperature 0 means greedy (argmax after the repetition penalty); any temperature
  > 0 samples from softmax(logits / temperature).
- top_k <= 0 or >= vocabulary disables top-k; top_p >= 1 disables top-p; min_p 0
  disables min-p; repetition_penalty 1 disables it.
- top-p keeps the smallest set of most likely tokens whose probability reaches p (the
  token that crosses p is kept; the most likely token always is). Tokens tied with the
  last kept logit are kept too.
- repetition penalty (the CTRL rule): a logit of a token already in the prompt or the
  output is divided by the penalty when positive and multiplied by it when negative.
- row b draws from its own key, fold_in(key, b): its sample depends on the seed and its
  index, not on the other rows of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.errors import JaxllmError


class GenerationError(JaxllmError, ValueError):
    """Bad input to generation (prompt, lengths, sampling settings); says what to change."""


class SamplingParams(NamedTuple):
    """Per-row sampling settings, each shape (B,)."""

    temperature: jax.Array  # float32
    top_k: jax.Array  # int32
    top_p: jax.Array  # float32
    min_p: jax.Array  # float32
    repetition_penalty: jax.Array  # float32


def _per_row(name: str, value: float | Sequence[float], batch: int, dtype) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        return np.full((batch,), arr, dtype)
    if arr.shape != (batch,):
        raise GenerationError(f"{name} has {arr.size} values for {batch} prompts; give one value or one per prompt")
    return arr


def sampling_params(
    batch: int,
    *,
    temperature: float | Sequence[float] = 1.0,
    top_k: int | Sequence[int] = 0,
    top_p: float | Sequence[float] = 1.0,
    min_p: float | Sequence[float] = 0.0,
    repetition_penalty: float | Sequence[float] = 1.0,
) -> SamplingParams:
    """Validated per-row arrays; a scalar applies to every row. Bad values name the fix."""
    t = _per_row("temperature", temperature, batch, np.float32)
    k = _per_row("top_k", top_k, batch, np.int32)
    p = _per_row("top_p", top_p, batch, np.float32)
    m = _per_row("min_p", min_p, batch, np.float32)
    r = _per_row("repetition_penalty", repetition_penalty, batch, np.float32)
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise GenerationError(f"temperature must be >= 0 (0 = greedy), got {t.tolist()}")
    if not np.all((p > 0) & (p <= 1)):
        raise GenerationError(f"top_p must be in (0, 1] (1 disables it), got {p.tolist()}")
    if not np.all((m >= 0) & (m <= 1)):
        raise GenerationError(f"min_p must be in [0, 1] (0 disables it), got {m.tolist()}")
    if not np.all(r > 0):
        raise GenerationError(f"repetition_penalty must be > 0 (1 disables it), got {r.tolist()}")
    return SamplingParams(*(jnp.asarray(a) for a in (t, k, p, m, r)))


def penalize(logits: jax.Array, seen: jax.Array, penalty: jax.Array) -> jax.Array:
    """Repetition penalty on logits (B, V) for tokens marked in seen (B, V) bool."""
    pen = penalty[:, None]
    return jnp.where(seen, jnp.where(logits > 0, logits / pen, logits * pen), logits)


def filter_logits(logits: jax.Array, params: SamplingParams) -> jax.Array:
    """Temperature-scaled logits (B, V) with every token outside top-k / top-p / min-p at -inf."""
    B, V = logits.shape
    temperature = jnp.where(params.temperature > 0, params.temperature, 1.0)
    scaled = logits.astype(jnp.float32) / temperature[:, None]
    sorted_desc = -jnp.sort(-scaled, axis=-1)  # (B, V), most likely first
    rank = jnp.arange(V)

    k = jnp.where((params.top_k <= 0) | (params.top_k > V), V, params.top_k)  # (B,)
    kth = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)  # (B, 1)
    keep = scaled >= kth

    # Nucleus over the top-k survivors: keep rank r while the mass before it is < p.
    top = jnp.where(rank[None] < k[:, None], sorted_desc, -jnp.inf)
    probs = jax.nn.softmax(top, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    n_keep = jnp.sum(mass_before < params.top_p[:, None], axis=-1)
    n_keep = jnp.where(params.top_p >= 1.0, V, jnp.maximum(n_keep, 1))
    pth = jnp.take_along_axis(sorted_desc, (n_keep - 1)[:, None], axis=-1)
    keep &= scaled >= pth

    # min-p: drop tokens less likely than min_p times the most likely one.
    kept = jnp.where(keep, scaled, -jnp.inf)
    log_probs = jax.nn.log_softmax(kept, axis=-1)
    threshold = jnp.max(log_probs, axis=-1, keepdims=True) + jnp.log(params.min_p)[:, None]  # log(0) = -inf
    keep &= log_probs >= threshold
    return jnp.where(keep, scaled, -jnp.inf)


def sample_tokens(
    logits: jax.Array,
    rng: jax.Array,
    params: SamplingParams,
    seen: jax.Array | None = None,
    vocab_limit: int | None = None,
) -> jax.Array:
    """(B,) int32 next tokens from logits (B, V).

    vocab_limit: only ids below it can be chosen (a model's vocabulary is often padded
    past its tokenizer's; those rows must never be emitted).
    """
    B, V = logits.shape
    logits = logits.astype(jnp.float32)
    if vocab_limit is not None and vocab_limit < V:
        logits = jnp.where(jnp.arange(V) < vocab_limit, logits, -jnp.inf)
    if seen is not None:
        logits = penalize(logits, seen, params.repetition_penalty)
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw() -> jax.Array:
        # The sort behind top-k/top-p/min-p costs O(V log V) per row and step: skip it
        # when no row uses a filter (plain temperature sampling needs only the scaling).
        filtering = jnp.any((params.top_k > 0) | (params.top_p < 1.0) | (params.min_p > 0.0))
        scale = jnp.where(params.temperature > 0, params.temperature, 1.0)[:, None]
        filtered = jax.lax.cond(filtering, filter_logits, lambda lg, _: lg / scale, logits, params)
        keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(B))
        drawn = jax.vmap(jax.random.categorical)(keys, filtered).astype(jnp.int32)
        return jnp.where(params.temperature > 0, drawn, greedy)

    # All-greedy batches (temperature 0 everywhere) skip sampling altogether.
    return jax.lax.cond(jnp.any(params.temperature > 0), draw, lambda: greedy)
