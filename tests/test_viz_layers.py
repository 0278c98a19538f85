"""`jaxllm viz layers`: each layer's mask and the stack's reach, checked against the model."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

import jaxllm
from jaxllm.cli import main
from jaxllm.config import ModelConfig
from jaxllm.viz.layers import receptive_fields

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
