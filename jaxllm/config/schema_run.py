"""The optimizer, train, chat, posttrain and ppo sections: how a run learns and what it trains on.

Every field has a `#:` comment on the lines above it: what it means and its unit
(`python -m jaxllm.config.docs` turns them into docs/config.md).
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup and cosine decay to `min_lr_ratio * lr`."""

    #: Peak learning rate, reached at the end of warmup.
    lr: float = 3e-4
    #: The final learning rate as a share of lr: the cosine ends at min_lr_ratio * lr.
    min_lr_ratio: float = 0.1
    #: Steps of linear warmup from 0 to lr.
    warmup_steps: int = 100
    #: The step at which the cosine reaches min_lr_ratio * lr (warmup included); flat after. null: train.steps.
    decay_steps: int | None = None
    #: AdamW's decay rate of the first-moment (gradient mean) estimate.
    beta1: float = 0.9
    #: AdamW's decay rate of the second-moment (squared gradient) estimate.
    beta2: float = 0.95
    #: AdamW's epsilon, added to the root of the second moment in the denominator.
    eps: float = 1e-8
    #: Decoupled weight decay coefficient, applied to matmul kernels only (not embeddings, norms or biases).
    weight_decay: float = 0.1
    #: Largest global gradient norm: larger gradients are scaled down to it; 0 disables clipping.
    grad_clip: float = 1.0


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    #: Optimizer updates to run (PPO: policy updates).
    steps: int = 1000
    #: Global batch, in sequences (rows of data.seq_len tokens) per optimizer step, over all devices.
    batch_size: int = 32
    #: Gradient accumulation: batch_size is split into this many microbatches, run one after another.
    microbatches: int = 1
    #: Seed of parameter initialisation, dropout and the post-training record split.
    seed: int = 0
    #: Log the training loss every this many steps.
    log_every: int = 10
    #: Evaluate on the validation split every this many steps.
    eval_every: int = 200
    #: Validation batches per evaluation.
    eval_batches: int = 20
    #: Save a checkpoint every this many steps.
    checkpoint_every: int = 500
    #: The most recent N checkpoints are kept...
    keep_checkpoints: int = 3
    #: ...plus every checkpoint whose step is a multiple of this (0: none).
    keep_every: int = 0
    #: A NaN/inf loss or gradient: "stop" the run, or "skip" that update.
    on_nonfinite: Literal["stop", "skip"] = "stop"
    #: Weight of the z-loss, z_loss * log(Z)^2 per token added to the next-token loss (PaLM: 1e-4), which
    #: keeps the softmax normaliser Z near 1 in long low-precision runs; 0: off. Metrics report the mean
    #: log(Z)^2 as z_loss.
    z_loss: float = 0.0
    #: Also write the metrics as TensorBoard event files (in out_dir/tensorboard).
    tensorboard: bool = True
    #: Also log the metrics to Weights & Biases, into this W&B project ("" = off). Process 0 logs, as
    #: "<split>/<name>" at the run's step; the W&B run folder is out_dir/wandb. Needs `pip install 'jaxllm[wandb]'`.
    wandb: str = ""
    #: W&B mode: "online" streams to the server, "offline" writes only out_dir/wandb (upload later with
    #: `wandb sync`); "" = the WANDB_MODE environment variable, else online.
    wandb_mode: Literal["", "online", "offline"] = ""
    #: W&B entity (user or team) that owns the project ("" = the logged-in user's default).
    wandb_entity: str = ""
    #: W&B run name ("" = the run folder's name). A resumed run continues the same W&B run.
    wandb_name: str = ""
    #: The run directory: config.yaml, checkpoints, metrics and logs; a run in an existing one resumes.
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

    #: The run is instruction-tuned: `jaxllm chat` and sampling wrap prompts in the template.
    enabled: bool = False
    #: The text around a system message, with {content} once.
    system: str = "<|system|>\n{content}<|end|>\n"
    #: The text around a user message, with {content} once.
    user: str = "<|user|>\n{content}<|end|>\n"
    #: The text around a reply, with {content} once; the text after {content} (its first line) ends a reply.
    assistant: str = "<|assistant|>\n{content}<|end|>\n"
    #: The system message used when a conversation brings none ("" = none).
    default_system: str = ""
    #: A Jinja chat template (an imported model's); "" = the role templates above.
    template: str = ""
    #: Special tokens that end a reply besides EOS (with a Jinja template).
    stop_tokens: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PostTrainConfig:
    """Instruction tuning and preference learning (jaxllm/posttrain/)."""

    #: A .json / .jsonl file: Alpaca records, chat `messages`, or chosen/rejected pairs.
    data: str = ""
    #: A run directory whose newest weights start the run ("" = random init).
    init_from: str = ""
    #: Share of the records held out (seeded by train.seed) for validation, in [0, 1).
    val_fraction: float = 0.05
    #: Several conversations per row (separate segments) instead of one row each.
    packing: bool = True
    #: DPO: strength of the pull towards the reference policy (lower: the policy may move further from it).
    beta: float = 0.1
    #: DPO: assumed share of flipped preference labels (conservative DPO), in [0, 0.5).
    label_smoothing: float = 0.0
    #: DPO without the reference model's log-probs.
    reference_free: bool = False
    #: Reward model: required gap r_chosen - r_rejected inside the log-sigmoid, in reward units.
    reward_margin: float = 0.0
    #: Reward model: weight of (r_chosen + r_rejected)^2 in the loss, which keeps rewards near 0.
    reward_center: float = 0.0


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO against a reward model (jaxllm/posttrain/ppo_loop.py); train.steps counts
    policy updates: each rollout of `rollout_batch` prompts gives epochs x rollout_batch /
    train.batch_size of them. The policy starts from (and is regularised towards)
    posttrain.init_from; prompts come from posttrain.data."""

    #: The reward model's run directory (made by `jaxllm reward`).
    reward_from: str = ""
    #: The critic's start: a scalar-head run ("" = the reward model).
    critic_from: str = ""
    #: Prompts sampled per rollout (a multiple of train.batch_size).
    rollout_batch: int = 64
    #: Passes over each rollout batch.
    epochs: int = 4
    #: Reply length cap during rollouts and evaluation, in tokens.
    max_new_tokens: int = 32
    #: Rollout sampling temperature (it also divides the logits of every log-prob).
    temperature: float = 1.0
    #: Per-token KL penalty coefficient to the reference policy (its starting value if adaptive).
    kl_coef: float = 0.05
    #: Steer kl_coef towards kl_target (Ziegler et al.'s proportional controller).
    adaptive_kl: bool = False
    #: Adaptive KL: target KL per reply, in nats summed over its tokens.
    kl_target: float = 6.0
    #: Adaptive KL: the controller's horizon, in replies.
    kl_horizon: int = 10000
    #: Policy ratio clip: the ratio new / old probability is clipped to [1 - clip, 1 + clip].
    clip: float = 0.2
    #: Critic: how far a value may move from its rollout-time value per update, in reward units.
    value_clip: float = 0.2
    #: Discount factor per token of a reply.
    gamma: float = 1.0
    #: GAE lambda: the bias/variance trade-off of the advantage estimate.
    lam: float = 0.95
    #: The critic's peak learning rate (0 = optimizer.lr).
    critic_lr: float = 0.0
    #: Rollouts at the start that train only the critic (its values settle first).
    critic_warmup: int = 0
    #: Subtracted from the score of replies cut at max_new_tokens, in reward units.
    missing_stop_penalty: float = 0.0
    #: Scores as (score - mean) / std of the starting policy's replies.
    normalize_reward: bool = True
    #: Held-out prompts sampled and scored at each evaluation.
    eval_prompts: int = 64
