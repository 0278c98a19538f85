"""The position-wise feed-forward network: GELU (GPT-2), ReLU (original), SwiGLU (Llama),
GeGLU (Gemma)."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxllm.config import ModelConfig
from jaxllm.model.layers import constrain, dense
from jaxllm.model.primitives import gelu_tanh


class MLP(nn.Module):
    """up_proj -> activation -> down_proj; SwiGLU gates up_proj with silu(gate_proj), GeGLU
    with gelu(gate_proj) (tanh approximation, as Gemma's gelu_pytorch_tanh)."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        h = dense(cfg, cfg.d_ff, ("embed", "mlp"), name="up_proj")(x)  # (B, T, F)
        if cfg.mlp in ("swiglu", "geglu"):
            gate = dense(cfg, cfg.d_ff, ("embed", "mlp"), name="gate_proj")(x)  # (B, T, F)
            h = (nn.silu(gate) if cfg.mlp == "swiglu" else gelu_tanh(gate)) * h
        elif cfg.mlp == "gelu":
            h = gelu_tanh(h)  # GPT-2's tanh approximation, not the erf form
        else:
            h = nn.relu(h)
        h = constrain(h, ("batch", "length", "mlp"))
        resid_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5
        return dense(cfg, cfg.d_model, ("mlp", "embed"), std=resid_std, name="down_proj")(h)
