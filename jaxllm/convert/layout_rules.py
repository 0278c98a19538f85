"""The building blocks of the torch layout tables: one Rule per torch tensor.

Why apart from torch_layout.py: the family tables (torch_layout.py for the parity
layouts, layout_decoders.py for the Hugging Face decoders) are written in these few
shapes of mapping, and both import them from here without importing each other.

Layouts: a torch nn.Linear weight is (out, in); a jaxllm kernel is (in, out) with
heads split out, e.g. q_proj (E, H, D) and o_proj (H, D, E), stacked over a leading
layer axis (and, for experts, an expert axis after it). Each rule holds both
directions of one tensor, so the same table converts weights one way and gradients
or checkpoints the other way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from jaxllm.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Rule:
    """One torch tensor <-> one or more jaxllm arrays.

    `torch_key` containing "{i}" is per layer: its `paths` are under params["blocks"]
    and index layer i of the stacked arrays; one containing "{j}" as well is per
    expert, indexing [i, j] of arrays stacked (layers, experts, ...).
    """

    torch_key: str
    paths: tuple[tuple[str, ...], ...]
    to_torch: Callable[..., np.ndarray]
    from_torch: Callable[[np.ndarray], tuple[np.ndarray, ...]] | None  # None: derived (tied head)


def same(path: tuple[str, ...], key: str) -> Rule:
    return Rule(key, (path,), lambda a: a, lambda w: (w,))


def transposed(path: tuple[str, ...], key: str) -> Rule:
    return Rule(key, (path,), lambda a: a.T, lambda w: (w.T,))


def heads_in(path: tuple[str, ...], key: str, n: int, d: int) -> Rule:
    """(E, N, D) kernel <-> (N*D, E) weight; (N, D) bias <-> (N*D,)."""
    if path[-1] == "bias":
        return Rule(key, (path,), lambda b: b.reshape(-1), lambda w: (w.reshape(n, d),))
    return Rule(key, (path,), lambda k: k.reshape(k.shape[0], -1).T, lambda w: (w.T.reshape(-1, n, d),))


def heads_out(path: tuple[str, ...], key: str, h: int, d: int) -> Rule:
    """(H, D, E) kernel <-> (E, H*D) weight."""
    return Rule(key, (path,), lambda k: k.reshape(-1, k.shape[-1]).T, lambda w: (w.T.reshape(h, d, -1),))


def fused_qkv(kind: str, key: str, m: ModelConfig) -> Rule:
    """q|k|v kernels (or biases) concatenated on the output axis, as GPT-2's c_attn
    and nn.MultiheadAttention's in_proj store them."""
    paths = tuple(("attn", f"{p}_proj", kind) for p in "qkv")
    H, D = m.num_heads, m.head_dim
    if kind == "bias":
        return Rule(
            key,
            paths,
            lambda *bs: np.concatenate([b.reshape(-1) for b in bs]),
            lambda w: tuple(x.reshape(H, D) for x in np.split(w, 3)),
        )
    return Rule(
        key,
        paths,
        lambda *ks: np.concatenate([k.reshape(k.shape[0], -1).T for k in ks]),
        lambda w: tuple(x.T.reshape(-1, H, D) for x in np.split(w, 3)),
    )


def head(m: ModelConfig) -> list[Rule]:
    """LM head: the tied embedding (derived, nothing to load back) or its own kernel."""
    if m.tie_embeddings:
        return [Rule("lm_head.weight", (("wte", "embedding"),), lambda e: e, None)]
    return [transposed(("lm_head", "kernel"), "lm_head.weight")]


def norm(path: str, key: str, m: ModelConfig) -> list[Rule]:
    """A norm's scale (and LayerNorm's bias). Gemma's (1 + scale) RMSNorm needs no
    conversion: Hugging Face stores the same offset-free weight jaxllm does."""
    rules = [same((path, "scale"), f"{key}.weight")]
    if m.norm == "layernorm":
        rules.append(same((path, "bias"), f"{key}.bias"))
    return rules
