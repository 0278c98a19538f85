"""The names and the reading of a Hugging Face config.json: what every family parser shares.

Why apart: hf_config.py dispatches to the family parsers (hf_families.py) and those read
fields the same way and raise the same error; both import this file, not each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxllm.errors import DataError


class ConversionError(DataError):
    """A Hugging Face checkpoint (or jaxllm run) that cannot be converted; the message
    names the file, tensor or config field and says why. A DataError (so a ValueError):
    the CLI prints it as one line and exits 2, like every other bad input."""


# architecture name (config.json "architectures") -> torch_layout family
ARCHITECTURES: dict[str, str] = {
    "GPT2LMHeadModel": "gpt2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
    "Gemma2ForCausalLM": "gemma2",
    "Gemma3ForCausalLM": "gemma3",
    "MixtralForCausalLM": "mixtral",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
ARCHITECTURE_OF = {family: name for name, family in ARCHITECTURES.items()}
# family -> config.json "model_type" (the family's name, but for Gemma 3's text-only config)
MODEL_TYPE = {family: family for family in ARCHITECTURE_OF} | {"gemma3": "gemma3_text"}
FAMILY_OF_MODEL_TYPE = {model_type: family for family, model_type in MODEL_TYPE.items()}

_REQUIRED = object()


def hf_architecture(hf_config: Mapping[str, Any]) -> str:
    """The architecture a config.json names (its first "architectures" entry, else its model_type).

    When both are there they must agree: transformers' Auto classes build the model from
    model_type, the class name from architectures, so a file where they differ is two
    models at once (e.g. model_type "gemma3", the multimodal config, under Gemma3ForCausalLM)."""
    names = hf_config.get("architectures") or []
    model_type = hf_config.get("model_type")
    if names:
        name = str(names[0])
    else:
        name = ARCHITECTURE_OF.get(FAMILY_OF_MODEL_TYPE.get(model_type, ""), f"model_type={model_type!r}")
    if name not in ARCHITECTURES:
        raise ConversionError(f"architecture {name!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    want = MODEL_TYPE[ARCHITECTURES[name]]
    if model_type is not None and model_type != want:
        raise ConversionError(
            f"config.json: model_type={model_type!r} is not {want!r}, the model_type of {name}; "
            "transformers would build another model than the architecture names"
        )
    return name


def field(hf: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    """config.json's value of `key`; null counts as absent (as transformers treats it)."""
    value = hf.get(key)
    if value is not None:
        return value
    if default is _REQUIRED:
        raise ConversionError(f"config.json has no {key!r}, which a {hf_architecture(hf)} needs")
    return default


def nullable(hf: Mapping[str, Any], key: str, default: Any) -> Any:
    """config.json's value of `key` where null means something (no window, no cap):
    the class default only when the key is absent, as transformers reads it."""
    return hf[key] if key in hf else default


def only(hf: Mapping[str, Any], key: str, allowed: tuple[Any, ...], default: Any, why: str) -> None:
    """Refuse a value of `key` jaxllm would compute differently; `why` says what jaxllm does."""
    value = field(hf, key, default)
    if value not in allowed:
        raise ConversionError(f"config.json: {key}={value!r} is not supported; {why}")


__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_OF",
    "FAMILY_OF_MODEL_TYPE",
    "MODEL_TYPE",
    "ConversionError",
    "field",
    "hf_architecture",
    "nullable",
    "only",
]
