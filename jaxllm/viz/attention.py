"""Attention maps: softmax(q k^T / sqrt(D)) of every layer and head for one prompt.

The model sows each layer's q and k (after RoPE) into the "intermediates" collection
(jaxllm/model/attention.py); nothing is kept unless a caller asks for that collection,
as this module does. The maps are recomputed here from q and k with the causal mask, in
float32, so they are exactly what the model's softmax sees.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config
from jaxllm.errors import DataError
from jaxllm.model.attention import layer_is_local
from jaxllm.model.decoder import Decoder
from jaxllm.viz._figure import plt, save, token_label
from jaxllm.viz.layers import layer_mask


def attention_maps(cfg: Config, params, tokens: list[int]) -> np.ndarray:
    """(layers, heads, T, T) float32 attention probabilities of one prompt."""
    if not tokens:
        raise DataError("the prompt encodes to no tokens; give a non-empty --prompt")
    if len(tokens) > cfg.model.max_seq_len:
        raise DataError(f"the prompt is {len(tokens)} tokens, more than model.max_seq_len={cfg.model.max_seq_len}; "
                         "shorten it")  # fmt: skip
    x = jnp.asarray([tokens], jnp.int32)
    _, state = Decoder(cfg.model).apply({"params": params}, x, mutable=["intermediates"])
    sown = state["intermediates"]["blocks"]["attn"]
    q, k = sown["q"][0][:, 0], sown["k"][0][:, 0]  # (L, T, H, D), (L, T, K, D): batch row 0
    H, K = q.shape[2], k.shape[2]
    k = jnp.repeat(k, H // K, axis=2)  # query head h reads KV head h // (H / K)
    scores = jnp.einsum("lthd,lshd->lhts", q.astype(jnp.float32), k.astype(jnp.float32)) / np.sqrt(q.shape[-1])
    m = cfg.model
    if m.attn_logit_softcap:  # as the model computes them (q is sown after RoPE and Gemma's rescaling)
        scores = m.attn_logit_softcap * jnp.tanh(scores / m.attn_logit_softcap)
    T = len(tokens)
    allowed = np.stack([layer_mask(T, m.sliding_window if local else 0) for local in layer_is_local(m)])  # (L, T, T)
    probs = jax.nn.softmax(jnp.where(allowed[:, None], scores, -jnp.inf), axis=-1)
    return np.asarray(probs)


def _heatmap(ax, m: np.ndarray, labels: list[str] | None, title: str):
    image = ax.imshow(m, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    ax.set_title(title, fontsize=9)
    if labels is not None:
        ticks = range(len(labels))
        ax.set_xticks(ticks, labels, rotation=90, fontsize=7)
        ax.set_yticks(ticks, labels, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return image


def check_indices(num_layers: int, num_heads: int, layers: list[int] | None, heads: list[int] | None) -> None:
    """Refuse a layer or head the model lacks, naming it and the valid range; callers check
    before computing the maps, so a typo costs no forward pass."""
    for name, chosen, n in (("layer", layers or [], num_layers), ("head", heads or [], num_heads)):
        bad = [i for i in chosen if not 0 <= i < n]
        if bad:
            raise DataError(f"{name} {bad[0]} does not exist: the model has {n} {name}s (0..{n - 1})")


def plot_attention(
    maps: np.ndarray,
    pieces: list[str],
    out: str | Path,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    title: str = "",
) -> Path:
    """A grid of heatmaps, one row per layer and one column per head (keys across, queries
    down; a row sums to 1). Token labels on the axes when the prompt is short enough to read."""
    L, H = maps.shape[:2]
    check_indices(L, H, layers, heads)
    layers = list(range(L)) if layers is None else layers
    heads = list(range(H)) if heads is None else heads
    labels = [token_label(p) for p in pieces] if len(pieces) <= 32 else None
    size = 2.6 if labels is None else 3.4
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(size * len(heads) + 1, size * len(layers)),
                             squeeze=False)  # fmt: skip
    image = None
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            image = _heatmap(axes[r][c], maps[layer, head], labels, f"layer {layer}, head {head}")
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability (query row -> key column)")
    if title:
        fig.suptitle(title)
    return save(fig, out)


ACROSS_COLUMNS = 4


def plot_attention_across_steps(
    maps_by_step: dict[int, np.ndarray], pieces: list[str], layer: int, head: int, out: str | Path
) -> Path:
    """One head's map at each checkpoint step, in reading order (at most ACROSS_COLUMNS per
    row, so many checkpoints wrap instead of shrinking into an unreadable strip): how the
    pattern formed in training."""
    steps = sorted(maps_by_step)
    labels = [token_label(p) for p in pieces] if len(pieces) <= 32 else None
    size = 2.6 if labels is None else 3.4
    cols = min(len(steps), ACROSS_COLUMNS)
    rows = -(-len(steps) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1, size * rows + 0.4), squeeze=False)
    image = None
    for i, step in enumerate(steps):
        image = _heatmap(axes[i // cols][i % cols], maps_by_step[step][layer, head], labels, f"step {step}")
    for i in range(len(steps), rows * cols):
        axes[i // cols][i % cols].axis("off")
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention probability")
    fig.suptitle(f"layer {layer}, head {head} across training")
    return save(fig, out)
