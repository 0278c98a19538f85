"""Hugging Face config.json <-> jaxllm's model section.

Nine architectures, each one whose every detail jaxllm's config fields express exactly
(hf_families.py lists them and parses each; hf_rope.py and hf_window.py read RoPE and
sliding windows). Anything a file asks for that jaxllm would compute differently
(another activation, attention biases on Llama, another RoPE type, a pattern of local
and global layers jaxllm has none for, ...) is refused by name, never approximated: an
imported model must compute what transformers computes.

Export picks the architecture from the model's fields (`model_family`: the first whose
layout holds every field, layout_fit.py) and writes config.json in the form the
installed transformers reads, with the 4.x names beside the 5.x ones where they differ.
A Mistral without a window computes what a Llama does, so it exports as one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxllm.config import ConfigError, ModelConfig, validate_model
from jaxllm.convert.hf_families import PARSERS
from jaxllm.convert.hf_fields import (
    ARCHITECTURE_OF,
    ARCHITECTURES,
    MODEL_TYPE,
    ConversionError,
    hf_architecture,
)
from jaxllm.convert.hf_rope import gemma3_rope_json, rope_json
from jaxllm.convert.hf_window import layer_types
from jaxllm.convert.torch_layout import check_family


def hf_to_config(hf_config: Mapping[str, Any]) -> ModelConfig:
    """jaxllm's model section for a Hugging Face config.json (as a dict).

    Dropout is set to 0: an imported model is for inference or fine-tuning, where the
    fine-tuning config decides dropout, not the pre-training one."""
    model = PARSERS[ARCHITECTURES[hf_architecture(hf_config)]](hf_config)
    try:
        validate_model(model)
    except ConfigError as e:
        raise ConversionError(f"config.json describes a model jaxllm cannot build: {e}") from None
    return model


def model_family(model: ModelConfig) -> str:
    """The torch_layout family whose Hugging Face architecture holds this model exactly;
    ConversionError naming each architecture's first misfit otherwise."""
    if model.head != "lm":
        raise ConversionError(f"model.head={model.head!r}: only language models (head 'lm') export to Hugging Face")
    reasons = []
    for family in ARCHITECTURE_OF:
        try:
            check_family(model, family)
        except ValueError as e:
            reasons.append(f"{ARCHITECTURE_OF[family]}: {e}")
            continue
        if not model.final_norm:
            reasons.append(f"{ARCHITECTURE_OF[family]}: model.final_norm=False, but it always has a final norm")
        elif family == "gpt2" and not model.use_bias:
            reasons.append("GPT2LMHeadModel: model.use_bias=False, but GPT-2 always has biases")
        else:
            return family
    raise ConversionError("the model fits no supported Hugging Face architecture: " + "; ".join(reasons))


def _gpt2_json(m: ModelConfig) -> dict[str, Any]:
    return {
        "n_embd": m.d_model,
        "n_layer": m.num_layers,
        "n_head": m.num_heads,
        "n_inner": m.d_ff,
        "n_positions": m.max_seq_len,
        "layer_norm_epsilon": m.norm_eps,
        "activation_function": "gelu_new",
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": m.dropout,
        "embd_pdrop": m.dropout,
        "attn_pdrop": m.attention_dropout,
    }


def _decoder_json(m: ModelConfig) -> dict[str, Any]:
    """The Llama-shaped keys every RoPE decoder has."""
    return {
        "hidden_size": m.d_model,
        "intermediate_size": m.d_ff,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.num_kv_heads,
        "head_dim": m.head_dim,
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps,
        "attention_dropout": m.attention_dropout,
        "hidden_act": "silu",
    } | rope_json(m)


def _qwen_window_json(m: ModelConfig) -> dict[str, Any]:
    """Qwen2/3: layer_types (what transformers 5 reads) and the older keys beside them;
    max_window_layers says the same only for no window or one on every layer."""
    kinds = layer_types(m)
    local = [k == "sliding_attention" for k in kinds]
    return {
        "use_sliding_window": any(local),
        "sliding_window": m.sliding_window or None,
        "max_window_layers": local.index(True) if any(local) else m.num_layers,
        "layer_types": kinds,
    }


def _gemma_json(m: ModelConfig) -> dict[str, Any]:
    scalar = m.query_pre_attn_scalar or m.head_dim
    if scalar != int(scalar):
        raise ConversionError(
            f"model.query_pre_attn_scalar={scalar}: transformers' Gemma configs take an integer (query_pre_attn_scalar)"
        )
    return {
        "hidden_activation": "gelu_pytorch_tanh",
        "hidden_act": "gelu_pytorch_tanh",  # older Gemma code read this name
        "attention_bias": False,
        "query_pre_attn_scalar": int(scalar),
        "final_logit_softcapping": m.final_logit_softcap or None,
        "attn_logit_softcapping": m.attn_logit_softcap or None,
        # a window transformers' Gemma always needs; with every layer global it is never used
        "sliding_window": m.sliding_window or m.max_seq_len,
        "layer_types": layer_types(m),
        "use_bidirectional_attention": False,
    }


def _moe_json(m: ModelConfig) -> dict[str, Any]:
    return {
        "num_experts_per_tok": m.experts_per_token,
        "router_aux_loss_coef": m.router_aux_loss_coef / m.experts_per_token,  # transformers' loss is k x jaxllm's
        "output_router_logits": False,
    }


def _family_json(family: str, m: ModelConfig) -> dict[str, Any]:
    """The keys only this family has, on top of _decoder_json."""
    if family == "llama":
        return {"attention_bias": False, "mlp_bias": False}
    if family == "mistral":
        return {"sliding_window": m.sliding_window or None}
    if family == "qwen2":
        return _qwen_window_json(m)
    if family == "qwen3":
        return _qwen_window_json(m) | {"attention_bias": False}
    if family == "gemma2":
        return _gemma_json(m)
    if family == "gemma3":
        # 4.x derives the layers from this: 1 all global, more than the layers all local
        pattern = m.sliding_window_pattern if m.sliding_window_pattern > 1 else m.num_layers + 1
        pattern = pattern if m.sliding_window else 1
        return _gemma_json(m) | gemma3_rope_json(m) | {"sliding_window_pattern": pattern}
    if family == "mixtral":
        return _moe_json(m) | {
            "intermediate_size": m.expert_d_ff,
            "num_local_experts": m.num_experts,
            "router_jitter_noise": 0.0,
            "sliding_window": m.sliding_window or None,
        }
    assert family == "qwen3_moe", family
    return _moe_json(m) | {
        "attention_bias": False,
        "num_experts": m.num_experts,
        "moe_intermediate_size": m.expert_d_ff,
        "norm_topk_prob": m.router_norm_topk,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "use_sliding_window": m.sliding_window > 0,
        "sliding_window": m.sliding_window or None,
    }


def config_to_hf(
    model: ModelConfig,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """config.json for a jaxllm model section, as the installed transformers reads it.

    Special token ids are written explicitly (null when unknown): left out, transformers
    would default GPT-2's to 50256 (Gemma's to 0, 1, 2), outside a small vocabulary."""
    family = model_family(model)
    common = {
        "architectures": [ARCHITECTURE_OF[family]],
        "model_type": MODEL_TYPE[family],
        "vocab_size": model.vocab_size,
        "tie_word_embeddings": model.tie_embeddings,
        "initializer_range": model.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": dtype,  # transformers 5's name
        "torch_dtype": dtype,  # transformers 4's name for the same thing
        "use_cache": True,
    }
    if family == "gpt2":
        return common | _gpt2_json(model)
    return common | _decoder_json(model) | _family_json(family, model)


__all__ = ["ARCHITECTURES", "ARCHITECTURE_OF", "ConversionError", "config_to_hf", "hf_architecture",
           "hf_to_config", "model_family"]  # fmt: skip
