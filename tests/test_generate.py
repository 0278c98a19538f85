"""The window-recompute sampler: greedy = argmax of the forward pass, limits respected."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxllm
from jaxllm.config import ModelConfig
from jaxllm.generate import sample, sample_next

CFG = ModelConfig(vocab_size=50, max_seq_len=8, d_model=32, num_layers=1, num_heads=2)


def test_greedy_follows_the_forward_pass_past_the_window():
    params = jaxllm.init_params(CFG, jax.random.key(0))
    prompt = [3, 7, 1]
    out = sample(CFG, params, prompt, 10, temperature=0.0)  # runs past max_seq_len=8: the window slides
    ids = list(prompt)
    forward = jax.jit(jaxllm.forward, static_argnums=0)
    for token in out:
        window = jnp.asarray([ids[-CFG.max_seq_len :]])
        assert token == int(jnp.argmax(forward(CFG, params, window)[0, -1]))
        ids.append(token)


def test_vocab_limit_top_k_and_seed():
    params = jaxllm.init_params(CFG, jax.random.key(1))
    out = sample(CFG, params, [1], 40, temperature=5.0, top_k=None, vocab_limit=10, seed=3)
    assert max(out) < 10
    assert out == sample(CFG, params, [1], 40, temperature=5.0, top_k=None, vocab_limit=10, seed=3)
    logits = jnp.asarray(np.random.default_rng(0).normal(size=50), jnp.float32)
    top3 = set(np.argsort(np.asarray(logits))[-3:].tolist())
    draws = {int(sample_next(logits, jax.random.key(i), 1.0, 3)) for i in range(200)}
    assert draws <= top3 and len(draws) == 3
