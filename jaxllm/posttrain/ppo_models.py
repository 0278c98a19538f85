"""What a PPO run holds fixed: its configs, the frozen reference and reward model, the
critic's start, the tokenizer and prompts, and the two train-step losses.

The critic is a separate model (InstructGPT's choice), a scalar-head Decoder with the
reward model's backbone (or `ppo.critic_from`'s): a shared backbone would let the value
loss pull on the policy's features, and the reward model's features already describe what
is being valued. Every model is read straight into the run's Layout (its mesh and rules;
`Layout.for_model` for the scalar-head ones).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jax.numpy as jnp

from jaxllm.chat import stop_string
from jaxllm.config import Config, ConfigError, LoraConfig, ModelConfig
from jaxllm.errors import DataError
from jaxllm.model.decoder import Decoder
from jaxllm.model.loss import chunked_over_positions
from jaxllm.parallel.layout import Layout
from jaxllm.posttrain import ppo as ppo_math
from jaxllm.posttrain.data import load_records, prompt_messages, split_records, tokenize_prompt
from jaxllm.posttrain.sft import run_tokenizer, start_params
from jaxllm.train.load import load_run, load_run_tokenizer


def token_logprobs(model: ModelConfig, params, seq, temperature: float, vocab_limit: int | None):
    """(log p of each next token of `seq`, entropy), both (B, W - 1), as the sampler drew them;
    the head runs in chunks of positions (jaxllm/model/loss.py), never the whole logits."""
    x, w = Decoder(model).apply({"params": params}, seq[:, :-1], hidden=True)  # (B, W - 1, E), (E, V)

    def per_token(logits, targets):
        return ppo_math.token_logprobs(logits, targets, temperature, vocab_limit)

    return chunked_over_positions(
        x, w, seq[:, 1:], per_token, model.loss_chunk, model.scan_unroll, model.final_logit_softcap
    )


def _no_pipeline(pipeline) -> None:
    if pipeline is not None:
        raise ConfigError("PPO does not run through the pipeline schedule yet; use mesh.pipeline=1")


def policy_loss_fn(temperature: float, vocab_limit: int | None, clip: float) -> Callable:
    """The policy's train-step loss: (sum of clipped surrogate losses, reply tokens, sums of
    clip fraction, approximate KL to the rollout policy and entropy)."""

    def loss_fn(cfg, params, batch, rng, pipeline):
        _no_pipeline(pipeline)
        logp, entropy = token_logprobs(cfg.model, params, batch["seq"], temperature, vocab_limit)
        losses, clipped = ppo_math.policy_loss_terms(logp, batch["old_logprobs"], batch["advantages"], clip)
        m = batch["mask"]
        aux = {"clip_frac": jnp.sum(clipped * m), "approx_kl": jnp.sum((batch["old_logprobs"] - logp) * m),
               "entropy": jnp.sum(entropy * m)}  # fmt: skip
        return jnp.sum(losses * m), jnp.sum(m), aux

    return loss_fn


def critic_loss_fn(clip: float) -> Callable:
    """The critic's train-step loss: the clipped value loss summed over reply tokens."""

    def loss_fn(cfg, params, batch, rng, pipeline):
        _no_pipeline(pipeline)
        values = Decoder(cfg.model).apply({"params": params}, batch["seq"][:, :-1])
        losses = ppo_math.value_loss_terms(values, batch["old_values"], batch["returns"], clip)
        m = batch["mask"]
        return jnp.sum(losses * m), jnp.sum(m), {"value_error": jnp.sum(jnp.abs(values - batch["returns"]) * m)}

    return loss_fn


@dataclass
class PPOModels:
    """Everything fixed for the run: configs, frozen parameters, the tokenizer."""

    cfg: Config
    critic_cfg: Config
    reward_cfg: Config
    ref_params: dict
    reward_params: dict
    tokenizer: object
    vocab_limit: int
    stop_tokens: list[int]
    stop_sequences: list[list[int]]


def ppo_config(cfg: Config) -> Config:
    """The run's config as trained: chat on and dropout off (a dropout mask would make
    the new/old log-prob ratio noise)."""
    model = dataclasses.replace(cfg.model, dropout=0.0, attention_dropout=0.0, head="lm",
                                lora=dataclasses.replace(cfg.model.lora, dropout=0.0))  # fmt: skip
    return dataclasses.replace(cfg, model=model, chat=dataclasses.replace(cfg.chat, enabled=True))


def check_ppo(cfg: Config) -> None:
    """The settings PPO needs, named with their fix before anything is loaded."""
    p, t = cfg.ppo, cfg.train
    if not cfg.posttrain.data:
        raise ConfigError("posttrain.data is empty; give a file of prompts (Alpaca records, messages, or 'prompt')")
    if not cfg.posttrain.init_from:
        raise ConfigError("PPO needs a policy to start from and stay near; set posttrain.init_from=RUN_DIR")
    if not p.reward_from:
        raise ConfigError("PPO needs a reward model: set ppo.reward_from=RUN_DIR (a run of jaxllm reward)")
    if p.rollout_batch % t.batch_size:
        raise ConfigError(
            f"ppo.rollout_batch={p.rollout_batch} is not a multiple of train.batch_size={t.batch_size} "
            f"(the minibatch); use e.g. ppo.rollout_batch={max(1, p.rollout_batch // t.batch_size) * t.batch_size}"
        )
    if cfg.mesh.pipeline > 1:
        raise ConfigError("PPO does not run through the pipeline schedule yet; use mesh.pipeline=1")


def _check_tokenizer(cfg: Config, tokenizer, reward_cfg: Config) -> None:
    rm_tokenizer = load_run_tokenizer(reward_cfg)
    probes = ("Hello, world!", stop_string(cfg.chat))
    if rm_tokenizer.vocab_size != tokenizer.vocab_size or any(
        rm_tokenizer.encode(s).tolist() != tokenizer.encode(s).tolist() for s in probes
    ):
        raise ConfigError(f"ppo.reward_from={cfg.ppo.reward_from!r} uses another tokenizer than the policy; PPO scores "
                          "the sampled tokens directly, so train the reward model from the same base run")  # fmt: skip


def critic_config(cfg: Config) -> Config:
    """The critic's config: the policy's model with a scalar head (and every weight trained,
    adapters or not on the policy), its own learning rate
    (ppo.critic_lr) and its checkpoints in RUN_DIR/critic."""
    lr = cfg.ppo.critic_lr or cfg.optimizer.lr
    model = dataclasses.replace(cfg.model, head="scalar", lora=LoraConfig())
    return dataclasses.replace(
        cfg, model=model, optimizer=dataclasses.replace(cfg.optimizer, lr=lr),
        train=dataclasses.replace(cfg.train, out_dir=str(Path(cfg.train.out_dir) / "critic")),
    )  # fmt: skip


def load_models(cfg: Config, layout: Layout, log: Callable[[str], None]) -> tuple[PPOModels, dict]:
    """The frozen reference and reward model, the critic's start and the tokenizer, read
    into the run's `layout`; also returns the policy's and critic's start parameters."""
    p = cfg.ppo
    policy_start, step = start_params(cfg, layout)
    log(f"ppo: policy and reference from {cfg.posttrain.init_from} (step {step})")
    reward_cfg, reward_params, rstep = load_run(p.reward_from, layout=layout)
    if reward_cfg.model.head != "scalar":
        raise ConfigError(f"ppo.reward_from={p.reward_from!r} is not a reward model (its model.head is not scalar)")
    tokenizer = run_tokenizer(cfg)
    _check_tokenizer(cfg, tokenizer, reward_cfg)
    critic_from = p.critic_from or p.reward_from
    critic_src, critic_params, cstep = (reward_cfg, reward_params, rstep) if critic_from == p.reward_from \
        else load_run(critic_from, layout=layout)  # fmt: skip
    if critic_src.model.head != "scalar":
        raise ConfigError(f"ppo.critic_from={critic_from!r} has no scalar head; give a reward-model run")
    critic_cfg = critic_config(cfg)
    if dataclasses.replace(critic_src.model, dropout=0.0, attention_dropout=0.0) != critic_cfg.model:
        raise ConfigError(f"the critic's start {critic_from!r} has another architecture than the policy; "
                          "the critic must match model.* (train the reward model from the SFT run)")  # fmt: skip
    log(f"ppo: reward model {p.reward_from} (step {rstep}); critic from {critic_from} (step {cstep})")
    reward_model = dataclasses.replace(reward_cfg.model, dropout=0.0, attention_dropout=0.0)
    models = PPOModels(
        cfg=cfg, critic_cfg=critic_cfg, reward_cfg=dataclasses.replace(reward_cfg, model=reward_model),
        ref_params=policy_start, reward_params=reward_params, tokenizer=tokenizer,
        vocab_limit=min(tokenizer.vocab_size, cfg.model.vocab_size),
        stop_tokens=[] if tokenizer.eos_id is None else [tokenizer.eos_id],
        stop_sequences=[tokenizer.encode(stop_string(cfg.chat)).tolist()],
    )  # fmt: skip
    return models, {"policy": policy_start, "critic": critic_params}


def load_prompts(cfg: Config, tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Tokenized train and held-out prompts (each the conversation plus the assistant's opening)."""
    pt = cfg.posttrain
    train_recs, val_recs = split_records(load_records(pt.data), pt.val_fraction, cfg.train.seed)
    limit = cfg.model.max_seq_len - 1
    out = []
    for recs in (train_recs, val_recs):
        ids = [tokenize_prompt(tokenizer, cfg.chat, prompt_messages(r, f"{pt.data} record {i}"))
               for i, r in enumerate(recs)]  # fmt: skip
        out.append([p for p in ids if len(p) <= limit])
    if not out[0]:
        raise DataError(f"no prompt of {pt.data} fits the context (model.max_seq_len={cfg.model.max_seq_len}) with "
                        "room for a reply")  # fmt: skip
    return out[0], out[1][: cfg.ppo.eval_prompts]
