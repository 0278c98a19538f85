"""RoPE settings in config.json, read and written as transformers 5 and 4.x both read them.

transformers 5 writes them as `rope_parameters` {rope_type, rope_theta, ...}; older files
have a top-level `rope_theta` and `rope_scaling` {rope_type | type, ...}. Import reads
either with transformers' own precedence (a non-null rope_scaling replaces
rope_parameters; a theta inside the dict wins over a top-level one); export writes both
forms. Gemma 3 keys its rope_parameters by layer type ({"full_attention": ...,
"sliding_attention": ...}; 4.x: rope_theta, rope_local_base_freq and a rope_scaling of
the global layers), which becomes rope_theta / rope_scaling / rope_local_theta.

Why refusals: a RoPE type jaxllm does not implement (yarn, dynamic, longrope, ...) or a
partial rotation would give other logits, so it is named, never approximated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxllm.config import ModelConfig, RopeScalingConfig
from jaxllm.convert.hf_fields import ConversionError, field

_IMPLEMENTED = {"default": "'default'", "llama3": "'llama3'", "linear": "'linear'"}


def _check_partial(rope: Mapping[str, Any], hf: Mapping[str, Any]) -> None:
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise ConversionError(
            f"config.json: partial_rotary_factor={partial!r} is not supported; jaxllm rotates whole heads"
        )


def _scaling(rope: Mapping[str, Any], source: str, kinds: tuple[str, ...], hf: Mapping[str, Any]) -> RopeScalingConfig:
    """The scaling one (flat) RoPE dict asks for, if it is one of `kinds`."""
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind not in kinds:
        implemented = " and ".join(_IMPLEMENTED[k] for k in kinds)
        raise ConversionError(
            f"config.json: {source}.rope_type={kind!r} is not supported; jaxllm implements {implemented} here"
        )
    if kind == "default":
        return RopeScalingConfig()
    needed = ("factor",) if kind == "linear" else ("factor", "low_freq_factor", "high_freq_factor")
    for key in needed:
        if rope.get(key) is None:
            raise ConversionError(f"config.json: {source} of rope_type {kind!r} has no {key!r}")
    if kind == "linear":
        return RopeScalingConfig(kind="linear", factor=float(rope["factor"]))
    original = hf.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
    return RopeScalingConfig(
        kind="llama3",
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_seq_len=int(original or field(hf, "max_position_embeddings", 2048)),
    )


def read_rope(
    hf: Mapping[str, Any], default_theta: float = 10000.0, kinds: tuple[str, ...] = ("default", "llama3")
) -> tuple[float, RopeScalingConfig]:
    """(theta, scaling) of a model with one RoPE for all layers, from either form."""
    source = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    rope = hf.get(source) or {}
    if not isinstance(rope, Mapping) or any(isinstance(v, Mapping) for v in rope.values()):
        raise ConversionError(f"config.json: {source}={rope!r} is not supported; jaxllm has one RoPE for all layers")
    theta = float(rope.get("rope_theta") or field(hf, "rope_theta", default_theta))
    _check_partial(rope, hf)
    return theta, _scaling(rope, source, kinds, hf)


def read_gemma3_rope(hf: Mapping[str, Any]) -> tuple[float, RopeScalingConfig, float]:
    """(global theta, global scaling, local theta) of a Gemma 3 config, in either form.

    As Gemma3TextConfig builds them: a rope_scaling updates the global layers' dict; a
    missing global theta is rope_theta (default 1e6), a missing local one
    rope_local_base_freq (default 1e4). The local layers take plain RoPE only."""
    layer_types = ("full_attention", "sliding_attention")
    params = hf.get("rope_parameters")
    if params is None:
        params = {t: {"rope_type": "default"} for t in layer_types}
    if not isinstance(params, Mapping) or set(params) - set(layer_types):
        raise ConversionError(
            f"config.json: rope_parameters={params!r} is not supported; Gemma 3's is keyed by layer type "
            "(full_attention, sliding_attention)"
        )
    full = dict(params.get("full_attention") or {"rope_type": "default"})
    full.update(hf.get("rope_scaling") or {})
    local = dict(params.get("sliding_attention") or {"rope_type": "default"})
    global_theta = float(full.get("rope_theta") or field(hf, "rope_theta", 1_000_000.0))
    local_theta = float(local.get("rope_theta") or field(hf, "rope_local_base_freq", 10_000.0))
    for rope in (full, local):
        _check_partial(rope, hf)
    global_scaling = _scaling(full, "rope_parameters.full_attention", ("default", "linear"), hf)
    _scaling(local, "rope_parameters.sliding_attention", ("default",), hf)
    return global_theta, global_scaling, local_theta


def _scaling_json(s: RopeScalingConfig) -> dict[str, Any] | None:
    if s.kind == "llama3":
        return {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_seq_len,
        }
    if s.kind == "linear":
        return {"rope_type": "linear", "factor": s.factor}
    return None


def rope_json(model: ModelConfig) -> dict[str, Any]:
    """config.json's RoPE keys in both forms, which transformers 5 and 4.x each read as the same model."""
    scaling = _scaling_json(model.rope_scaling)
    return {
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_theta} | (scaling or {}),
        "rope_theta": model.rope_theta,
        "rope_scaling": scaling,
    }


def gemma3_rope_json(model: ModelConfig) -> dict[str, Any]:
    """Gemma 3's RoPE keys: per layer type (transformers 5) and the 4.x names beside them."""
    scaling = _scaling_json(model.rope_scaling)
    local = model.rope_local_theta or model.rope_theta  # layout_fit: unscaled when no local base is set
    return {
        "rope_parameters": {
            "full_attention": {"rope_type": "default", "rope_theta": model.rope_theta} | (scaling or {}),
            "sliding_attention": {"rope_type": "default", "rope_theta": local},
        },
        "rope_theta": model.rope_theta,
        "rope_local_base_freq": local,
        "rope_scaling": scaling,
    }


__all__ = ["gemma3_rope_json", "read_gemma3_rope", "read_rope", "rope_json"]
