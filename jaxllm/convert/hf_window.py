"""Sliding-window attention in config.json <-> model.sliding_window and its pattern.

jaxllm says which layers attend through a window with two numbers: sliding_window (0:
none) and sliding_window_pattern p (layer i global exactly when (i + 1) is a multiple of
p; p = 1: every layer local). transformers says it per layer: `layer_types`, a list of
"full_attention" / "sliding_attention" (Qwen2/3, Gemma 2/3), or, older, Qwen's
use_sliding_window with max_window_layers (layers from that index on are local), Gemma
3's sliding_window_pattern, or for Mistral, Mixtral and Qwen3-MoE one window on every
layer. A list no p reproduces (e.g. Qwen's local layers after global ones) would
attend differently in jaxllm, so it is refused, naming the keys it came from.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from jaxllm.config import ModelConfig
from jaxllm.convert.hf_fields import ConversionError, field, hf_architecture, nullable

FULL, SLIDING = "full_attention", "sliding_attention"


def _letters(sliding: Sequence[bool]) -> str:
    return "".join("S" if s else "F" for s in sliding)


def window_from_layer_types(
    layer_types: Sequence[Any], window: int | None, num_layers: int, source: str
) -> tuple[int, int]:
    """(sliding_window, sliding_window_pattern) for per-layer attention kinds; `source`
    names the config.json keys the kinds came from, for the refusal."""
    if not isinstance(layer_types, Sequence) or isinstance(layer_types, str) or len(layer_types) != num_layers:
        raise ConversionError(f"config.json: {source} is not a list of {num_layers} layer types (num_hidden_layers)")
    unknown = [t for t in layer_types if t not in (FULL, SLIDING)]
    if unknown:
        raise ConversionError(
            f"config.json: {source} has layer type {unknown[0]!r}; jaxllm implements {FULL!r} and {SLIDING!r}"
        )
    sliding = [t == SLIDING for t in layer_types]
    if not any(sliding):
        return 0, 1
    if not window or window <= 0:
        raise ConversionError(
            f"config.json: {source} has sliding layers but the window is {window!r} (sliding_window, "
            "use_sliding_window); transformers would not apply one consistently"
        )
    if all(sliding):
        return int(window), 1
    pattern = sliding.index(False) + 1
    if pattern == 1 or sliding != [(i + 1) % pattern != 0 for i in range(num_layers)]:
        raise ConversionError(
            f"config.json: {source} gives layers {_letters(sliding)} (S sliding, F full), which fits no "
            "sliding_window_pattern: jaxllm makes layer i global exactly when (i + 1) is a multiple of it"
        )
    return int(window), pattern


def layer_types(model: ModelConfig) -> list[str]:
    """The per-layer attention kinds of a model section, as transformers 5 writes them."""
    w, p = model.sliding_window, model.sliding_window_pattern
    if not w:
        return [FULL] * model.num_layers
    return [FULL if p > 1 and (i + 1) % p == 0 else SLIDING for i in range(model.num_layers)]


def qwen_window(hf: Mapping[str, Any], num_layers: int) -> tuple[int, int]:
    """Qwen2/Qwen3: layer_types when the file has them (transformers 5 reads those), else
    use_sliding_window with max_window_layers, as Qwen2Config derives the list."""
    window = nullable(hf, "sliding_window", 4096) if field(hf, "use_sliding_window", False) else None
    if hf.get("layer_types") is not None:
        return window_from_layer_types(hf["layer_types"], window, num_layers, "layer_types")
    first = int(field(hf, "max_window_layers", 28))
    kinds = [SLIDING if window is not None and i >= first else FULL for i in range(num_layers)]
    return window_from_layer_types(kinds, window, num_layers, f"use_sliding_window with max_window_layers={first}")


def gemma_window(hf: Mapping[str, Any], num_layers: int, default_pattern: int) -> tuple[int, int]:
    """Gemma 2/3: layer_types, else local-global alternation of sliding_window_pattern
    (Gemma 2: 2, Gemma 3: 6 unless the file says), as their configs derive it."""
    window = nullable(hf, "sliding_window", 4096)
    if hf.get("layer_types") is not None:
        return window_from_layer_types(hf["layer_types"], window, num_layers, "layer_types")
    p = int(field(hf, "sliding_window_pattern", default_pattern))
    kinds = [SLIDING if (i + 1) % p else FULL for i in range(num_layers)]
    return window_from_layer_types(kinds, window, num_layers, f"sliding_window_pattern={p}")


def uniform_window(hf: Mapping[str, Any], num_layers: int, window: int | None) -> tuple[int, int]:
    """Mistral, Mixtral, Qwen3-MoE: one window on every layer, or none. These classes do
    not read layer_types; a file whose list says otherwise is refused as ambiguous."""
    kinds = [SLIDING if window else FULL] * num_layers
    given = hf.get("layer_types")
    if given is not None and list(given) != kinds:
        raise ConversionError(
            f"config.json: layer_types gives layers {_letters([t == SLIDING for t in given])}, but "
            f"{hf_architecture(hf)} applies sliding_window={window!r} to every layer and ignores layer_types"
        )
    return window_from_layer_types(kinds, window, num_layers, "sliding_window")


__all__ = ["FULL", "SLIDING", "gemma_window", "layer_types", "qwen_window", "uniform_window", "window_from_layer_types"]
