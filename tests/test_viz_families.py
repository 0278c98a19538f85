"""The family pictures, checked against the model: `jaxllm viz layers` (each layer's mask and
the stack's reach), `jaxllm viz routing` (the experts' choices) and attention maps of
windowed, soft-capped layers."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import jaxllm
from jaxllm.cli import main
from jaxllm.config import Config, ModelConfig
from jaxllm.model.decoder import Decoder
from jaxllm.model.layers import Dense
from jaxllm.model.moe import route
from jaxllm.viz.attention import attention_maps
from jaxllm.viz.layers import layer_mask, receptive_fields
from jaxllm.viz.routing import expert_load, routing

CFG = ModelConfig(
    vocab_size=37, max_seq_len=32, d_model=16, num_layers=3, num_heads=2, norm="rmsnorm", position="rope",
    mlp="swiglu", use_bias=False, sliding_window=4, sliding_window_pattern=3,
)  # fmt: skip


def test_the_drawn_reach_is_what_the_model_depends_on():
    """Changing the token at position t moves the last position's logits exactly where the
    picture says the last position reads, after 1, 2 and 3 layers (local, local, global)."""
    T = 24
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 37, (T, T)), jnp.int32)
    moved = tokens.at[jnp.arange(T), jnp.arange(T)].set((jnp.diag(tokens) + 1) % 37)  # row t: token t changed
    for layers in (1, 2, 3):
        cfg = dataclasses.replace(CFG, num_layers=layers)
        params = jaxllm.init_params(cfg, jax.random.key(layers))
        base, changed = (jaxllm.forward(cfg, params, x)[:, -1] for x in (tokens, moved))
        depends = np.asarray(jnp.max(jnp.abs(changed - base), axis=-1) > 0)
        np.testing.assert_array_equal(depends, receptive_fields(cfg, T)[-1])


def test_viz_layers_writes_a_picture(tmp_path, capsys):
    out = tmp_path / "layers.png"
    main(["viz", "layers", "llama-125m", "model.sliding_window=6", "model.sliding_window_pattern=3",
          "model.num_layers=6", "--out", str(out)])  # fmt: skip
    assert out.stat().st_size > 10_000
    assert "[6, 11, 48, 48, 48, 48]" in capsys.readouterr().out


def test_attention_maps_follow_windows_and_soft_caps():
    """Rows sum to 1, local layers put nothing outside the window (the global one does), and
    the soft-cap changes the maps."""
    cfg = dataclasses.replace(CFG, attn_logit_softcap=2.0, num_layers=3)
    params = jaxllm.init_params(cfg, jax.random.key(0))
    attn = params["blocks"]["attn"]
    for name in ("q_proj", "k_proj"):  # scores of a few units, where the cap bites
        attn[name]["kernel"] = attn[name]["kernel"] * 40
    tokens = [int(t) for t in np.random.default_rng(1).integers(1, 37, 12)]
    maps = attention_maps(Config(model=cfg), params, tokens)  # (L, H, T, T)
    np.testing.assert_allclose(maps.sum(-1), 1.0, rtol=1e-5)
    outside = ~layer_mask(12, cfg.sliding_window)
    assert np.all(maps[0][:, outside] == 0) and np.all(maps[1][:, outside] == 0)
    assert np.any(maps[2][:, outside] > 0)  # layer 2 is global
    capped = attention_maps(Config(model=dataclasses.replace(cfg, attn_logit_softcap=0.0)), params, tokens)
    assert np.max(np.abs(capped - maps)) > 1e-4


def test_routing_reads_the_routers_own_choices():
    cfg = dataclasses.replace(CFG, num_experts=4, experts_per_token=2, expert_d_ff=8, num_layers=2)
    params = jaxllm.init_params(cfg, jax.random.key(3))
    tokens = [int(t) for t in np.random.default_rng(2).integers(1, 37, 10)]
    experts, weights = routing(Config(model=cfg), params, tokens)
    _, state = Decoder(cfg).apply(
        {"params": params}, jnp.asarray([tokens]), mutable=["intermediates"],
        capture_intermediates=lambda mdl, _: isinstance(mdl, Dense) and mdl.name == "router",
    )  # fmt: skip
    logits = state["intermediates"]["blocks"]["mlp"]["router"]["__call__"][0][:, 0]  # (L, T, X)
    w, e, _ = route(logits, 2, "softmax", True)
    np.testing.assert_array_equal(experts, np.asarray(e))
    np.testing.assert_allclose(weights, np.asarray(w), rtol=1e-6)
    np.testing.assert_allclose(expert_load(experts, 4).sum(-1), 1.0)
