"""End to end: logits, loss and every gradient match the PyTorch reference models."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxllm
from jaxllm.convert import from_torch, to_torch
from tests.parity.common import GPT2, LLAMA, LLAMA3_SCALING, POSTLN, assert_close, build_pair, t, tokens

CASES = {
    "gpt2": (GPT2, "gpt2"),
    "gpt2-untied-nobias": (dataclasses.replace(GPT2, tie_embeddings=False, use_bias=False), "gpt2"),
    "postln": (POSTLN, "postln"),
    "llama-gqa": (LLAMA, "llama"),
    "llama-mqa-tied": (dataclasses.replace(LLAMA, num_kv_heads=1, tie_embeddings=True), "llama"),
    "llama3-scaled-mha": (dataclasses.replace(LLAMA, num_kv_heads=4, rope_scaling=LLAMA3_SCALING), "llama"),
}


def _mean_loss(cfg, params, x, y):
    loss_sum, count = jaxllm.loss(cfg, params, x, y)
    return loss_sum / count


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("batch,length", [(1, 7), (3, 13)])
def test_logits_and_loss(case, batch, length):
    cfg, family = CASES[case]
    params, model = build_pair(cfg, family)
    x, y = tokens(batch, length, cfg.vocab_size, seed=1), tokens(batch, length, cfg.vocab_size, seed=2)
    logits = jaxllm.forward(cfg, params, jnp.asarray(x))
    with torch.no_grad():
        ref_logits, ref_loss = model(t(x).long(), t(y).long())
    assert logits.dtype == jnp.float32
    assert_close(logits, ref_logits, 1e-5, "logits")
    assert_close(_mean_loss(cfg, params, jnp.asarray(x), jnp.asarray(y)), ref_loss, 1e-5, "loss")


@pytest.mark.parametrize("case", CASES)
def test_every_gradient(case):
    cfg, family = CASES[case]
    params, model = build_pair(cfg, family)
    x, y = tokens(2, 11, cfg.vocab_size, seed=3), tokens(2, 11, cfg.vocab_size, seed=4)
    grads = jax.grad(_mean_loss, argnums=1)(cfg, params, jnp.asarray(x), jnp.asarray(y))
    model.zero_grad()
    _, ref_loss = model(t(x).long(), t(y).long())
    ref_loss.backward()
    mapped = to_torch(cfg, grads, family)  # the weight mapping is linear, so it maps gradients too
    named = dict(model.named_parameters(remove_duplicate=False))
    assert set(mapped) == set(named), "every torch parameter has exactly one jaxllm gradient"
    for name, p in named.items():
        assert_close(mapped[name], p.grad, 1e-4, f"grad {name}")


@pytest.mark.parametrize("case", ["gpt2", "postln", "llama-gqa"])
def test_packed_documents_match_block_diagonal_mask(case):
    """Segment ids (two documents and padding in one row) equal the reference given the
    same block-diagonal mask; for RoPE, positions restart at each document."""
    cfg, family = CASES[case]
    params, model = build_pair(cfg, family)
    x = tokens(2, 9, cfg.vocab_size, seed=5)
    seg = np.array([[1, 1, 1, 1, 2, 2, 2, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1, 1]], np.int32)
    pos = np.array([[0, 1, 2, 3, 0, 1, 2, 0, 1], list(range(9))], np.int32)
    allow = seg[:, :, None] == seg[:, None, :]
    kwargs = dict(segment_ids=jnp.asarray(seg))
    ref_kwargs = dict(attn_mask=t(allow))
    if family == "llama":  # learned positions in the GPT-2 reference are always 0..T-1
        kwargs["positions"] = jnp.asarray(pos)
        ref_kwargs["positions"] = t(pos).long()
    logits = jaxllm.forward(cfg, params, jnp.asarray(x), **kwargs)
    with torch.no_grad():
        ref_logits, _ = model(t(x).long(), **ref_kwargs)
    assert_close(logits, ref_logits, 1e-5, "packed logits")


@pytest.mark.parametrize("case", CASES)
def test_mapping_round_trips(case):
    cfg, family = CASES[case]
    params, _ = build_pair(cfg, family)
    back = from_torch(cfg, to_torch(cfg, params, family), family)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_from_torch_rejects_wrong_family_and_missing_keys():
    params, model = build_pair(GPT2, "gpt2")
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="unused keys"):
        from_torch(GPT2, {**state, "h.9.extra": state["wte.weight"]}, "gpt2")
    del state["h.1.attn.c_attn.weight"]
    with pytest.raises(KeyError, match="h.1.attn.c_attn.weight"):
        from_torch(GPT2, state, "gpt2")
    with pytest.raises(ValueError, match="model.norm"):
        to_torch(GPT2, params, "llama")
