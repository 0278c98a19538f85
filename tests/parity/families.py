"""The family cases of the parity suite: tiny configs that switch each new part on, the
reference spec each one maps to, and the (params, torch model) pairs.

Why the sizes: as common.py's Llama (vocab 37, d_model 24, head_dim 6, GQA 4/2), with a
window of 4 shorter than every test sequence (7 to 13 tokens) so it masks something, soft-caps
small enough (2 and 3) that tanh bends the scores and logits of these weights (about +-3), and
Gemma 3 on three layers so its pattern of 3 has two local layers then a global one.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jaxllm.config import ModelConfig, RopeScalingConfig
from jaxllm.convert import to_torch
from tests.parity import reference_families as rf
from tests.parity.common import LLAMA, load_into, random_params

_GEMMA = dict(
    block="sandwich", norm_unit_offset=True, mlp="geglu", scale_embeddings=True, tie_embeddings=True,
    sliding_window=4, query_pre_attn_scalar=10.0,
)  # fmt: skip
_GEMMA3 = dataclasses.replace(
    LLAMA, **_GEMMA, num_layers=3, sliding_window_pattern=3, qk_norm=True, rope_local_theta=100.0,
    rope_scaling=RopeScalingConfig(kind="linear", factor=4.0),
)  # fmt: skip
_MOE = dict(num_experts=4, experts_per_token=2, expert_d_ff=16, router_aux_loss_coef=0.0)

# case -> (config, torch layout family of jaxllm/convert)
CASES: dict[str, tuple[ModelConfig, str]] = {
    "mistral-window": (dataclasses.replace(LLAMA, sliding_window=4, sliding_window_pattern=1), "mistral"),
    "qwen2-qkv-bias-tied": (dataclasses.replace(LLAMA, qkv_bias=True, tie_embeddings=True), "qwen2"),
    "qwen3-qk-norm-wide-heads": (dataclasses.replace(LLAMA, qk_norm=True, head_dim=8), "qwen3"),
    "gemma2": (
        dataclasses.replace(LLAMA, **_GEMMA, sliding_window_pattern=2, attn_logit_softcap=2.0, final_logit_softcap=3.0),
        "gemma2",
    ),
    "gemma3": (_GEMMA3, "gemma3"),
    "mixtral": (dataclasses.replace(LLAMA, **_MOE), "mixtral"),
    "qwen3-moe-no-renorm": (dataclasses.replace(LLAMA, **_MOE, qk_norm=True, router_norm_topk=False), "qwen3_moe"),
}


def layer_is_local(cfg: ModelConfig, i: int) -> bool:
    """The schema's rule: with a window, pattern 1 makes every layer local, otherwise layer i
    is global when (i + 1) is a multiple of the pattern."""
    if not cfg.sliding_window:
        return False
    return cfg.sliding_window_pattern == 1 or (i + 1) % cfg.sliding_window_pattern != 0


def spec_of(cfg: ModelConfig, family: str) -> rf.FamilySpec:
    """The reference's spec for a jaxllm config (which the layout family has already pinned)."""
    scaling = None
    s = cfg.rope_scaling
    if s.kind == "linear":
        scaling = {"rope_type": "linear", "factor": s.factor}
    elif s.kind == "llama3":
        scaling = dict(rope_type="llama3", factor=s.factor, low_freq_factor=s.low_freq_factor,
                       high_freq_factor=s.high_freq_factor, original_max_seq_len=s.original_max_seq_len)  # fmt: skip
    types = tuple("sliding_attention" if layer_is_local(cfg, i) else "full_attention" for i in range(cfg.num_layers))
    return rf.FamilySpec(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
        num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, d_ff=cfg.d_ff, eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, rope_scaling=scaling, rope_local_theta=cfg.rope_local_theta,
        sliding_window=cfg.sliding_window, layer_types=types, qkv_bias=cfg.qkv_bias, qk_norm=cfg.qk_norm,
        unit_offset=cfg.norm_unit_offset, sandwich=cfg.block == "sandwich",
        activation="gelu_tanh" if cfg.mlp == "geglu" else "silu", query_pre_attn_scalar=cfg.query_pre_attn_scalar,
        attn_softcap=cfg.attn_logit_softcap, final_softcap=cfg.final_logit_softcap,
        scale_embeddings=cfg.scale_embeddings, tie_embeddings=cfg.tie_embeddings, num_experts=cfg.num_experts,
        experts_per_token=cfg.experts_per_token, expert_d_ff=cfg.expert_d_ff or 0,
        norm_topk=cfg.router_norm_topk, moe_layout="mixtral" if family == "mixtral" else "qwen3_moe",
    )  # fmt: skip


@functools.cache
def _params_and_state(case: str) -> tuple[dict, dict]:
    """A case's random parameters and their torch state dict, made once per process (the
    parameters are immutable jax arrays; every test builds its own torch model from them)."""
    cfg, family = CASES[case]
    params = random_params(cfg)
    return params, to_torch(cfg, params, family)


def build_family_pair(case: str):
    """(config, family, params, reference model holding the same weights through the family's
    torch layout table)."""
    cfg, family = CASES[case]
    params, state = _params_and_state(case)
    return cfg, family, params, load_into(rf.FamilyForCausalLM(spec_of(cfg, family)), state)


def hidden(cfg: ModelConfig, batch: int, length: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(batch, length, cfg.d_model)).astype(np.float32)
