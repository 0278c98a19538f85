"""config.json -> jaxllm's model section, one parser per Hugging Face architecture.

Each parser reads what its transformers class reads, with that class's defaults for
absent keys (save_pretrained writes them all; older Hub files do not), and refuses by
name anything jaxllm would compute differently, never approximating it: an imported
model must compute what transformers computes. What each architecture is:
  GPT2LMHeadModel      LayerNorm, learned positions, GELU (tanh), biases
  LlamaForCausalLM     RMSNorm, RoPE (optionally llama3-scaled), SwiGLU, GQA, no biases
  MistralForCausalLM   Llama + one sliding window on every layer (or none)
  Qwen2ForCausalLM     Llama + q/k/v biases; windows per layer_types
  Qwen3ForCausalLM     Llama + QK-norm; windows per layer_types
  Gemma2ForCausalLM    sandwich norms, (1 + w) RMSNorm, GeGLU, embeddings x sqrt(d),
                       query_pre_attn_scalar, attention and logit soft-caps, local/global
  Gemma3ForCausalLM    Gemma 2 + QK-norm, no attention soft-cap, a local RoPE base
                       (text only: model_type gemma3_text)
  MixtralForCausalLM   Mistral with a softmax top-k routed SwiGLU MoE, renormalised
  Qwen3MoeForCausalLM  Qwen3 with a routed MoE on every layer (norm_topk_prob optional)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from jaxllm.config import ModelConfig
from jaxllm.convert.hf_fields import ConversionError, field, hf_architecture, nullable, only
from jaxllm.convert.hf_rope import read_gemma3_rope, read_rope
from jaxllm.convert.hf_window import gemma_window, qwen_window, uniform_window

HF = Mapping[str, Any]

# The transformers config classes' defaults for keys a file may omit:
# (num_key_value_heads, head_dim, max_position_embeddings, rms_norm_eps, tie_word_embeddings,
# rope_theta); None for the first two: num_attention_heads and hidden_size // heads.
_DEFAULTS: dict[str, tuple[int | None, int | None, int, float, bool, float]] = {
    "llama": (None, None, 2048, 1e-6, False, 10000.0),
    "mistral": (8, None, 131072, 1e-6, False, 10000.0),
    "qwen2": (32, None, 32768, 1e-6, False, 10000.0),
    "qwen3": (32, 128, 32768, 1e-6, False, 10000.0),
    "gemma2": (4, 256, 8192, 1e-6, True, 10000.0),
    "gemma3": (4, 256, 131072, 1e-6, True, 1_000_000.0),
    "mixtral": (8, None, 131072, 1e-5, False, 1_000_000.0),
    "qwen3_moe": (4, None, 32768, 1e-6, False, 10000.0),
}


def gpt2_config(hf: HF) -> ModelConfig:
    only(
        hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new",
        "jaxllm's GPT-2 MLP is GELU with the tanh approximation (gelu_new / gelu_pytorch_tanh)",
    )  # fmt: skip
    only(hf, "scale_attn_weights", (True,), True, "jaxllm always scales attention scores by 1/sqrt(head_dim)")
    only(hf, "scale_attn_by_inverse_layer_idx", (False,), False, "jaxllm has no per-layer attention scaling")
    only(hf, "reorder_and_upcast_attn", (False,), False, "jaxllm has no reordered-and-upcast attention variant")
    only(hf, "add_cross_attention", (False,), False, "jaxllm is a decoder without cross-attention")
    d_model, heads = int(field(hf, "n_embd")), int(field(hf, "n_head"))
    return ModelConfig(
        vocab_size=int(field(hf, "vocab_size")),
        max_seq_len=int(field(hf, "n_positions")),
        d_model=d_model,
        num_layers=int(field(hf, "n_layer")),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=d_model // heads if heads else None,
        d_ff=int(field(hf, "n_inner", 4 * d_model)),
        norm="layernorm",
        norm_eps=float(field(hf, "layer_norm_epsilon", 1e-5)),
        block="pre_ln",
        final_norm=True,
        position="learned",
        mlp="gelu",
        tie_embeddings=bool(field(hf, "tie_word_embeddings", True)),
        use_bias=True,
        dropout=0.0,
        attention_dropout=0.0,
        init_std=float(field(hf, "initializer_range", 0.02)),
    )


def _decoder(hf: HF, family: str, theta: float | None = None, **features: Any) -> ModelConfig:
    """The Llama-shaped fields every RoPE decoder has, with the family's defaults, and
    `features` on top. The RoPE is read here unless the family passes its theta."""
    kv_default, head_dim_default, max_pos, eps, tie, default_theta = _DEFAULTS[family]
    d_model, heads = int(field(hf, "hidden_size")), int(field(hf, "num_attention_heads"))
    if theta is None:
        theta, features["rope_scaling"] = read_rope(hf, default_theta)
    kv = nullable(hf, "num_key_value_heads", kv_default or heads) or heads
    head_dim = field(hf, "head_dim", head_dim_default or (d_model // heads if heads else 0))
    base = dict(
        vocab_size=int(field(hf, "vocab_size")),
        max_seq_len=int(field(hf, "max_position_embeddings", max_pos)),
        d_model=d_model,
        num_layers=int(field(hf, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(kv),
        head_dim=int(head_dim),
        d_ff=int(field(hf, "intermediate_size")),
        norm="rmsnorm",
        norm_eps=float(field(hf, "rms_norm_eps", eps)),
        block="pre_ln",
        final_norm=True,
        position="rope",
        rope_theta=theta,
        mlp="swiglu",
        tie_embeddings=bool(field(hf, "tie_word_embeddings", tie)),
        use_bias=False,
        dropout=0.0,
        attention_dropout=0.0,
        init_std=float(field(hf, "initializer_range", 0.02)),
    )
    return ModelConfig(**(base | features))


def _silu(hf: HF, what: str) -> None:
    only(hf, "hidden_act", ("silu",), "silu", f"jaxllm's {what} MLP is SwiGLU (silu)")


def llama_config(hf: HF) -> ModelConfig:
    _silu(hf, "Llama")
    only(hf, "attention_bias", (False,), False, "jaxllm's Llama attention has no biases")
    only(hf, "mlp_bias", (False,), False, "jaxllm's Llama MLP has no biases")
    return _decoder(hf, "llama")


def mistral_config(hf: HF) -> ModelConfig:
    _silu(hf, "Mistral")
    layers = int(field(hf, "num_hidden_layers"))
    window, pattern = uniform_window(hf, layers, nullable(hf, "sliding_window", 4096))
    return _decoder(hf, "mistral", sliding_window=window, sliding_window_pattern=pattern)


def qwen2_config(hf: HF) -> ModelConfig:
    """Qwen2's q/k/v projections always have biases (o_proj and the MLP none)."""
    _silu(hf, "Qwen2")
    window, pattern = qwen_window(hf, int(field(hf, "num_hidden_layers")))
    return _decoder(hf, "qwen2", qkv_bias=True, sliding_window=window, sliding_window_pattern=pattern)


def _qwen3_attention(hf: HF) -> None:
    _silu(hf, "Qwen3")
    only(hf, "attention_bias", (False,), False, "jaxllm's Qwen3 attention has no biases (attention_bias adds o_proj's)")


def qwen3_config(hf: HF) -> ModelConfig:
    _qwen3_attention(hf)
    window, pattern = qwen_window(hf, int(field(hf, "num_hidden_layers")))
    return _decoder(hf, "qwen3", qk_norm=True, sliding_window=window, sliding_window_pattern=pattern)


def _gemma(hf: HF, family: str, default_pattern: int, **features: Any) -> ModelConfig:
    """What Gemma 2 and 3 share: GeGLU (tanh), sandwich (1 + w) norms, scaled
    embeddings, query_pre_attn_scalar, local and global layers."""
    only(
        hf, "hidden_activation", ("gelu_pytorch_tanh", "gelu_new"), "gelu_pytorch_tanh",
        "jaxllm's Gemma MLP is GeGLU with the tanh approximation (gelu_pytorch_tanh)",
    )  # fmt: skip
    only(hf, "attention_bias", (False,), False, "jaxllm's Gemma attention has no biases")
    only(hf, "use_bidirectional_attention", (False,), False, "jaxllm's decoder attends causally")
    window, pattern = gemma_window(hf, int(field(hf, "num_hidden_layers")), default_pattern)
    return _decoder(
        hf, family,
        norm_unit_offset=True, block="sandwich", mlp="geglu", scale_embeddings=True,
        query_pre_attn_scalar=float(field(hf, "query_pre_attn_scalar", 256)),
        final_logit_softcap=float(nullable(hf, "final_logit_softcapping", 30.0 if family == "gemma2" else None) or 0),
        sliding_window=window, sliding_window_pattern=pattern, **features,
    )  # fmt: skip


def gemma2_config(hf: HF) -> ModelConfig:
    return _gemma(hf, "gemma2", 2, attn_logit_softcap=float(nullable(hf, "attn_logit_softcapping", 50.0) or 0))


def gemma3_config(hf: HF) -> ModelConfig:
    """Gemma 3: transformers' Gemma3Attention never passes attn_logit_softcapping to the
    attention, so a file that sets one is ambiguous and refused; local layers take
    rope_local_base_freq with plain RoPE, global ones rope_theta with the scaling."""
    cap = nullable(hf, "attn_logit_softcapping", None)
    if cap is not None:
        raise ConversionError(
            f"config.json: attn_logit_softcapping={cap!r} is not supported; transformers' Gemma 3 attention "
            "ignores it, so the file does not say what the model computes"
        )
    theta, scaling, local_theta = read_gemma3_rope(hf)
    model = _gemma(hf, "gemma3", 6, theta=theta, rope_scaling=scaling, qk_norm=True, rope_local_theta=local_theta)
    # rope_local_theta is the local layers' base: a stack without local layers has none
    return model if model.sliding_window else dataclasses.replace(model, rope_local_theta=0.0)


def _experts(hf: HF, default: int) -> int:
    """The expert count: num_local_experts (Mixtral's name; transformers 5 writes it for
    Qwen3-MoE too) or num_experts (Qwen3-MoE's own; both classes map one to the other)."""
    names = [k for k in ("num_local_experts", "num_experts") if hf.get(k) is not None]
    counts = {int(hf[k]) for k in names}
    if len(counts) > 1:
        raise ConversionError(
            f"config.json: num_local_experts and num_experts disagree ({hf[names[0]]} vs {hf[names[1]]})"
        )
    experts = counts.pop() if counts else default
    if experts < 1:
        raise ConversionError(
            f"config.json: {names[0]}={experts} is not supported; a {hf_architecture(hf)} needs experts"
        )
    return experts


def _moe_common(hf: HF, k: int) -> dict[str, Any]:
    """The MoE fields Mixtral and Qwen3-MoE share. transformers' load-balancing loss counts
    each of a token's k choices (sum over choices of f_e P_e, times E), k times jaxllm's
    E * sum_e f_e P_e with f_e the share of all assignments (1 when balanced); the
    coefficient is scaled by k so training weighs the balance as transformers would."""
    return {
        "router": "softmax",
        "num_shared_experts": 0,
        "expert_capacity_factor": 0.0,
        "router_aux_loss_coef": float(field(hf, "router_aux_loss_coef", 0.001)) * k,
    }


def mixtral_config(hf: HF) -> ModelConfig:
    """Mixtral: every layer's MLP is num_local_experts SwiGLU experts of intermediate_size,
    softmax-routed to the top num_experts_per_tok, their weights renormalised."""
    _silu(hf, "Mixtral")
    only(hf, "router_jitter_noise", (0, 0.0), 0.0, "jaxllm's router has no jitter noise (transformers applies it "
         "in training)")  # fmt: skip
    layers, width = int(field(hf, "num_hidden_layers")), int(field(hf, "intermediate_size"))
    window, pattern = uniform_window(hf, layers, nullable(hf, "sliding_window", None))
    return _decoder(
        hf, "mixtral",
        num_experts=_experts(hf, 8), experts_per_token=(k := int(field(hf, "num_experts_per_tok", 2))),
        expert_d_ff=width, router_norm_topk=True, sliding_window=window, sliding_window_pattern=pattern,
        **_moe_common(hf, k),
    )  # fmt: skip


def qwen3_moe_config(hf: HF) -> ModelConfig:
    """Qwen3-MoE: Qwen3 attention; every layer's MLP routed (decoder_sparse_step 1, no
    mlp_only_layers: jaxllm's stack has one MLP kind for all layers)."""
    _qwen3_attention(hf)
    only(hf, "decoder_sparse_step", (1,), 1, "jaxllm routes every layer's MLP (decoder_sparse_step 1)")
    dense = field(hf, "mlp_only_layers", [])
    if dense:
        raise ConversionError(
            f"config.json: mlp_only_layers={dense!r} is not supported; jaxllm's stack has the same MLP on every layer"
        )
    experts = _experts(hf, 128)
    layers = int(field(hf, "num_hidden_layers"))
    window = nullable(hf, "sliding_window", 4096) if field(hf, "use_sliding_window", False) else None
    window, pattern = uniform_window(hf, layers, window)
    return _decoder(
        hf, "qwen3_moe",
        qk_norm=True, num_experts=experts, experts_per_token=(k := int(field(hf, "num_experts_per_tok", 8))),
        expert_d_ff=int(field(hf, "moe_intermediate_size", 768)),
        router_norm_topk=bool(field(hf, "norm_topk_prob", False)),
        sliding_window=window, sliding_window_pattern=pattern, **_moe_common(hf, k),
    )  # fmt: skip


# family -> its config.json parser
PARSERS: dict[str, Callable[[HF], ModelConfig]] = {
    "gpt2": gpt2_config,
    "llama": llama_config,
    "mistral": mistral_config,
    "qwen2": qwen2_config,
    "qwen3": qwen3_config,
    "gemma2": gemma2_config,
    "gemma3": gemma3_config,
    "mixtral": mixtral_config,
    "qwen3_moe": qwen3_moe_config,
}

__all__ = ["PARSERS"]
