"""A PPO run on the host loop (jaxllm/train/loop.py): one advance is one rollout and its
minibatch updates of policy and critic; evaluation and checkpoints are the loop's cadence
hooks, and a signal agreed by every process saves both models and stops.

State between rollouts, saved with each checkpoint beside the policy's and the critic's
train states: the prompt order, the KL coefficient, the iteration and the score
normalisation, so a stopped run resumes at a rollout boundary exactly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config, save_config, to_dict
from jaxllm.errors import DataError
from jaxllm.parallel.layout import Layout
from jaxllm.posttrain import ppo as ppo_math
from jaxllm.posttrain.pairs import BatchCycle
from jaxllm.posttrain.ppo_models import PPOModels, critic_loss_fn, policy_loss_fn
from jaxllm.posttrain.rollout import make_scorer, pad_rows, rollout_stats, sample
from jaxllm.posttrain.rollout_run import RolloutRun
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.loop import HostLoop, writer_for
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.run_folder import RunFolder
from jaxllm.train.state import abstract_state, init_state
from jaxllm.train.step import make_train_step
from jaxllm.train.task import TrainResult

_UPDATE_KEYS = ("clip_frac", "approx_kl", "entropy", "grad_norm")


class PPORun(RolloutRun):
    """Policy and critic, their optimizers, checkpoints and steps, and the rollout state."""

    def __init__(self, cfg: Config, layout: Layout, models: PPOModels, start: dict, prompts: tuple[list, list],
                 folder: RunFolder, log: Callable[[str], None], stop_after: int | None):  # fmt: skip
        p, t = cfg.ppo, cfg.train
        self.cfg, self.ccfg, self.layout, self.models, self.folder, self.log = (
            cfg, models.critic_cfg, layout, models, folder, log)  # fmt: skip
        self.train_prompts, self.val_prompts = prompts
        self.tx, self.ctx = make_optimizer(cfg.optimizer, cfg.model), make_optimizer(self.ccfg.optimizer)
        self.clayout = layout.for_model(self.ccfg.model, self.ctx)  # the critic's state: same mesh and rules
        keep = {"keep": t.keep_checkpoints, "keep_every": t.keep_every}
        self.ckpt = Checkpointer(folder.path / "checkpoints", **keep)
        self.cckpt = Checkpointer(Path(self.ccfg.train.out_dir) / "checkpoints", **keep)
        self.prompts = BatchCycle(self.train_prompts, t.seed)
        self.scorer = make_scorer(models, layout)  # one jitted forward, for the normalisation and every rollout
        self.kl_coef, self.iteration, self.norm = p.kl_coef, 0, (0.0, 1.0)
        self.step0 = self.restore(start)
        policy_loss = policy_loss_fn(p.temperature, models.vocab_limit, p.clip)
        self.policy_step = make_train_step(cfg, layout, self.tx, policy_loss)
        self.critic_step = make_train_step(self.ccfg, self.clayout, self.ctx, critic_loss_fn(p.value_clip))
        last_step = min(t.steps, stop_after) if stop_after is not None else t.steps
        self.loop = HostLoop(self.step0, last_step)
        self.writer = writer_for(folder.path, t.tensorboard, cfg, self.log)  # + W&B when train.wandb is set
        self.result = TrainResult(folder.path, self.step0, {}, {})
        self.saved_at: int | None = None
        self.gae = jax.jit(ppo_math.gae, static_argnums=(3, 4))

    def restore(self, start: dict) -> int:
        """Resume both models from checkpoints of the same step, or start fresh; the step."""
        cfg, ccfg, folder = self.cfg, self.ccfg, self.folder
        restored = self.ckpt.restore_latest(abstract_state(cfg, self.tx, self.layout.state), self.log, to_dict(cfg),
                                            folder.quarantine)  # fmt: skip
        cabstract = abstract_state(ccfg, self.ctx, self.clayout.state)
        crestored = self.cckpt.restore_latest(cabstract, self.log, to_dict(ccfg), folder.quarantine / "critic") \
            if restored else None  # fmt: skip
        if restored is not None and crestored is not None and crestored[0] == restored[0]:
            step0, self.state, data_state, _ = restored
            self.cstate = crestored[1]
            self.prompts.set_state(data_state["prompts"])
            self.kl_coef, self.iteration = float(data_state["kl_coef"]), int(data_state["iteration"])
            self.norm = (float(data_state["score_mean"]), float(data_state["score_std"]))
            self.log(f"resumed from {self.ckpt.directory}/{step0} (step {step0}, iteration {self.iteration}, "
                     f"kl_coef {self.kl_coef:.4g})")  # fmt: skip
            return step0
        if restored is not None:
            raise DataError(f"{folder.path}: the policy checkpoint (step {restored[0]}) has no critic checkpoint of "
                            f"the same step in {self.cckpt.directory}; start over with `jaxllm ppo ... --reset` (it "
                            "archives the old run) or give a new train.out_dir")  # fmt: skip
        self.state = init_state(cfg, self.layout, self.tx, start["policy"])  # new buffers: the reference keeps its own
        if cfg.ppo.normalize_reward:
            self.norm = self.score_normalisation(start["critic"])
        # The critic keeps the reward model's features but not its head: that was trained at the
        # last token only, and its values elsewhere are far off (several σ), further than the
        # clipped value loss lets a value move per rollout. Zero is the mean normalised return.
        critic_start = {**start["critic"], "score": jnp.zeros_like(start["critic"]["score"])}
        self.cstate = init_state(ccfg, self.clayout, self.ctx, critic_start)
        return 0

    def score_normalisation(self, critic_params) -> tuple[float, float]:
        """(μ, σ) of the reward model's scores of the starting policy's replies to one rollout batch."""
        p, t = self.cfg.ppo, self.cfg.train
        picks = np.random.default_rng(t.seed).choice(len(self.train_prompts), p.rollout_batch)
        ro = sample(self.models, self.state["params"], [self.train_prompts[i] for i in picks], t.seed + 7, self.layout)
        scores = self.scorer(self.state["params"], critic_params, ro)[3] - p.missing_stop_penalty * ~ro.stopped
        norm = (float(scores.mean()), float(scores.std()) + 1e-6)
        self.log(f"ppo: reward-model scores of the starting policy: mean {norm[0]:.4f}, std {norm[1]:.4f}; "
                 "the policy learns from (score - mean) / std")  # fmt: skip
        return norm

    def write_configs(self) -> None:
        self.folder.write_config(self.cfg)  # only now: the config validated and the checkpoints restored
        if self.folder.primary:
            Path(self.ccfg.train.out_dir).mkdir(parents=True, exist_ok=True)
            save_config(self.ccfg, Path(self.ccfg.train.out_dir) / "config.yaml")  # `load_run RUN_DIR/critic` works

    def rollout(self, index: int) -> tuple[float, dict, dict]:
        """Sample, score and compute advantages for the next `rollout_batch` prompts:
        (seconds spent sampling, the training arrays, rollout statistics)."""
        p, t = self.cfg.ppo, self.cfg.train
        t0 = time.perf_counter()
        batch_prompts = [next(self.prompts) for _ in range(p.rollout_batch)]
        ro = sample(self.models, self.state["params"], batch_prompts, t.seed * 7919 + index, self.layout)
        t_sample = time.perf_counter() - t0
        logp, ref_logp, values, scores = self.scorer(self.state["params"], self.cstate["params"], ro)
        scores = scores - p.missing_stop_penalty * ~ro.stopped
        norm = (scores - self.norm[0]) / self.norm[1]
        rewards, _ = ppo_math.token_rewards(logp, ref_logp, norm, ro.mask, self.kl_coef)
        adv, returns = self.gae(rewards, values * ro.mask, ro.mask, p.gamma, p.lam)
        adv = ppo_math.whiten(adv, ro.mask)
        data = {"seq": ro.seq, "mask": ro.mask, "old_logprobs": logp, "advantages": np.asarray(adv),
                "old_values": values * ro.mask, "returns": np.asarray(returns)}  # fmt: skip
        return t_sample, data, rollout_stats(ro, logp, ref_logp, scores)

    def minibatches(self, data: dict, index: int) -> Iterator[dict]:
        """ppo.epochs shuffled passes over a rollout in minibatches of train.batch_size rows,
        placed over the batch axes (every process holds the whole rollout)."""
        p, t = self.cfg.ppo, self.cfg.train
        rng = np.random.default_rng((t.seed, index))
        for _ in range(p.epochs):
            order = rng.permutation(p.rollout_batch)
            for i in range(0, p.rollout_batch, t.batch_size):
                yield self.layout.put({k: v[order[i : i + t.batch_size]] for k, v in data.items()})

    def warm_up_critic(self) -> None:
        """ppo.critic_warmup rollouts in which the critic alone fits the starting policy's
        returns, without the value clip (nothing to stay near yet)."""
        p = self.cfg.ppo
        if not p.critic_warmup:
            return
        warmup_step = make_train_step(self.ccfg, self.clayout, self.ctx, critic_loss_fn(math.inf))
        for k in range(p.critic_warmup):
            _, data, stats = self.rollout(1_000_000 + k)
            losses = []
            for mb in self.minibatches(data, 1_000_000 + k):
                self.cstate, m = warmup_step(self.cstate, mb)
                losses.append(float(jax.device_get(m["loss"])))
            self.writer.write(0, "critic_warmup", {"rollout": k + 1, "value_loss": float(np.mean(losses))})
            self.log(f"critic warmup {k + 1}/{p.critic_warmup}: value loss {np.mean(losses):.4f} "
                     f"(reward {stats['reward']:.3f})")  # fmt: skip

    def advance(self, step: int) -> tuple[int, Any]:
        """One rollout and its policy/critic updates (up to the last step): the new step."""
        p, last = self.cfg.ppo, self.loop.last_step
        t0 = time.perf_counter()
        t_sample, data, stats = self.rollout(self.iteration)
        sums: dict[str, float] = {}
        start, pm = step, {}
        for mb in self.minibatches(data, self.iteration):
            if step >= last:
                break
            self.state, pm = self.policy_step(self.state, mb)
            self.cstate, cm = self.critic_step(self.cstate, mb)
            step += 1
            pm, cm = jax.device_get((pm, cm))
            if not (bool(pm["finite"]) and bool(cm["finite"])):
                self.log(f"warning: non-finite PPO loss at step {step}; that update was skipped")
            got = {"policy_loss": pm["loss"], **{k: pm[k] for k in _UPDATE_KEYS}, "value_loss": cm["loss"],
                   "value_error": cm["value_error"]}  # fmt: skip
            for k, v in got.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        if p.adaptive_kl:
            self.kl_coef = ppo_math.adaptive_kl(self.kl_coef, stats["kl"], p.kl_target, p.rollout_batch, p.kl_horizon)
        self.iteration += 1
        updates = max(step - start, 1)
        values = {**stats, **{k: v / updates for k, v in sums.items()}, "kl_coef": self.kl_coef,
                  "lr": float(pm["lr"]), "iteration": self.iteration, "rollout_s": t_sample,
                  "iteration_s": time.perf_counter() - t0}  # fmt: skip
        self.log_iteration(step, values)
        return step, None

    def log_iteration(self, step: int, values: dict) -> None:
        self.writer.write(step, "train", values)
        self.result.train_losses[step] = values["policy_loss"]
        bar, eta = self.loop.progress(step)
        self.log(f"{bar} step {step}/{self.loop.last_step} | rollout {self.iteration} | "
                 f"reward {values['reward']:.3f} | KL {values['kl']:.3f} (coef {self.kl_coef:.3g}) | "
                 f"policy {values['policy_loss']:.4f} | "
                 f"value {values['value_loss']:.4f} | clip {values['clip_frac']:.2f} | "
                 f"{values['reply_tokens']:.1f} tok/reply | {values['iteration_s']:.1f} s/rollout | "
                 f"ETA {eta}")  # fmt: skip

    def evaluate(self, step: int) -> None:
        """Held-out reward, KL to the reference, reply length and stop share (the same draws
        at every evaluation)."""
        p, t = self.cfg.ppo, self.cfg.train
        if not self.val_prompts:
            return
        rows, n = pad_rows(self.val_prompts, self.layout.data_parallel)
        ro = sample(self.models, self.state["params"], rows, t.seed + 1_000_003, self.layout)
        logp, ref_logp, _, scores = self.scorer(self.state["params"], self.cstate["params"], ro)
        stats = rollout_stats(ro, logp, ref_logp, scores - p.missing_stop_penalty * ~ro.stopped, n)
        self.writer.write(step, "val", stats)
        self.result.val_losses[step] = stats["reward"]
        self.log(f"step {step}: held-out reward {stats['reward']:.4f} | KL {stats['kl']:.3f} | "
                 f"{stats['reply_tokens']:.1f} tokens/reply | stopped {stats['stopped']:.0%}")  # fmt: skip

    def save(self, step: int) -> None:
        data = {"prompts": self.prompts.get_state(), "kl_coef": self.kl_coef, "iteration": self.iteration,
                "score_mean": self.norm[0], "score_std": self.norm[1]}  # fmt: skip
        self.ckpt.save(step, self.state, data, to_dict(self.cfg), force=True)
        self.cckpt.save(step, self.cstate, data, to_dict(self.ccfg), force=True)
        self.saved_at = step

    def checkpointers(self) -> list[Checkpointer]:
        return [self.ckpt, self.cckpt]

    def first(self) -> None:
        """Evaluate the start and warm the critic up."""
        self.evaluate(0)
        self.warm_up_critic()

    def finished(self) -> str:
        return (f"policy checkpoints in {self.ckpt.directory}, critic in {self.cckpt.directory}, metrics in "
                f"{self.folder.path / 'metrics.jsonl'}")  # fmt: skip
