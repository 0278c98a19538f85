"""The parity checks have teeth: deliberately broken mappings or layers must fail them.

Each test runs the real comparison twice: intact (must pass) and broken (must raise),
so a pass elsewhere in tests/parity means the layouts and layers really agree.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxllm
from jaxllm.convert import to_torch
from tests.parity.common import (
    GPT2,
    LLAMA,
    LLAMA3_SCALING,
    assert_close,
    load_into,
    random_params,
    t,
    tokens,
    torch_model,
)


def logits_match(cfg, family, params, state, **torch_overrides) -> None:
    """Raise AssertionError unless the torch model holding `state` gives jaxllm's logits."""
    model = load_into(torch_model(cfg, family, **torch_overrides), state)
    x = tokens(2, 9, cfg.vocab_size, seed=7)
    with torch.no_grad():
        ref_logits, _ = model(t(x).long())
    assert_close(jaxllm.forward(cfg, params, jnp.asarray(x)), ref_logits, 1e-5, "logits")


def intact_then_broken(cfg, family, breaker, **torch_overrides) -> None:
    params = random_params(cfg)
    state = to_torch(cfg, params, family)
    logits_match(cfg, family, params, state, **torch_overrides)  # the intact mapping passes
    broken = breaker({k: v.copy() for k, v in state.items()})
    with pytest.raises(AssertionError, match="relative error"):
        logits_match(cfg, family, params, broken, **torch_overrides)


def test_transposed_weight_is_caught():
    def transpose_c_proj(state):  # a square (E, E) weight: loads fine, computes wrong
        state["h.1.attn.c_proj.weight"] = state["h.1.attn.c_proj.weight"].T.copy()
        return state

    intact_then_broken(GPT2, "gpt2", transpose_c_proj)


def test_transposed_llama_projection_is_caught():
    def transpose_o_proj(state):  # H * D = E here, so o_proj is square
        key = "model.layers.0.self_attn.o_proj.weight"
        state[key] = state[key].T.copy()
        return state

    intact_then_broken(LLAMA, "llama", transpose_o_proj)


def test_swapped_query_and_key_is_caught():
    def swap_q_k(state):
        q, k, v = np.split(state["h.0.attn.c_attn.weight"], 3)
        state["h.0.attn.c_attn.weight"] = np.concatenate([k, q, v])
        return state

    intact_then_broken(GPT2, "gpt2", swap_q_k)


def test_wrong_gqa_grouping_is_caught():
    """Query head h must read KV head h // G; reordering the KV heads breaks that."""

    def swap_kv_heads(state):
        for name in ("k_proj", "v_proj"):
            key = f"model.layers.1.self_attn.{name}.weight"
            w = state[key].reshape(LLAMA.num_kv_heads, LLAMA.head_dim, -1)
            state[key] = w[::-1].reshape(-1, w.shape[-1]).copy()
        return state

    intact_then_broken(LLAMA, "llama", swap_kv_heads)


def test_wrong_rope_pairing_is_caught():
    """Same weights, reference rotating interleaved pairs (2i, 2i+1) instead of (i, i + D/2)."""
    params = random_params(LLAMA)
    state = to_torch(LLAMA, params, "llama")
    logits_match(LLAMA, "llama", params, state, rope_pairing="half")
    with pytest.raises(AssertionError, match="relative error"):
        logits_match(LLAMA, "llama", params, state, rope_pairing="interleaved")


def test_wrong_rope_scaling_is_caught():
    cfg = dataclasses.replace(LLAMA, rope_scaling=LLAMA3_SCALING)
    params = random_params(cfg)
    state = to_torch(cfg, params, "llama")
    logits_match(cfg, "llama", params, state)
    wrong = dict(factor=4.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64)
    with pytest.raises(AssertionError, match="relative error"):
        logits_match(cfg, "llama", params, state, rope_scaling=wrong)


def test_exact_gelu_instead_of_tanh_is_caught():
    """GPT-2 uses the tanh approximation; the erf GELU differs by ~1e-3 and must be seen."""
    params = random_params(GPT2)
    state = to_torch(GPT2, params, "gpt2")
    model = load_into(torch_model(GPT2, "gpt2"), state)
    x = tokens(2, 9, GPT2.vocab_size, seed=7)
    for block in model.h:
        block.mlp.gelu = torch.nn.GELU(approximate="none")
    with torch.no_grad():
        ref_logits, _ = model(t(x).long())
    with pytest.raises(AssertionError, match="relative error"):
        assert_close(jaxllm.forward(GPT2, params, jnp.asarray(x)), ref_logits, 1e-5, "logits")


def test_untied_head_loaded_as_tied_is_caught():
    cfg = dataclasses.replace(GPT2, tie_embeddings=False)
    params = random_params(cfg)
    state = to_torch(cfg, params, "gpt2")
    logits_match(cfg, "gpt2", params, state)

    def tie(state):
        state["lm_head.weight"] = state["wte.weight"].copy()
        return state

    intact_then_broken(cfg, "gpt2", tie)
