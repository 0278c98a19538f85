"""Where a mixture-of-experts model sends each token (`jaxllm viz routing`).

Every block's router (jaxllm/model/moe.py) picks `experts_per_token` of `num_experts`
experts for each token. The picture has one row per layer and one column per token of a
prompt. Each cell is coloured by the token's first-choice expert and labelled with its
router weight. Beside it, a bar per layer shows how the prompt's (token, choice)
assignments split over the experts: the balance the load-balancing loss rewards.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config
from jaxllm.errors import ConfigError, DataError
from jaxllm.model.decoder import Decoder
from jaxllm.viz._figure import plt, save, token_label


def routing(cfg: Config, params, tokens: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(experts (L, T, k) int, weights (L, T, k) float32) the routers give one prompt; an
    expert id equal to num_experts marks a choice dropped past capacity."""
    m = cfg.model
    if not m.num_experts:
        raise ConfigError("model.num_experts=0: this run has a dense MLP, no router to draw")
    if not tokens:
        raise DataError("the prompt encodes to no tokens; give a non-empty --prompt")
    if len(tokens) > m.max_seq_len:
        raise DataError(f"the prompt is {len(tokens)} tokens, more than model.max_seq_len={m.max_seq_len}; shorten it")
    _, state = Decoder(m).apply({"params": params}, jnp.asarray([tokens], jnp.int32), mutable=["intermediates"])
    sown = state["intermediates"]["blocks"]["mlp"]
    return np.asarray(sown["experts"][0][:, 0]), np.asarray(sown["weights"][0][:, 0], np.float32)


def expert_load(experts: np.ndarray, num_experts: int) -> np.ndarray:
    """(L, X) share of each layer's (token, choice) assignments that each expert received."""
    counts = np.stack([np.bincount(layer.ravel(), minlength=num_experts + 1)[:num_experts] for layer in experts])
    return counts / max(experts.shape[1] * experts.shape[2], 1)


def plot_routing(cfg: Config, experts: np.ndarray, weights: np.ndarray, pieces: list[str], out: str | Path,
                 title: str) -> Path:  # fmt: skip
    """The picture described in the module docstring."""
    L, T, _ = experts.shape
    X = cfg.model.num_experts
    cmap = plt.get_cmap("tab10" if X <= 10 else "tab20")
    fig, (grid, bars) = plt.subplots(
        1, 2, figsize=(min(0.42 * T, 22) + 4, 0.5 * L + 2.2), gridspec_kw={"width_ratios": [max(T, 4), 6]}
    )
    image = np.ones((L, T, 3))
    for layer in range(L):
        for t in range(T):
            first = experts[layer, t, 0]
            if first < X:
                image[layer, t] = cmap(first % cmap.N)[:3]
                grid.text(t, layer, f"{weights[layer, t, 0]:.2f}", ha="center", va="center", fontsize=6)
    grid.imshow(image, aspect="auto", interpolation="nearest")
    grid.set_xticks(range(T), [token_label(p) for p in pieces], fontsize=8, family="monospace")
    grid.set_yticks(range(L), [f"layer {i}" for i in range(L)])
    grid.set_title(f"{title}: first-choice expert per token (label: its router weight)")
    load = expert_load(experts, X)
    left = np.zeros(L)
    for e in range(X):
        bars.barh(range(L), load[:, e], left=left, color=cmap(e % cmap.N), label=f"expert {e}")
        left += load[:, e]
    bars.axvline(1 / X, color="black", lw=0.6, ls=":")
    bars.set_xlim(0, 1)
    bars.set_yticks(range(L), [""] * L)
    bars.invert_yaxis()
    bars.set_title(f"share of the {experts.shape[2]} choices x {T} tokens")
    if X <= 16:
        bars.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save(fig, out)
