"""Text generation.

For now: a simple sampler that recomputes the forward pass over a fixed window for
every new token (one compiled program, no KV cache). It is exact and fine for small
models and short samples such as the quickstart's; KV-cache decoding replaces it for
real models.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config, ModelConfig
from jaxllm.model.api import forward, model_config


def sample_next(logits: jax.Array, rng: jax.Array, temperature: float, top_k: int | None) -> jax.Array:
    """One token id from logits (V,): greedy at temperature 0, else softmax(logits / T) over the top k."""
    if temperature <= 0:
        return jnp.argmax(logits)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = jnp.sort(logits)[-top_k]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(rng, logits)


def sample(
    config: Config | ModelConfig,
    params,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
    stop_id: int | None = None,
    vocab_limit: int | None = None,
) -> list[int]:
    """Continue `prompt` (token ids) by up to `max_new_tokens` tokens; returns only the new ones.

    `vocab_limit`: only ids below it are sampled. A model's vocabulary is often padded
    beyond its tokenizer's (384 rows for 324 ids); the extra rows must never be emitted.
    """
    m = model_config(config)
    if not prompt:
        raise ValueError("sample needs a non-empty prompt (e.g. the BOS id or one character)")
    T = m.max_seq_len

    @jax.jit
    def next_token(params, window: jax.Array, n: jax.Array, rng: jax.Array) -> jax.Array:
        logits = forward(m, params, window)[0, n - 1]  # causal: padding after n is never seen
        if vocab_limit is not None:
            logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -jnp.inf)
        return sample_next(logits, rng, temperature, top_k)

    ids = list(prompt)
    rng = jax.random.key(seed)
    out: list[int] = []
    for i in range(max_new_tokens):
        window = ids[-T:]
        buf = np.zeros((1, T), np.int32)
        buf[0, : len(window)] = window
        token = int(next_token(params, jnp.asarray(buf), jnp.asarray(len(window)), jax.random.fold_in(rng, i)))
        if stop_id is not None and token == stop_id:
            break
        ids.append(token)
        out.append(token)
    return out
