"""Hugging Face config.json <-> jaxllm's model section.

Two architectures, the two whose every detail jaxllm's config knobs express exactly:
  GPT2LMHeadModel   LayerNorm, learned positions, GELU (tanh approximation), biases
  LlamaForCausalLM  RMSNorm, RoPE (optionally Llama-3.1 scaled), SwiGLU, GQA, no biases
Anything a file asks for that jaxllm would compute differently (another activation,
attention biases on Llama, another RoPE type, ...) is refused by name, never
approximated: an imported model must compute what transformers computes.

RoPE settings: transformers 5 writes them as `rope_parameters` {rope_type, rope_theta,
...}; older files have a top-level `rope_theta` and `rope_scaling` {rope_type | type,
...}. Import reads either with transformers' own precedence (a non-null rope_scaling
replaces rope_parameters; a theta inside the dict wins over a top-level one); export
writes both forms, which transformers 5 and 4.x each read as the same model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxllm.config import ConfigError, ModelConfig, RopeScalingConfig, validate_model
from jaxllm.convert.torch_layout import check_family
from jaxllm.errors import DataError


class ConversionError(DataError):
    """A Hugging Face checkpoint (or jaxllm run) that cannot be converted; the message
    names the file, tensor or config field and says why. A DataError (so a ValueError):
    the CLI prints it as one line and exits 2, like every other bad input."""


# architecture name (config.json "architectures") -> torch_layout family
ARCHITECTURES: dict[str, str] = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama"}
ARCHITECTURE_OF = {family: name for name, family in ARCHITECTURES.items()}  # the family is also the model_type


_REQUIRED = object()


def _field(hf: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    """config.json's value of `key`; null counts as absent (as transformers treats it)."""
    value = hf.get(key)
    if value is not None:
        return value
    if default is _REQUIRED:
        raise ConversionError(f"config.json has no {key!r}, which a {hf_architecture(hf)} needs")
    return default


def _only(hf: Mapping[str, Any], key: str, allowed: tuple[Any, ...], default: Any, why: str) -> None:
    value = _field(hf, key, default)
    if value not in allowed:
        raise ConversionError(f"config.json: {key}={value!r} is not supported; {why}")


def hf_architecture(hf_config: Mapping[str, Any]) -> str:
    """The architecture a config.json names (its first "architectures" entry, else its model_type)."""
    names = hf_config.get("architectures") or []
    if names:
        name = str(names[0])
    else:
        model_type = hf_config.get("model_type")
        name = ARCHITECTURE_OF.get(model_type, f"model_type={model_type!r}")
    if name not in ARCHITECTURES:
        raise ConversionError(f"architecture {name!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    return name


def _gpt2_config(hf: Mapping[str, Any]) -> ModelConfig:
    _only(
        hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new",
        "jaxllm's GPT-2 MLP is GELU with the tanh approximation (gelu_new / gelu_pytorch_tanh)",
    )  # fmt: skip
    _only(hf, "scale_attn_weights", (True,), True, "jaxllm always scales attention scores by 1/sqrt(head_dim)")
    _only(hf, "scale_attn_by_inverse_layer_idx", (False,), False, "jaxllm has no per-layer attention scaling")
    _only(hf, "reorder_and_upcast_attn", (False,), False, "jaxllm has no reordered-and-upcast attention variant")
    _only(hf, "add_cross_attention", (False,), False, "jaxllm is a decoder without cross-attention")
    d_model, heads = int(_field(hf, "n_embd")), int(_field(hf, "n_head"))
    return ModelConfig(
        vocab_size=int(_field(hf, "vocab_size")),
        max_seq_len=int(_field(hf, "n_positions")),
        d_model=d_model,
        num_layers=int(_field(hf, "n_layer")),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=d_model // heads if heads else None,
        d_ff=int(_field(hf, "n_inner", 4 * d_model)),
        norm="layernorm",
        norm_eps=float(_field(hf, "layer_norm_epsilon", 1e-5)),
        block="pre_ln",
        final_norm=True,
        position="learned",
        mlp="gelu",
        tie_embeddings=bool(_field(hf, "tie_word_embeddings", True)),
        use_bias=True,
        dropout=0.0,
        attention_dropout=0.0,
        init_std=float(_field(hf, "initializer_range", 0.02)),
    )


def _rope(hf: Mapping[str, Any]) -> tuple[float, RopeScalingConfig]:
    """(theta, scaling) from either RoPE form, with transformers' precedence."""
    source = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    rope = hf.get(source) or {}
    if not isinstance(rope, Mapping) or any(isinstance(v, Mapping) for v in rope.values()):
        raise ConversionError(f"config.json: {source}={rope!r} is not supported; jaxllm has one RoPE for all layers")
    theta = float(rope.get("rope_theta") or _field(hf, "rope_theta", 10000.0))
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise ConversionError(
            f"config.json: partial_rotary_factor={partial!r} is not supported; jaxllm rotates whole heads"
        )
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, RopeScalingConfig()
    if kind != "llama3":
        raise ConversionError(
            f"config.json: {source}.rope_type={kind!r} is not supported; jaxllm implements 'default' and 'llama3'"
        )
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
        if rope.get(key) is None:
            raise ConversionError(f"config.json: {source} of rope_type 'llama3' has no {key!r}")
    original = hf.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
    return theta, RopeScalingConfig(
        kind="llama3",
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_seq_len=int(original or _field(hf, "max_position_embeddings", 2048)),
    )


def _llama_config(hf: Mapping[str, Any]) -> ModelConfig:
    _only(hf, "hidden_act", ("silu",), "silu", "jaxllm's Llama MLP is SwiGLU (silu)")
    _only(hf, "attention_bias", (False,), False, "jaxllm's Llama attention has no biases")
    _only(hf, "mlp_bias", (False,), False, "jaxllm's Llama MLP has no biases")
    d_model, heads = int(_field(hf, "hidden_size")), int(_field(hf, "num_attention_heads"))
    theta, scaling = _rope(hf)
    return ModelConfig(
        vocab_size=int(_field(hf, "vocab_size")),
        max_seq_len=int(_field(hf, "max_position_embeddings", 2048)),
        d_model=d_model,
        num_layers=int(_field(hf, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(_field(hf, "num_key_value_heads", heads)),
        head_dim=int(_field(hf, "head_dim", d_model // heads if heads else 0)),
        d_ff=int(_field(hf, "intermediate_size")),
        norm="rmsnorm",
        norm_eps=float(_field(hf, "rms_norm_eps", 1e-6)),
        block="pre_ln",
        final_norm=True,
        position="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        mlp="swiglu",
        tie_embeddings=bool(_field(hf, "tie_word_embeddings", False)),
        use_bias=False,
        dropout=0.0,
        attention_dropout=0.0,
        init_std=float(_field(hf, "initializer_range", 0.02)),
    )


def hf_to_config(hf_config: Mapping[str, Any]) -> ModelConfig:
    """jaxllm's model section for a Hugging Face config.json (as a dict).

    Dropout is set to 0: an imported model is for inference or fine-tuning, where the
    fine-tuning config decides dropout, not the pre-training one."""
    family = ARCHITECTURES[hf_architecture(hf_config)]
    model = _gpt2_config(hf_config) if family == "gpt2" else _llama_config(hf_config)
    try:
        validate_model(model)
    except ConfigError as e:
        raise ConversionError(f"config.json describes a model jaxllm cannot build: {e}") from None
    return model


def model_family(model: ModelConfig) -> str:
    """The torch_layout family ("gpt2" or "llama") whose Hugging Face architecture holds
    this model exactly; ConversionError naming each architecture's first misfit otherwise."""
    if model.head != "lm":
        raise ConversionError(f"model.head={model.head!r}: only language models (head 'lm') export to Hugging Face")
    reasons = []
    for family in ("gpt2", "llama"):
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
    would default GPT-2's to 50256, outside a small vocabulary."""
    family = model_family(model)
    common = {
        "architectures": [ARCHITECTURE_OF[family]],
        "model_type": family,
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
        return common | {
            "n_embd": model.d_model,
            "n_layer": model.num_layers,
            "n_head": model.num_heads,
            "n_inner": model.d_ff,
            "n_positions": model.max_seq_len,
            "layer_norm_epsilon": model.norm_eps,
            "activation_function": "gelu_new",
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "resid_pdrop": model.dropout,
            "embd_pdrop": model.dropout,
            "attn_pdrop": model.attention_dropout,
        }
    rope_scaling = None
    s = model.rope_scaling
    if s.kind == "llama3":
        rope_scaling = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_seq_len,
        }
    return common | {
        "hidden_size": model.d_model,
        "intermediate_size": model.d_ff,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads,
        "head_dim": model.head_dim,
        "max_position_embeddings": model.max_seq_len,
        "rms_norm_eps": model.norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": model.attention_dropout,
        "mlp_bias": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_theta} | (rope_scaling or {}),
        "rope_theta": model.rope_theta,
        "rope_scaling": rope_scaling,
    }
