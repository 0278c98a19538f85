"""The Hugging Face decoder layouts: Llama and the families built from its names.

Why one builder for seven families: Llama, Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3,
Mixtral and Qwen3-MoE all name their tensors model.embed_tokens, model.layers.{i}.
self_attn.{q,k,v,o}_proj, model.norm and lm_head; what a family adds follows from the
model fields the family check (layout_fit.py) has already pinned down:
  qkv_bias   self_attn.{q,k,v}_proj.bias                      (Qwen2)
  qk_norm    self_attn.{q,k}_norm.weight, (head_dim,)          (Qwen3, Gemma 3)
  sandwich   input_layernorm -> ln_1, post_attention_layernorm -> ln_1_post,
             pre_feedforward_layernorm -> ln_2, post_feedforward_layernorm -> ln_2_post
             (Gemma; otherwise post_attention_layernorm is the pre-MLP norm, ln_2)
  experts    a router and per-expert MLPs, named per family (MOE_NAMES): the layout
             save_pretrained writes and the Hub holds, one tensor per expert
Only the expert names differ between families, so the table is one function with the
expert naming as its parameter.
"""

from __future__ import annotations

from collections.abc import Callable

from jaxllm.config import ModelConfig
from jaxllm.convert.layout_rules import Rule, head, heads_in, heads_out, norm, same, transposed

LAYER = "model.layers.{i}"

# family -> (the MoE block's module name, its experts' gate / up / down projection names)
MOE_NAMES: dict[str, tuple[str, tuple[str, str, str]]] = {
    "mixtral": ("block_sparse_moe", ("w1", "w3", "w2")),
    "qwen3_moe": ("mlp", ("gate_proj", "up_proj", "down_proj")),
}

# jaxllm norm -> Hugging Face norm, per block kind
_NORMS = {
    "pre_ln": (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")),
    "sandwich": (
        ("ln_1", "input_layernorm"),
        ("ln_1_post", "post_attention_layernorm"),
        ("ln_2", "pre_feedforward_layernorm"),
        ("ln_2_post", "post_feedforward_layernorm"),
    ),
}


def _attention(m: ModelConfig) -> list[Rule]:
    H, K, D = m.num_heads, m.num_kv_heads, m.head_dim
    attn = f"{LAYER}.self_attn"
    rules = [
        heads_in(("attn", "q_proj", "kernel"), f"{attn}.q_proj.weight", H, D),
        heads_in(("attn", "k_proj", "kernel"), f"{attn}.k_proj.weight", K, D),
        heads_in(("attn", "v_proj", "kernel"), f"{attn}.v_proj.weight", K, D),
        heads_out(("attn", "o_proj", "kernel"), f"{attn}.o_proj.weight", H, D),
    ]
    if m.qkv_bias:
        rules += [
            heads_in(("attn", "q_proj", "bias"), f"{attn}.q_proj.bias", H, D),
            heads_in(("attn", "k_proj", "bias"), f"{attn}.k_proj.bias", K, D),
            heads_in(("attn", "v_proj", "bias"), f"{attn}.v_proj.bias", K, D),
        ]
    if m.qk_norm:
        rules += [same(("attn", "q_norm", "scale"), f"{attn}.q_norm.weight")]
        rules += [same(("attn", "k_norm", "scale"), f"{attn}.k_norm.weight")]
    return rules


def _mlp(m: ModelConfig, family: str) -> list[Rule]:
    """The dense SwiGLU/GeGLU MLP, or the router and experts (kernels (L, X, E, F))."""
    projections = ("gate_proj", "up_proj", "down_proj")
    if not m.num_experts:
        return [transposed(("mlp", p, "kernel"), f"{LAYER}.mlp.{p}.weight") for p in projections]
    block, names = MOE_NAMES[family]
    rules = [transposed(("mlp", "router", "kernel"), f"{LAYER}.{block}.gate.weight")]
    for p, name in zip(projections, names, strict=True):
        rules.append(transposed(("mlp", p, "kernel"), f"{LAYER}.{block}.experts.{{j}}.{name}.weight"))
    return rules


def decoder_rules(family: str) -> Callable[[ModelConfig], list[Rule]]:
    """The table of a Hugging Face decoder family (its model fields already checked)."""

    def rules(m: ModelConfig) -> list[Rule]:
        out = [same(("wte", "embedding"), "model.embed_tokens.weight")]
        for path, name in _NORMS[m.block]:
            out += norm(path, f"{LAYER}.{name}", m)
        out += _attention(m) + _mlp(m, family)
        if m.final_norm:
            out += norm("ln_f", "model.norm", m)
        return out + head(m)

    rules.__doc__ = f"{family}: Hugging Face names (model.layers.{{i}}...), from the model fields."
    return rules


__all__ = ["LAYER", "MOE_NAMES", "decoder_rules"]
