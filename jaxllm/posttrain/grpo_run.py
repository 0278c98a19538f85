"""A GRPO run on the host loop (jaxllm/train/loop.py): one advance is one rollout (every
prompt answered group_size times) and its minibatch updates of the policy; evaluation and
checkpoints are the loop's cadence hooks, and a signal agreed by every process saves and stops.

State between rollouts, saved with each checkpoint beside the policy's train state: the
prompt order and the iteration (which seeds the rollout's sampling and its minibatch
order), so a stopped run resumes at a rollout boundary exactly.

Metrics: a "train" row per policy update (policy_loss, clip fraction, k3 KL per token, mean
ratio, gradient norm: figures that must not depend on how the run is split over processes);
the row of a rollout's last update also holds the rollout's figures (reward, its std, the
share of groups with all-equal rewards, rollout_kl, reply length, stop share, seconds), so
`jaxllm plot` draws reward, KL, learning rate and s / iteration as for PPO. A "val" row per
evaluation: greedy replies to the held-out prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config, to_dict
from jaxllm.generation import generate
from jaxllm.parallel.layout import Layout
from jaxllm.posttrain import grpo as grpo_math
from jaxllm.posttrain.pairs import BatchCycle
from jaxllm.posttrain.ppo_models import token_logprobs
from jaxllm.posttrain.rewards import PromptItem, Rewards
from jaxllm.posttrain.rollout import Rollout, build_rollout, pad_rows
from jaxllm.posttrain.rollout_run import RolloutRun
from jaxllm.train.adapters import save_adapters
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.loop import HostLoop, writer_for
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.run_folder import RunFolder
from jaxllm.train.state import abstract_state, init_state
from jaxllm.train.step import make_train_step
from jaxllm.train.task import TrainResult


@dataclass
class GRPOModels:
    """What the run holds fixed: its config, the frozen reference (None when grpo.kl_coef is
    0: never read, so never kept), the tokenizer, the sampler's limits and the rewards."""

    cfg: Config
    ref_params: dict | None
    tokenizer: object
    vocab_limit: int
    stop_tokens: list[int]
    stop_sequences: list[list[int]]
    rewards: Rewards


def grpo_loss_fn(cfg: Config, vocab_limit: int) -> Callable:
    """The policy's train-step loss: (normalised sum of token losses, its count, sums of reply
    tokens, clipped tokens, k3 KL and ratio). The aux sums are token sums, so the host reads
    shares per token as aux / reply_tokens, whatever grpo.loss_norm's count is."""
    g = cfg.grpo

    def loss_fn(cfg, params, batch, rng, pipeline):
        logp, _ = token_logprobs(cfg.model, params, batch["seq"], g.temperature, vocab_limit)
        old = batch["old_logprobs"]
        losses, clipped, kl = grpo_math.token_terms(
            logp, old, batch["advantages"], g.clip_low, g.clip_high, g.kl_coef, batch.get("ref_logprobs")
        )
        m = batch["mask"]
        loss_sum, count = grpo_math.normalise(losses, m, g.loss_norm, g.max_new_tokens)
        aux = {"reply_tokens": jnp.sum(m), "clipped": jnp.sum(clipped * m), "kl": jnp.sum(kl * m),
               "ratio": jnp.sum(jnp.exp(logp - old) * m)}  # fmt: skip
        return loss_sum, count, aux

    return loss_fn


def make_logprob_scorer(models: GRPOModels, layout: Layout) -> Callable:
    """Jitted forward of the policy (and the reference, when there is one) over a rollout:
    (log-probs, reference log-probs or None) as host arrays every process holds whole."""
    cfg, T = models.cfg, models.cfg.grpo.temperature

    def score(policy, ref, seq):
        with layout.activations():
            logp, _ = token_logprobs(cfg.model, policy, seq, T, models.vocab_limit)
            ref_logp = None if ref is None else token_logprobs(cfg.model, ref, seq, T, models.vocab_limit)[0]
        return logp, ref_logp

    jitted = jax.jit(score, out_shardings=layout.replicated)

    def run(policy, rollout: Rollout) -> tuple[np.ndarray, np.ndarray | None]:
        with jax.set_mesh(layout.mesh):
            logp, ref_logp = jax.device_get(jitted(policy, models.ref_params, layout.put(rollout.seq)))
        return np.asarray(logp), None if ref_logp is None else np.asarray(ref_logp)

    return run


def mean_k3(logp: np.ndarray, ref_logp: np.ndarray, mask: np.ndarray) -> float:
    """Mean k3 KL to the reference per reply token (what the loss penalises)."""
    return float((np.asarray(grpo_math.k3_kl(logp, ref_logp)) * mask).sum() / max(mask.sum(), 1.0))


class GRPORun(RolloutRun):
    """The policy, its optimizer, checkpoints and step, and the rollout state."""

    def __init__(self, cfg: Config, layout: Layout, models: GRPOModels, start: dict,
                 prompts: tuple[list[PromptItem], list[PromptItem]], folder: RunFolder, log: Callable[[str], None],
                 stop_after: int | None):  # fmt: skip
        t = cfg.train
        self.cfg, self.layout, self.models, self.folder, self.log = cfg, layout, models, folder, log
        self.train_items, self.val_items = prompts
        self.rows = cfg.grpo.prompts_per_rollout * cfg.grpo.group_size
        self.tx = make_optimizer(cfg.optimizer, cfg.model)  # of the adapters alone under model.lora
        self.ckpt = Checkpointer(folder.path / "checkpoints", keep=t.keep_checkpoints, keep_every=t.keep_every)
        self.prompts = BatchCycle(self.train_items, t.seed)
        self.iteration = 0
        self.step0 = self.restore(start)
        self.scorer = make_logprob_scorer(models, layout)
        self.policy_step = make_train_step(cfg, layout, self.tx, grpo_loss_fn(cfg, models.vocab_limit))
        self.loop = HostLoop(self.step0, t.steps if stop_after is None else min(t.steps, stop_after))
        self.writer = writer_for(folder.path, t.tensorboard, cfg, self.log)  # + W&B when train.wandb is set
        self.result = TrainResult(folder.path, self.step0, {}, {})
        self.saved_at: int | None = None

    def restore(self, start: dict) -> int:
        """Resume from the newest checkpoint (its prompt order and iteration too), or start fresh; the step."""
        restored = self.ckpt.restore_latest(abstract_state(self.cfg, self.tx, self.layout.state), self.log,
                                            to_dict(self.cfg), self.folder.quarantine)  # fmt: skip
        if restored is None:
            self.state = init_state(self.cfg, self.layout, self.tx, start)  # new buffers: the reference keeps its own
            return 0
        step0, self.state, data_state, _ = restored
        self.prompts.set_state(data_state["prompts"])
        self.iteration = int(data_state["iteration"])
        self.log(f"resumed from {self.ckpt.directory}/{step0} (step {step0}, iteration {self.iteration})")
        return step0

    def sample(self, prompts: list[list[int]], seed: int, temperature: float) -> Rollout:
        """One reply per prompt (rows of one prompt differ: each row draws from its own key),
        at `temperature` and nothing else, stopped at the template's stop string or EOS."""
        m = self.models
        gen = generate(self.cfg, self.state["params"], prompts, self.cfg.grpo.max_new_tokens, temperature=temperature,
                       seed=seed, stop_tokens=m.stop_tokens, stop_sequences=m.stop_sequences,
                       vocab_limit=m.vocab_limit, mesh=self.layout, overflow="stop")  # fmt: skip
        return build_rollout(prompts, gen, self.cfg.model.max_seq_len)

    def rollout(self, index: int) -> tuple[float, dict, dict]:
        """Sample group_size replies to each of the next prompts_per_rollout prompts, reward
        them and measure their advantages: (seconds spent sampling, training arrays, statistics)."""
        g, t = self.cfg.grpo, self.cfg.train
        t0 = time.perf_counter()
        rows = [item for item in (next(self.prompts) for _ in range(g.prompts_per_rollout))
                for _ in range(g.group_size)]  # fmt: skip
        ro = self.sample([r.ids for r in rows], t.seed * 7919 + index, g.temperature)
        t_sample = time.perf_counter() - t0
        logp, ref_logp = self.scorer(self.state["params"], ro)
        rewards = self.models.rewards([r.record for r in rows], ro) - g.missing_stop_penalty * ~ro.stopped
        adv = np.asarray(grpo_math.group_advantages(rewards, g.group_size, g.scale_rewards))
        data = {"seq": ro.seq, "mask": ro.mask, "old_logprobs": logp, "advantages": adv}
        stats = {"reward": float(rewards.mean()), "reward_std": float(rewards.std()),
                 "flat_groups": float(grpo_math.flat_groups(rewards, g.group_size)),
                 "reply_tokens": float(ro.mask.sum(1).mean()), "stopped": float(ro.stopped.mean())}  # fmt: skip
        if ref_logp is not None:
            data["ref_logprobs"] = ref_logp
            stats["rollout_kl"] = mean_k3(logp, ref_logp, ro.mask)
        return t_sample, data, stats

    def minibatches(self, data: dict, index: int) -> Iterator[dict]:
        """grpo.epochs shuffled passes over a rollout's rows, train.batch_size rows at a time,
        placed over the batch axes (every process holds the whole rollout)."""
        size = self.cfg.train.batch_size
        rng = np.random.default_rng((self.cfg.train.seed, index))
        orders = [rng.permutation(self.rows) for _ in range(self.cfg.grpo.epochs)]
        for rows in (order[i : i + size] for order in orders for i in range(0, self.rows, size)):
            yield self.layout.put({k: v[rows] for k, v in data.items()})

    def advance(self, step: int) -> tuple[int, Any]:
        """One rollout and its policy updates (up to the last step): the new step."""
        t0 = time.perf_counter()
        t_sample, data, stats = self.rollout(self.iteration)
        updates: list[tuple[int, dict]] = []
        for mb in self.minibatches(data, self.iteration):
            if step >= self.loop.last_step:
                break
            self.state, m = self.policy_step(self.state, mb)
            step += 1
            m = jax.device_get(m)
            if not bool(m["finite"]):
                self.log(f"warning: non-finite GRPO loss at step {step}; that update was skipped")
            tokens = max(float(m["reply_tokens"]), 1e-12)
            row = {"policy_loss": float(m["loss"]), "clip_frac": float(m["clipped"]) / tokens,
                   "ratio": float(m["ratio"]) / tokens, "grad_norm": float(m["grad_norm"]),
                   "lr": float(m["lr"])}  # fmt: skip
            if "ref_logprobs" in data:
                row["kl"] = float(m["kl"]) / tokens
            self.result.train_losses[step] = row["policy_loss"]
            updates.append((step, row))
        self.iteration += 1
        loss, clip = (float(np.mean([row[k] for _, row in updates])) for k in ("policy_loss", "clip_frac"))
        stats.update({"iteration": self.iteration, "rollout_s": t_sample, "iteration_s": time.perf_counter() - t0})
        for at, row in updates:  # the rollout's figures join its last update's row
            self.writer.write(at, "train", {**row, **stats} if at == step else row)
        bar, eta = self.loop.progress(step)
        kl = f"KL {stats['rollout_kl']:.4f} | " if "rollout_kl" in stats else ""
        self.log(f"{bar} step {step}/{self.loop.last_step} | rollout {self.iteration} | reward {stats['reward']:.3f} | "
                 f"flat groups {stats['flat_groups']:.0%} | {kl}policy {loss:.4f} | clip {clip:.2f} | "
                 f"{stats['reply_tokens']:.1f} tok/reply | "
                 f"{stats['iteration_s']:.1f} s/rollout | ETA {eta}")  # fmt: skip
        return step, None

    def evaluate(self, step: int) -> None:
        """Greedy replies to the held-out prompts: their mean reward (exact match for
        grpo.reward=exact_match), KL to the reference (k3 per token), length and stop share."""
        if not self.val_items:
            return
        items, n = pad_rows(self.val_items, self.layout.data_parallel)
        ro = self.sample([it.ids for it in items], 0, 0.0)
        rewards = self.models.rewards([it.record for it in items], ro)[:n]
        stats = {"reward": float(rewards.mean()), "reply_tokens": float(ro.mask[:n].sum(1).mean()),
                 "stopped": float(ro.stopped[:n].mean())}  # fmt: skip
        if self.models.ref_params is not None:
            logp, ref_logp = self.scorer(self.state["params"], ro)
            stats["kl"] = mean_k3(logp[:n], ref_logp[:n], ro.mask[:n])
        exact = not self.cfg.grpo.reward_from and self.cfg.grpo.reward == "exact_match"
        self.writer.write(step, "val", stats)
        self.result.val_losses[step] = stats["reward"]
        kl = f" | KL {stats['kl']:.4f}" if "kl" in stats else ""
        self.log(f"step {step}: held-out {'exact match' if exact else 'reward'} {stats['reward']:.4f}{kl} | "
                 f"{stats['reply_tokens']:.1f} tokens/reply | stopped {stats['stopped']:.0%}")  # fmt: skip

    def save(self, step: int) -> None:
        data = {"prompts": self.prompts.get_state(), "iteration": self.iteration}
        self.ckpt.save(step, self.state, data, to_dict(self.cfg), force=True)
        if self.cfg.model.lora.rank:  # the adapters on their own too, as a LoRA training run saves them
            save_adapters(self.cfg, self.state["params"], self.folder.path, step, self.layout)
        self.saved_at = step

    def checkpointers(self) -> list[Checkpointer]:
        return [self.ckpt]
