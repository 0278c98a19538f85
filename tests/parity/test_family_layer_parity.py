"""Layer by layer for the families: each Flax part on its own matches its PyTorch reference
(norms with and without Gemma's 1 + w, QK-norm, attention with its biases, window, score
scale and soft-cap on local and global layers, SwiGLU/GeGLU, the routed MLP, the pre-norm
and sandwich blocks, the final norm)."""

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
from jaxllm.model.moe import MoE
from tests.parity.common import assert_close, t
from tests.parity.families import CASES, build_family_pair, hidden, layer_is_local

B, T = 2, 9
# Layer 0 of every case; and the global layer after local ones where a pattern mixes them.
LAYERS = [(case, 0) for case in CASES] + [("gemma2", 1), ("gemma3", 2)]


def jax_parts(cfg, p, x, positions, local) -> dict[str, jax.Array]:
    """Every part of one block applied on its own to x (B, T, E): one compiled program."""
    mlp = MoE(cfg) if cfg.num_experts else MLP(cfg)
    out = {
        "ln_1": norm(cfg, "ln_1").apply({"params": p["ln_1"]}, x),
        "ln_2": norm(cfg, "ln_2").apply({"params": p["ln_2"]}, x),
        "attention": Attention(cfg).apply({"params": p["attn"]}, x, positions, None, local=local),
        "mlp": mlp.apply({"params": p["mlp"]}, x),
        "block": Block(cfg).apply({"params": p}, x, positions, None, local)[0],
    }
    if cfg.block == "sandwich":
        out["ln_1_post"] = norm(cfg, "ln_1_post").apply({"params": p["ln_1_post"]}, x)
        out["ln_2_post"] = norm(cfg, "ln_2_post").apply({"params": p["ln_2_post"]}, x)
    if cfg.qk_norm:  # over head_dim, on x viewed as (B, T, heads, head_dim)
        heads = x[..., : cfg.d_model // cfg.head_dim * cfg.head_dim].reshape(B, T, -1, cfg.head_dim)
        out["q_norm"] = norm(cfg, "q_norm", "head_dim").apply({"params": p["attn"]["q_norm"]}, heads)
        out["k_norm"] = norm(cfg, "k_norm", "head_dim").apply({"params": p["attn"]["k_norm"]}, heads)
    return out


def torch_parts(cfg, model, i: int, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same parts of the reference's layer i (its window and RoPE as the layer has them)."""
    blk = model.model.layers[i]
    inv_freq, window = model.model.layer_setup(i)
    pos = torch.arange(T)
    sandwich = cfg.block == "sandwich"
    out = {
        "ln_1": blk.input_layernorm(x),
        "ln_2": (blk.pre_feedforward_layernorm if sandwich else blk.post_attention_layernorm)(x),
        "attention": blk.self_attn(x, pos, inv_freq, window),
        "mlp": blk.feed_forward(x),
        "block": blk(x, pos, inv_freq, window),
    }
    if sandwich:
        out["ln_1_post"] = blk.post_attention_layernorm(x)
        out["ln_2_post"] = blk.post_feedforward_layernorm(x)
    if cfg.qk_norm:
        heads = x[..., : cfg.d_model // cfg.head_dim * cfg.head_dim].reshape(B, T, -1, cfg.head_dim)
        out["q_norm"], out["k_norm"] = blk.self_attn.q_norm(heads), blk.self_attn.k_norm(heads)
    return out


@pytest.mark.parametrize(("case", "i"), LAYERS)
def test_each_part_of_a_layer(case, i):
    cfg, _, params, model = build_family_pair(case)
    p = jax.tree.map(lambda a: a[i], params["blocks"])  # layer i of the scanned stack
    x = hidden(cfg, B, T, seed=i)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    local = jnp.asarray(layer_is_local(cfg, i)) if cfg.sliding_window else None
    ours = jax.jit(lambda p, x, positions, local: jax_parts(cfg, p, x, positions, local))(p, x, positions, local)
    with torch.no_grad():
        ref = torch_parts(cfg, model, i, t(x))
        ours["ln_f"], ref["ln_f"] = norm(cfg, "ln_f").apply({"params": params["ln_f"]}, x), model.model.norm(t(x))
    assert set(ours) == set(ref)
    for part, expected in ref.items():
        assert_close(ours[part], expected, 1e-5, f"{case} layer {i} {part}")


def test_routed_mlp_picks_the_top_k_and_weights_them():
    """The reference router by hand on one token: softmax, top-2, renormalised, the weighted sum."""
    cfg, _, _, model = build_family_pair("mixtral")
    moe = model.model.layers[0].block_sparse_moe
    x = t(hidden(cfg, 1, 1, seed=3))  # (1, 1, E)
    with torch.no_grad():
        probs = torch.softmax(moe.gate(x[0, 0]), dim=-1)  # (X,)
        top = np.argsort(-probs.numpy())[:2]
        w = probs[top] / probs[top].sum()
        expected = w[0] * moe.experts[int(top[0])](x[0, 0]) + w[1] * moe.experts[int(top[1])](x[0, 0])
        assert_close(moe(x)[0, 0], expected, 1e-6, "routed MLP")
