"""Parameter-efficient fine-tuning (model.lora) and GRPO (the grpo section).

Why a file of their own: LoRA changes the model's parameter tree (adapters beside frozen,
possibly quantized, base kernels), GRPO is a post-training verb beside PPO; both are read
by jaxllm/model/lora.py and jaxllm/posttrain/grpo*.py, and their checks live in
jaxllm/config/validation_posttrain.py.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

LoraQuantize = Literal["none", "nf4", "int8"]
GRPOLossNorm = Literal["sequence", "token", "constant"]
GRPOScale = Literal["group", "none"]

#: Projections LoRA can adapt (the names of the block's Dense layers).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """Low-rank adapters (Hu et al., LoRA): y = x W + (alpha / rank) x A B on each target
    projection, W frozen, A (in, rank) and B (rank, out) trained, B starting at 0 so the
    adapted model starts as the base. With `quantize`, every projection's frozen kernel is
    stored quantized in blocks and dequantized per use (Dettmers et al., QLoRA)."""

    #: Adapter rank r; 0: no adapters (every parameter trains).
    rank: int = 0
    #: The adapter's output is scaled by alpha / rank.
    alpha: float = 16.0
    #: Dropout probability on the adapter's input (training only).
    dropout: float = 0.0
    #: The projections that get adapters: any of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj
    #: (a model without one, e.g. gate_proj in GPT-2's MLP, skips it).
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    #: Storage of the frozen projection kernels: "none" (model.param_dtype), "nf4" (4-bit NormalFloat, QLoRA)
    #: or "int8" (absmax), both per block of `quant_block` input features per output feature (qwix).
    quantize: LoraQuantize = "none"
    #: Input features per quantization block (a divisor of every projection's input width).
    quant_block: int = 64


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """GRPO (Shao et al., DeepSeekMath): `group_size` replies per prompt, each reply's
    advantage its reward minus the group's mean (over the group's std with scale_rewards=group),
    a clipped surrogate on every reply token, no critic. train.steps counts policy updates:
    each rollout of `prompts_per_rollout` prompts x group_size replies gives epochs x rows /
    train.batch_size of them. The policy starts from (and is held near) posttrain.init_from."""

    #: Replies sampled per prompt (the group the advantages are normalised in).
    group_size: int = 8
    #: Prompts per rollout; rows per rollout = prompts_per_rollout x group_size (a multiple of train.batch_size).
    prompts_per_rollout: int = 8
    #: Passes over each rollout's rows (1: on-policy, the ratio is 1 at every update).
    epochs: int = 1
    #: Reply length cap during rollouts and evaluation, in tokens.
    max_new_tokens: int = 16
    #: Rollout sampling temperature (it also divides the logits of every log-prob).
    temperature: float = 1.0
    #: The reward: "exact_match" (1 when the reply, up to the stop string, equals the record's `output`) or
    #: "module:function" called as function(record, reply) -> float. Ignored when reward_from is set.
    reward: str = "exact_match"
    #: A reward model's run directory (made by `jaxllm reward`) to score replies instead of `reward`.
    reward_from: str = ""
    #: Weight of the KL to the reference (k3 estimator, per token) in the loss; 0: no KL term (no reference pass).
    kl_coef: float = 0.04
    #: The ratio is clipped to [1 - clip_low, 1 + clip_high] (DAPO's clip-higher raises clip_high).
    clip_low: float = 0.2
    #: Upper clip of the ratio, see clip_low.
    clip_high: float = 0.2
    #: How token losses are averaged: "sequence" (mean over each reply's tokens, then over replies: GRPO),
    #: "token" (over every reply token of the batch: DAPO) or "constant" (sum / (rows x max_new_tokens): Dr. GRPO).
    loss_norm: GRPOLossNorm = "sequence"
    #: "group": advantages (r - mean) / (std + 1e-4) within each group (GRPO); "none": r - mean (Dr. GRPO).
    scale_rewards: GRPOScale = "group"
    #: Subtracted from the reward of replies cut at max_new_tokens.
    missing_stop_penalty: float = 0.0
    #: Held-out prompts answered greedily and scored at each evaluation.
    eval_prompts: int = 64
