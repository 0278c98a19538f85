"""PPO training (RLHF): sample replies, score them with a reward model, update the policy.

One iteration over `ppo.rollout_batch` prompts from posttrain.data:

1. **Rollout.** Replies are sampled with the KV-cache generator (`jaxllm.generation.generate`: one
   jitted prefill plus a `lax.while_loop` of cached decode steps) at `ppo.temperature`
   and nothing else (no top-k / top-p: the log-probs below must be those of the
   distribution the tokens were drawn from). A reply ends at the chat template's stop
   string or EOS, which stays part of the reply (its last action), or at
   `ppo.max_new_tokens` (then `ppo.missing_stop_penalty` is taken off its score).
2. **Score.** One jitted forward each of the policy (old log-probs), the frozen reference
   (the parameters of posttrain.init_from as loaded: plain arrays, never updated), the
   critic (a value per token) and the reward model (its value at the reply's last token,
   the stop string, where it was trained to judge a conversation; jaxllm/posttrain/reward.py).
   All log-probs use logits / temperature with the padded vocabulary rows removed, as the
   sampler did.
3. **Advantages.** With `ppo.normalize_reward` (the default) the score is first made
   (score − μ) / σ, μ and σ measured once on the starting policy's replies to one
   rollout batch (as Ziegler et al. normalise their reward model), so kl_coef, the
   value clip and the critic's learning rate mean the same for any reward model.
   Per-token rewards −kl_coef · (log π −
   log π_ref) plus the score on the last reply token; GAE(γ, λ) by a reverse `lax.scan`;
   advantages whitened over the rollout batch (jaxllm/posttrain/ppo.py holds the math and its conventions).
4. **Updates.** `ppo.epochs` shuffled passes over the batch in minibatches of
   train.batch_size rows; each minibatch is one policy step (clipped surrogate) and one
   critic step (clipped value loss). Both are train steps from jaxllm/train/step.py, the
   pre-training step with another loss: the same mesh, shardings, gradient accumulation
   and optimizer code.

The critic is a separate model (InstructGPT's choice), a scalar-head Decoder with the
reward model's backbone (or `ppo.critic_from`'s) and a zero score head: a shared
backbone would let the value loss pull on the policy's features, and the reward model's
features already describe what is being valued; its head is reset because it was
trained at the last token only (its values at other positions were measured several σ
off, more than the clipped value loss lets a value move per rollout). With
`ppo.critic_warmup` the critic first fits the starting policy's returns on its own,
without the value clip. train.steps counts policy updates. The policy's checkpoints are the run's
(`jaxllm sample RUN_DIR` works on it); the critic's live in RUN_DIR/critic. Checkpoints
and signals are handled between iterations, so a stopped run resumes at a rollout
boundary (prompt order, KL coefficient and both optimizers restored).

Where things live: this module is the entry point (`ppo`, `evaluate_policy`);
jaxllm/posttrain/ppo_models.py the models, prompts and losses;
jaxllm/posttrain/rollout.py sampling and scoring; jaxllm/posttrain/ppo_run.py the run on
the host loop every training run shares (jaxllm/train/loop.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax

from jaxllm.chat import stop_string
from jaxllm.config import Config
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.mesh import make_mesh
from jaxllm.posttrain.pairs import run_layout
from jaxllm.posttrain.ppo_models import check_ppo, load_models, load_prompts, ppo_config
from jaxllm.posttrain.ppo_run import PPORun
from jaxllm.posttrain.rollout import Rollout, build_rollout, make_scorer, pad_rows, rollout_stats, sample
from jaxllm.posttrain.rollout_run import joined_run
from jaxllm.train.loop import quiet, start_run
from jaxllm.train.run_folder import RunFolder, absolute_paths
from jaxllm.train.task import TrainResult, check_batch


def evaluate_policy(cfg: Config, params, prompts: list[list[int]], seed: int = 0) -> tuple[dict[str, float], list[str]]:
    """Sample one reply per prompt from `params` as PPO does (ppo.temperature), score it
    with ppo.reward_from and measure its KL to posttrain.init_from: (mean raw score, KL,
    reply length and stop share; the decoded replies, stop string removed)."""
    cfg = ppo_config(cfg)
    layout = Layout.build(cfg, make_mesh(cfg.mesh))
    models, start = load_models(cfg, layout, quiet)
    rows, n = pad_rows(prompts, layout.data_parallel)
    ro = sample(models, params, rows, seed, layout)
    logp, ref_logp, _, scores = make_scorer(models, layout)(params, start["critic"], ro)
    scores = scores - cfg.ppo.missing_stop_penalty * ~ro.stopped
    stop = stop_string(cfg.chat)
    replies = [models.tokenizer.decode(r).split(stop)[0] for r in ro.replies[:n]]
    return rollout_stats(ro, logp, ref_logp, scores, n), replies


def ppo(
    cfg: Config, log: Callable[[str], None] = print, stop_after: int | None = None, reset: bool = False
) -> TrainResult:
    """Train the policy in posttrain.init_from with PPO against ppo.reward_from; resumes
    the run in train.out_dir if it has checkpoints. Returns the run (val_losses holds
    the held-out mean reward at each evaluation). The run folder (policy and critic/) is
    locked for the run's life, as a training run's (train/run_folder.py). Joins the
    multi-process run the environment describes (jaxllm/parallel/distributed.py)."""
    start_run()
    cfg = absolute_paths(ppo_config(cfg))
    check_ppo(cfg)
    return joined_run(cfg, log, reset, lambda folder, log: _ppo(cfg, folder, log, stop_after))


def _ppo(cfg: Config, folder: RunFolder, log: Callable[[str], None], stop_after: int | None) -> TrainResult:
    """Build the run's layout once, load the models into it, then the run on the host loop."""
    p, t = cfg.ppo, cfg.train
    layout = run_layout(cfg)  # the post-training runs' one (pairs.py), LoRA-aware
    check_batch(cfg, layout.mesh)
    models, start = load_models(cfg, layout, log)
    prompts = load_prompts(cfg, models.tokenizer)
    log(f"ppo: {len(prompts[0])} train / {len(prompts[1])} held-out prompts from {cfg.posttrain.data}")
    run = PPORun(cfg, layout, models, start, prompts, folder, log, stop_after)
    del start
    run.write_configs()
    per_rollout = p.epochs * (p.rollout_batch // t.batch_size)
    n_params = sum(x.size for x in jax.tree.leaves(run.state["params"]))
    log(f"run {folder.path}: {n_params:,}-param policy + critic on mesh {dict(layout.mesh.shape)}; {t.steps} policy "
        f"updates = {math.ceil(t.steps / per_rollout)} rollouts of {p.rollout_batch} prompts x {p.epochs} epochs of "
        f"{p.rollout_batch // t.batch_size} minibatches")  # fmt: skip
    return run.go()


__all__ = ["Rollout", "build_rollout", "evaluate_policy", "ppo", "ppo_config", "rollout_stats"]
