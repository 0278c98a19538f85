"""The optimizer, train, chat, posttrain and ppo sections: how a run learns and what it trains on."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup and cosine decay to `min_lr_ratio * lr`."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    decay_steps: int | None = None  # None: train.steps
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global-norm clipping; 0 disables


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    steps: int = 1000
    batch_size: int = 32  # global batch, in sequences
    microbatches: int = 1  # gradient accumulation: batch_size is split into this many
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20  # validation batches per evaluation
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # the most recent N are kept...
    keep_every: int = 0  # ...plus every checkpoint whose step is a multiple of this (0: none)
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss or gradient: stop the run, or skip that update
    tensorboard: bool = True
    out_dir: str = "runs/default"



@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """How a conversation becomes text: instruction tuning trains on it and `jaxllm chat`
    renders it, so the template travels with the run (its config.yaml).

    Each role's template holds `{content}` once. A reply is generated after the text
    before `{content}` in `assistant` and ends at the text after it (its first line,
    e.g. "<|end|>"), which is the stop string. `enabled` marks an instruction-tuned run.

    An imported model brings its own Jinja template (`template`, rendered as transformers
    does, jaxllm/chat_template.py); it then replaces the three role templates, and a reply
    ends at one of `stop_tokens` (the template's end-of-turn token, e.g. "<|im_end|>") or EOS.
    """

    enabled: bool = False
    system: str = "<|system|>\n{content}<|end|>\n"
    user: str = "<|user|>\n{content}<|end|>\n"
    assistant: str = "<|assistant|>\n{content}<|end|>\n"
    default_system: str = ""  # used when a conversation brings no system message
    template: str = ""  # a Jinja chat template (an imported model's); "" = the role templates above
    stop_tokens: tuple[str, ...] = ()  # special tokens that end a reply besides EOS (with a Jinja template)


@dataclasses.dataclass(frozen=True)
class PostTrainConfig:
    """Instruction tuning and preference learning (jaxllm/posttrain/)."""

    data: str = ""  # .json / .jsonl: Alpaca records, chat `messages`, or chosen/rejected pairs
    init_from: str = ""  # a run directory whose newest weights start the run ("" = random init)
    val_fraction: float = 0.05  # records held out (seeded by train.seed) for validation
    packing: bool = True  # several conversations per row (separate segments) instead of one row each
    beta: float = 0.1  # DPO: strength of the pull away from the reference (lower: further)
    label_smoothing: float = 0.0  # DPO: assumed share of flipped preference labels (conservative DPO)
    reference_free: bool = False  # DPO without the reference model's log-probs
    reward_margin: float = 0.0  # reward model: required gap r_chosen - r_rejected inside the log-sigmoid
    reward_center: float = 0.0  # reward model: weight of (r_chosen + r_rejected)^2, keeps rewards near 0


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO against a reward model (jaxllm/posttrain/ppo_loop.py); train.steps counts
    policy updates: each rollout of `rollout_batch` prompts gives epochs x rollout_batch /
    train.batch_size of them. The policy starts from (and is regularised towards)
    posttrain.init_from; prompts come from posttrain.data."""

    reward_from: str = ""  # the reward model's run directory (jaxllm reward)
    critic_from: str = ""  # the critic's start: a scalar-head run ("" = the reward model)
    rollout_batch: int = 64  # prompts sampled per rollout (a multiple of train.batch_size)
    epochs: int = 4  # passes over each rollout batch
    max_new_tokens: int = 32  # reply length cap during rollouts and evaluation
    temperature: float = 1.0  # rollout sampling temperature (it also divides the logits of every log-prob)
    kl_coef: float = 0.05  # per-token KL penalty to the reference policy (its starting value if adaptive)
    adaptive_kl: bool = False  # steer kl_coef towards kl_target (Ziegler et al.'s proportional controller)
    kl_target: float = 6.0  # adaptive KL: target KL per reply (summed over its tokens)
    kl_horizon: int = 10000  # adaptive KL: the controller's horizon, in replies
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # critic: how far a value may move from its rollout-time value per update
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    critic_lr: float = 0.0  # the critic's peak learning rate (0 = optimizer.lr)
    critic_warmup: int = 0  # rollouts at the start that train only the critic (its values settle first)
    missing_stop_penalty: float = 0.0  # subtracted from the score of replies cut at max_new_tokens
    normalize_reward: bool = True  # scores as (score - mean) / std of the starting policy's replies
    eval_prompts: int = 64  # held-out prompts sampled and scored at each evaluation
