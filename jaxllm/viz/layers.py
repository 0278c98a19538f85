"""What each layer's attention may read, and how far back the stack reaches (`jaxllm viz layers`).

Sliding-window attention (Mistral, Gemma's local layers; model.sliding_window) lets a query
see only its last W keys, its own included. One such layer forgets everything older, but
the stack does not: position t of layer l reads positions t - W + 1 .. t of layer l - 1,
which read W - 1 further back, so after l windowed layers the last position depends on
l (W - 1) + 1 tokens, and one global layer (Gemma's every `sliding_window_pattern`-th)
reaches the whole prefix. The picture draws each layer's mask at a short length (local
and global) and, beside it, the tokens the last position depends on after each layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.model.attention import layer_is_local
from jaxllm.viz._figure import plt, save


def layer_mask(length: int, window: int) -> np.ndarray:
    """(length, length) bool: causal, and within `window` keys when window > 0."""
    t, s = np.indices((length, length))
    return (s <= t) & ((t - s < window) if window else True)


def receptive_fields(config: ModelConfig, length: int) -> np.ndarray:
    """(L, length) bool: which positions the last position depends on after each layer."""
    reach = np.zeros(length, bool)
    reach[-1] = True  # the last position's own token
    rows = []
    for local in layer_is_local(config):
        mask = layer_mask(length, config.sliding_window if local else 0)
        reach = mask[reach].any(axis=0) | reach  # keys read by any position that already matters
        rows.append(reach.copy())
    return np.stack(rows) if rows else np.zeros((0, length), bool)


def plot_layers(config: ModelConfig, out: str | Path, length: int = 48) -> Path:
    """The picture described in the module docstring, for `config`'s layers."""
    local = layer_is_local(config)
    kinds = [("local", config.sliding_window)] if local.any() else []
    if not local.all():
        kinds.append(("global", 0))
    fig, axes = plt.subplots(1, len(kinds) + 1, figsize=(4.2 * (len(kinds) + 1), 4.4))
    for ax, (kind, window) in zip(axes, kinds, strict=False):
        ax.imshow(layer_mask(length, window), cmap="Blues", vmin=0, vmax=1.4, interpolation="nearest")
        count = int(local.sum()) if kind == "local" else int((~local).sum())
        what = f"window {window}" if window else "whole prefix"
        ax.set_title(f"{kind} layers ({count} of {config.num_layers}): {what}")
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fields = receptive_fields(config, length)
    ax = axes[-1]
    ax.imshow(fields, cmap="Oranges", vmin=0, vmax=1.4, aspect="auto", interpolation="nearest")
    for i, row in enumerate(fields):
        ax.text(length - 1.5, i, f"{int(row.sum())}", ha="right", va="center", fontsize=8)
    ax.set_yticks(range(len(fields)), [f"{i} {'local' if loc else 'global'}" for i, loc in enumerate(local)])
    ax.set_title(f"tokens the last of {length} depends on, after each layer")
    ax.set_xlabel("position")
    ax.set_ylabel("layer")
    fig.tight_layout()
    return save(fig, out)
