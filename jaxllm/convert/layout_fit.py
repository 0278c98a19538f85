"""Which model fields each torch layout can hold: `check_family`.

Why a check before any tensor moves: a layout table maps tensors, not computation. A
model with, say, QK-norm converted through the Llama table would lose its norms without
a word, and a Mistral file carries no trace of a pattern of local and global layers. So
each family lists what it needs of every field that changes what the model computes;
a field a family does not list must stay at jaxllm's default (the feature off).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from jaxllm.config import Config, ModelConfig


@dataclasses.dataclass(frozen=True)
class OneOf:
    """Any of these values fits."""

    values: tuple[Any, ...]

    def fits(self, value: Any, m: ModelConfig) -> bool:
        return value in self.values

    def __str__(self) -> str:
        return "one of " + ", ".join(repr(v) for v in self.values)


@dataclasses.dataclass(frozen=True)
class Where:
    """A condition on the field's value (and the rest of the model), with what it needs in words."""

    test: Callable[[Any, ModelConfig], bool]
    needs: str

    def fits(self, value: Any, m: ModelConfig) -> bool:
        return self.test(value, m)

    def __str__(self) -> str:
        return self.needs


ANY = Where(lambda v, m: True, "anything")


def all_layers_local(value: Any, m: ModelConfig) -> bool:
    """No window, or one on every layer (pattern 1, or a pattern longer than the stack)."""
    return m.sliding_window == 0 or value == 1 or value > m.num_layers


# Fields that change what the model computes, with the value that turns each feature off.
# A family that does not name one needs this value.
_FEATURES: dict[str, Any] = {
    "block": "pre_ln",
    "norm_unit_offset": False,
    "scale_embeddings": False,
    "qkv_bias": False,
    "qk_norm": False,
    "query_pre_attn_scalar": 0.0,
    "attn_logit_softcap": 0.0,
    "final_logit_softcap": 0.0,
    "sliding_window": 0,
    "rope_local_theta": 0.0,
    "rope_scaling.kind": "none",
    "num_experts": 0,
    "head": "lm",
}
# Mixture-of-experts fields a routed family must pin (Hugging Face's MoE blocks are
# softmax-routed, dropless, without shared experts).
_MOE = {"num_experts": Where(lambda v, m: v > 0, "> 0"), "router": "softmax", "num_shared_experts": 0,
        "expert_capacity_factor": 0.0, "mlp": "swiglu"}  # fmt: skip
_ROPE = {"position": "rope", "rope_scaling.kind": OneOf(("none", "llama3"))}
_LLAMA = {"norm": "rmsnorm", "block": "pre_ln", "mlp": "swiglu", "use_bias": False} | _ROPE
_WINDOW_EVERY_LAYER = {"sliding_window": ANY, "sliding_window_pattern": Where(all_layers_local, "every layer local")}
_WINDOW_ANY_PATTERN = {"sliding_window": ANY}
_GEMMA = {"norm": "rmsnorm", "norm_unit_offset": True, "block": "sandwich", "mlp": "geglu", "use_bias": False,
          "scale_embeddings": True, "query_pre_attn_scalar": ANY, "final_logit_softcap": ANY} | _ROPE  # fmt: skip


def _gemma3_local_rope(value: Any, m: ModelConfig) -> bool:
    """Gemma 3's local layers use plain RoPE: their own base, or the global one when unscaled."""
    return value > 0 or m.rope_scaling.kind == "none" or m.sliding_window == 0


_GEMMA3 = {
    "qk_norm": True,
    "rope_scaling.kind": OneOf(("none", "linear")),
    "rope_local_theta": Where(_gemma3_local_rope, "> 0 when rope_scaling applies (local layers are unscaled)"),
}
# family -> {field: the value it needs, or a OneOf / Where}
FAMILY_FIELDS: dict[str, dict[str, Any]] = {
    "gpt2": {"norm": "layernorm", "block": "pre_ln", "position": "learned", "mlp": "gelu"},
    "postln": {"norm": "layernorm", "block": "post_ln", "position": "learned", "mlp": "relu"},
    "llama": _LLAMA,
    "mistral": _LLAMA | _WINDOW_EVERY_LAYER,
    "qwen2": _LLAMA | _WINDOW_ANY_PATTERN | {"qkv_bias": True},
    "qwen3": _LLAMA | _WINDOW_ANY_PATTERN | {"qk_norm": True},
    "gemma2": _GEMMA | _WINDOW_ANY_PATTERN | {"attn_logit_softcap": ANY},
    "gemma3": _GEMMA | _WINDOW_ANY_PATTERN | _GEMMA3,
    "mixtral": _LLAMA | _WINDOW_EVERY_LAYER | _MOE | {"router_norm_topk": True},
    "qwen3_moe": _LLAMA | _WINDOW_EVERY_LAYER | _MOE | {"qk_norm": True},
}
# The parity layouts (gpt2, postln) have neither GQA nor a head_dim of their own.
_NO_GQA = ("gpt2", "postln")


def _value(m: ModelConfig, field: str) -> Any:
    value: Any = m
    for part in field.split("."):
        value = getattr(value, part)
    return value


def check_family(config: Config | ModelConfig, family: str) -> ModelConfig:
    """Raise ValueError naming the first model field the family's layout cannot hold."""
    m = config.model if isinstance(config, Config) else config
    if family not in FAMILY_FIELDS:
        raise ValueError(f"family={family!r} is unknown; choose one of {', '.join(FAMILY_FIELDS)}")
    wants = _FEATURES | FAMILY_FIELDS[family]
    for field, want in wants.items():
        value = _value(m, field)
        fits = want.fits(value, m) if isinstance(want, OneOf | Where) else value == want
        if not fits:
            needs = str(want) if isinstance(want, OneOf | Where) else repr(want)
            raise ValueError(f"model.{field}={value!r} does not fit the {family} layout, which needs {needs}")
    if family in _NO_GQA and m.num_kv_heads != m.num_heads:
        raise ValueError(f"model.num_kv_heads={m.num_kv_heads}: the {family} layout has no GQA; set it to num_heads")
    if family in _NO_GQA and m.num_heads * m.head_dim != m.d_model:
        raise ValueError(f"model.head_dim={m.head_dim}: the {family} layout needs num_heads * head_dim == d_model")
    return m


__all__ = ["FAMILY_FIELDS", "check_family"]
