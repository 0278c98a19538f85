"""GRPO training: sample a group of replies per prompt, reward each, push the policy toward
the replies that beat their group's mean. No critic, no value loss.

One iteration over `grpo.prompts_per_rollout` prompts from posttrain.data:

1. **Rollout.** Each prompt is repeated `grpo.group_size` times and the rows are sampled
   with the KV-cache generator (`jaxllm.generation.generate`) at `grpo.temperature` and
   nothing else (the log-probs must be those of the distribution the tokens were drawn
   from); every row draws from its own key, so a group's replies differ. A reply ends at
   the chat template's stop string or EOS (kept as its last action) or at
   `grpo.max_new_tokens` (then `grpo.missing_stop_penalty` is taken off its reward).
2. **Rewards.** `grpo.reward` judges each decoded reply against its prompt's record
   ("exact_match" or "module:function"), or the reward model `grpo.reward_from` scores it
   (jaxllm/posttrain/rewards.py).
3. **Advantages.** Within each group: (r − mean) / (std + 1e-4), or r − mean with
   grpo.scale_rewards=none; the reply's advantage on each of its tokens.
4. **Updates.** `grpo.epochs` shuffled passes over the rows in minibatches of
   train.batch_size rows, each one train step of jaxllm/train/step.py (the pre-training
   step with another loss: the same mesh, shardings, accumulation and optimizer): the
   clipped surrogate plus grpo.kl_coef · k3 KL to the frozen reference (the parameters of
   posttrain.init_from as loaded; not even kept when kl_coef is 0), normalised by
   grpo.loss_norm. jaxllm/posttrain/grpo.py holds the math and its conventions.

train.steps counts policy updates. The policy's checkpoints are the run's (`jaxllm sample
RUN_DIR` works on it); a stopped run resumes at a rollout boundary (jaxllm/posttrain/grpo_run.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import jax

from jaxllm.chat import stop_string
from jaxllm.config import Config, ConfigError
from jaxllm.parallel.layout import Layout
from jaxllm.posttrain.grpo_run import GRPOModels, GRPORun
from jaxllm.posttrain.pairs import run_layout
from jaxllm.posttrain.rewards import Rewards, load_prompt_items, reward_function
from jaxllm.posttrain.rollout_run import joined_run
from jaxllm.posttrain.sft import run_tokenizer, start_params
from jaxllm.train.loop import start_run
from jaxllm.train.run_folder import RunFolder, absolute_paths
from jaxllm.train.task import TrainResult, check_batch


def grpo_config(cfg: Config) -> Config:
    """The run's config as trained: chat on and every dropout off, the adapters' too (a
    dropout mask would make the new/old log-prob ratio noise)."""
    lora = dataclasses.replace(cfg.model.lora, dropout=0.0)
    model = dataclasses.replace(cfg.model, dropout=0.0, attention_dropout=0.0, head="lm", lora=lora)
    return dataclasses.replace(cfg, model=model, chat=dataclasses.replace(cfg.chat, enabled=True))


def check_grpo_run(cfg: Config) -> None:
    """The settings a GRPO run needs, named with their fix before anything is loaded."""
    g, t = cfg.grpo, cfg.train
    if not cfg.posttrain.data:
        raise ConfigError("posttrain.data is empty; give a file of prompts (Alpaca records with 'output' for "
                          "grpo.reward=exact_match, messages, or 'prompt')")  # fmt: skip
    if not cfg.posttrain.init_from:
        raise ConfigError("GRPO needs a policy to start from and stay near; set posttrain.init_from=RUN_DIR")
    rows = g.prompts_per_rollout * g.group_size
    if rows % t.batch_size:
        k = t.batch_size // math.gcd(g.group_size, t.batch_size)  # prompts per whole minibatch multiple
        raise ConfigError(
            f"grpo.prompts_per_rollout={g.prompts_per_rollout} x grpo.group_size={g.group_size} = {rows} rows is not "
            f"a multiple of train.batch_size={t.batch_size} (the minibatch); use e.g. "
            f"grpo.prompts_per_rollout={-(-g.prompts_per_rollout // k) * k}"
        )
    if cfg.mesh.pipeline > 1:
        raise ConfigError("GRPO does not run through the pipeline schedule yet; use mesh.pipeline=1")
    if not g.reward_from:
        reward_function(g.reward)  # a bad name or module fails now, not after the models are loaded


def load_models(cfg: Config, layout: Layout, log: Callable[[str], None]) -> tuple[GRPOModels, dict]:
    """The policy's start (posttrain.init_from, read into `layout`), the frozen reference (the
    same arrays: the train state copies them) when grpo.kl_coef > 0, the tokenizer and rewards."""
    start, step = start_params(cfg, layout)
    log(f"grpo: policy{' and reference' if cfg.grpo.kl_coef else ''} from {cfg.posttrain.init_from} (step {step})")
    tokenizer = run_tokenizer(cfg)
    models = GRPOModels(
        cfg=cfg, ref_params=start if cfg.grpo.kl_coef > 0 else None, tokenizer=tokenizer,
        vocab_limit=min(tokenizer.vocab_size, cfg.model.vocab_size),
        stop_tokens=[] if tokenizer.eos_id is None else [tokenizer.eos_id],
        stop_sequences=[tokenizer.encode(stop_string(cfg.chat)).tolist()],
        rewards=Rewards(cfg, layout, tokenizer, log),
    )  # fmt: skip
    return models, start


def grpo(
    cfg: Config, log: Callable[[str], None] = print, stop_after: int | None = None, reset: bool = False
) -> TrainResult:
    """Train the policy in posttrain.init_from with GRPO on posttrain.data's prompts; resumes
    the run in train.out_dir if it has checkpoints (`reset`: archive it first). Returns the
    run (train_losses per update; val_losses the held-out mean reward at each evaluation).
    The run folder is locked for the run's life (train/run_folder.py). Joins the
    multi-process run the environment describes (jaxllm/parallel/distributed.py)."""
    start_run()
    cfg = absolute_paths(grpo_config(cfg))
    check_grpo_run(cfg)
    return joined_run(cfg, log, reset, lambda folder, log: _grpo(cfg, folder, log, stop_after))


def _grpo(cfg: Config, folder: RunFolder, log: Callable[[str], None], stop_after: int | None) -> TrainResult:
    """Build the run's layout once, load the models into it, then the run on the host loop."""
    g, t = cfg.grpo, cfg.train
    layout = run_layout(cfg)  # the adapters' optimizer under model.lora
    check_batch(cfg, layout.mesh)
    models, start = load_models(cfg, layout, log)
    prompts = load_prompt_items(cfg, models.tokenizer)
    log(f"grpo: {len(prompts[0])} train / {len(prompts[1])} held-out prompts from {cfg.posttrain.data}")
    run = GRPORun(cfg, layout, models, start, prompts, folder, log, stop_after)
    del start
    folder.write_config(cfg)  # only now: the config validated and the checkpoint restored
    rows = g.prompts_per_rollout * g.group_size
    per_rollout = g.epochs * (rows // t.batch_size)
    n_params = sum(x.size for x in jax.tree.leaves(run.state["params"]))
    log(f"run {folder.path}: {n_params:,}-param policy on mesh {dict(layout.mesh.shape)}; {t.steps} updates = "
        f"{math.ceil(t.steps / per_rollout)} rollouts of {g.prompts_per_rollout} prompts x {g.group_size} replies "
        f"x {g.epochs} epochs of {rows // t.batch_size} minibatches; loss_norm {g.loss_norm}, "
        f"kl_coef {g.kl_coef}")  # fmt: skip
    return run.go()


__all__ = ["check_grpo_run", "grpo", "grpo_config", "load_models"]
