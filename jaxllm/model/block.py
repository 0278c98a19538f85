"""One transformer block: pre-LN (GPT-2, Llama), post-LN (the original Transformer) or
sandwich (Gemma 2 and 3: a norm before each branch and one on its output)."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxllm.config import ModelConfig
from jaxllm.model.attention import Attention
from jaxllm.model.layers import BATCH_LENGTH_EMBED, RESIDUAL, constrain, norm
from jaxllm.model.mlp import MLP
from jaxllm.model.moe import MoE

# What the backward pass may keep from the forward pass of each block; the rest is
# recomputed. "full" keeps only the block inputs (most memory saved, ~1/3 more compute).
# "minimal" keeps the outputs of the matmuls with weights (no batch dimension in the
# dot_general), so the backward recomputes only attention, norms and activations: what
# large runs use when memory allows. "offload" keeps the same in host memory (the copies
# overlap compute on TPU/GPU; saved activations no longer count against HBM).
REMAT_POLICIES = {
    "full": None,
    "minimal": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload": jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
    "save_dots": jax.checkpoint_policies.dots_saveable,
    "save_dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Block(nn.Module):
    """attention + MLP, each a residual branch with dropout.

    pre_ln:   x = x + drop(attn(ln_1(x)));  x = x + drop(mlp(ln_2(x)))
    post_ln:  x = ln_1(x + drop(attn(x)));  x = ln_2(x + drop(mlp(x)))
    sandwich: x = x + drop(ln_1_post(attn(ln_1(x))));  x = x + drop(ln_2_post(mlp(ln_2(x))))

    Returns (x, None) so it can be the body of `nn.scan` (carry, per-layer output);
    when decoding, (x, this layer's updated (k, v) cache), which the scan stacks.
    """

    config: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array | None,
        local: jax.Array | None = None,
        kv: tuple[jax.Array, jax.Array] | None = None,
        decode: tuple[jax.Array, jax.Array] | None = None,
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
        """`local`: this layer's sliding-window flag, () bool (a scanned input; see Attention)."""
        cfg = self.config
        drop = nn.Dropout(cfg.dropout, deterministic=self.deterministic)
        attn = Attention(cfg, self.deterministic, name="attn")
        mlp = MoE(cfg, name="mlp") if cfg.num_experts else MLP(cfg, name="mlp")
        ln_1, ln_2 = norm(cfg, "ln_1"), norm(cfg, "ln_2")
        new_kv = None

        def attend(h: jax.Array) -> jax.Array:
            nonlocal new_kv
            if kv is None:
                return attn(h, positions, segment_ids, local=local)
            out, new_kv = attn(h, positions, segment_ids, kv, decode, local)
            return out

        if cfg.block == "pre_ln":
            x = x + drop(attend(ln_1(x)))
            x = x + drop(mlp(ln_2(x)))
        elif cfg.block == "sandwich":
            x = x + drop(norm(cfg, "ln_1_post")(attend(ln_1(x))))
            x = x + drop(norm(cfg, "ln_2_post")(mlp(ln_2(x))))
        else:
            x = ln_1(x + drop(attend(x)))
            x = ln_2(x + drop(mlp(x)))
        return constrain(x, BATCH_LENGTH_EMBED if kv is not None else RESIDUAL), new_kv  # decoding: T is 1
