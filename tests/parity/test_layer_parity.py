"""Layer by layer: each Flax layer on its own matches its PyTorch counterpart."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jaxllm.model.attention import Attention
from jaxllm.model.block import Block
from jaxllm.model.layers import norm
from jaxllm.model.mlp import MLP
from jaxllm.model.rope import apply_rope, rope_inv_freq
from tests.parity import reference as ref
from tests.parity.common import GPT2, LLAMA, LLAMA3_SCALING, POSTLN, assert_close, build_pair, t, tokens

B, T = 2, 9
FAMILIES = {"gpt2": GPT2, "postln": POSTLN, "llama": LLAMA}


def hidden(cfg, seed=0):
    return np.random.default_rng(seed).normal(size=(B, T, cfg.d_model)).astype(np.float32)


def layer(params, i):
    """Block i's parameters, sliced out of the scanned [L, ...] stack."""
    return jax.tree.map(lambda p: p[i], params["blocks"])


def torch_layers(model, family, i):
    """(norm_1, attention fn, mlp, block fn) of torch block i, all taking x (B, T, E)."""
    if family == "llama":
        blk = model.model.layers[i]
        inv_freq = model.model.inv_freq
        pos = torch.arange(T)
        return (
            blk.input_layernorm,
            lambda x: blk.self_attn(x, pos, inv_freq),
            blk.mlp,
            lambda x: blk(x, pos, inv_freq),
        )
    blk = model.h[i]
    if family == "gpt2":
        return blk.ln_1, blk.attn, blk.mlp, blk
    causal = ~ref.causal_allow_mask(T)  # nn.MultiheadAttention: True = may NOT attend

    return blk.ln1, lambda x: blk.attn(x, x, x, attn_mask=causal, need_weights=False)[0], blk.ff, blk


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("i", [0, 1])
def test_each_layer(family, i):
    cfg = FAMILIES[family]
    params, model = build_pair(cfg, family)
    p = layer(params, i)
    x = hidden(cfg, seed=i)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    ref_norm, ref_attn, ref_mlp, ref_block = torch_layers(model, family, i)
    with torch.no_grad():
        tx = t(x)
        assert_close(norm(cfg, "ln_1").apply({"params": p["ln_1"]}, x), ref_norm(tx), 1e-5, "norm")
        assert_close(Attention(cfg).apply({"params": p["attn"]}, x, positions, None), ref_attn(tx), 1e-5, "attention")
        assert_close(MLP(cfg).apply({"params": p["mlp"]}, x), ref_mlp(tx), 1e-5, "mlp")
        out, _ = Block(cfg).apply({"params": p}, x, positions, None)
        assert_close(out, ref_block(tx), 1e-5, "block")


@pytest.mark.parametrize("family", FAMILIES)
def test_embedding_and_final_norm(family):
    cfg = FAMILIES[family]
    params, model = build_pair(cfg, family)
    idx = tokens(B, T, cfg.vocab_size)
    x = hidden(cfg)
    with torch.no_grad():
        if family == "llama":
            ref_emb, ref_ln_f = model.model.embed_tokens(t(idx).long()), model.model.norm(t(x))
            emb = params["wte"]["embedding"][idx]
        else:
            ref_emb = model.wte(t(idx).long()) + model.wpe(torch.arange(T))
            ref_ln_f = model.ln_f(t(x))
            emb = params["wte"]["embedding"][idx] + params["wpe"]["embedding"][jnp.arange(T)]
    assert_close(emb, ref_emb, 1e-6, "embedding")
    assert_close(norm(cfg, "ln_f").apply({"params": params["ln_f"]}, x), ref_ln_f, 1e-5, "ln_f")


@pytest.mark.parametrize("scaling", [None, LLAMA3_SCALING], ids=["plain", "llama3"])
@pytest.mark.parametrize("head_dim", [6, 64])
def test_rope_frequencies_and_rotation(scaling, head_dim):
    theta = 500000.0
    ref_scaling = None
    if scaling is not None:
        ref_scaling = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64)
    inv = rope_inv_freq(head_dim, theta, scaling)
    ref_inv = ref.rope_inv_freq(head_dim, theta, ref_scaling)
    assert_close(inv, ref_inv, 1e-6, "inv_freq")
    q = np.random.default_rng(0).normal(size=(B, T, 3, head_dim)).astype(np.float32)  # (B, T, N, D)
    pos = np.array([list(range(T)), list(range(100, 100 + T))], np.int32)  # large offsets too
    out = apply_rope(jnp.asarray(q), jnp.asarray(pos), inv)
    ref_out = ref.apply_rope(t(q).transpose(1, 2), t(pos).long(), ref_inv, "half").transpose(1, 2)
    assert_close(out, ref_out, 1e-5, "rope")
