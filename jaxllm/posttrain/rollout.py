"""PPO's rollouts: sample replies with the KV-cache generator, lay them out as training rows,
and score them with the policy, the frozen reference, the critic and the reward model.

Every process samples and scores the whole rollout alike (the same prompts, seed and
weights), so each holds every row; the jitted forwards split the rows over the run's batch
axes (`Layout.put`) and hand every process the whole answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.errors import DataError
from jaxllm.generation import generate
from jaxllm.model.decoder import Decoder
from jaxllm.parallel.layout import Layout
from jaxllm.posttrain.ppo_models import PPOModels, token_logprobs


@dataclass
class Rollout:
    """Sampled replies as right-padded rows: seq = prompt + reply (+ stop), and per
    target position (seq[:, 1:]) a 1 where the token is a reply token (an action)."""

    seq: np.ndarray  # (N, W) int32
    mask: np.ndarray  # (N, W - 1) float32
    last: np.ndarray  # (N,) int32: index in seq of each reply's last token
    stopped: np.ndarray  # (N,) bool: ended at the stop string / EOS
    replies: list[list[int]]  # the sampled reply tokens (stop included), for decoding


def build_rollout(prompts: list[list[int]], generation, width: int) -> Rollout:
    """Rows of prompt + sampled tokens; a reply of n tokens is n actions."""
    n = len(prompts)
    seq = np.zeros((n, width), np.int32)
    mask = np.zeros((n, width - 1), np.float32)
    last = np.zeros((n,), np.int32)
    replies = []
    for i, (p, toks, stop) in enumerate(zip(prompts, generation.tokens, generation.stops, strict=True)):
        reply = list(toks) + list(stop)
        if not reply:  # max_new_tokens 0 or a full context: nothing was sampled
            raise DataError(f"prompt {i} ({len(p)} tokens) left no room to sample a reply; shorten the prompts")
        row = (list(p) + reply)[:width]
        seq[i, : len(row)] = row
        mask[i, len(p) - 1 : len(row) - 1] = 1.0  # targets seq[j + 1] for j + 1 in the reply
        last[i] = len(row) - 1
        replies.append(reply)
    return Rollout(seq, mask, last, np.array([r == "stop" for r in generation.finish_reasons]), replies)


def pad_rows(prompts: list[list[int]], multiple: int) -> tuple[list[list[int]], int]:
    """Prompts repeated up to a multiple of the data-parallel size; (rows, real count)."""
    n = len(prompts)
    return prompts + [prompts[0]] * ((-n) % multiple), n


def sample(models: PPOModels, params, prompts: list[list[int]], seed: int, layout: Layout) -> Rollout:
    """One reply per prompt at ppo.temperature (nothing else: the log-probs must be those of
    the distribution the tokens were drawn from), stopped at the template's stop or EOS."""
    cfg = models.cfg
    gen = generate(cfg, params, prompts, cfg.ppo.max_new_tokens, temperature=cfg.ppo.temperature, seed=seed,
                   stop_tokens=models.stop_tokens, stop_sequences=models.stop_sequences,
                   vocab_limit=models.vocab_limit, mesh=layout, overflow="stop")  # fmt: skip
    return build_rollout(prompts, gen, cfg.model.max_seq_len)


def make_scorer(models: PPOModels, layout: Layout) -> Callable:
    """Jitted forward of policy, reference, critic and reward model over a rollout:
    (old log-probs, reference log-probs, values, scores) as host arrays."""
    cfg, T = models.cfg, models.cfg.ppo.temperature

    def score(policy, ref, critic, reward, seq, last):
        with layout.activations():
            logp, _ = token_logprobs(cfg.model, policy, seq, T, models.vocab_limit)
            ref_logp, _ = token_logprobs(cfg.model, ref, seq, T, models.vocab_limit)
            values = Decoder(models.critic_cfg.model).apply({"params": critic}, seq[:, :-1])
            rm_values = Decoder(models.reward_cfg.model).apply({"params": reward}, seq)
            scores = jnp.take_along_axis(rm_values, last[:, None], axis=-1)[:, 0]
        return logp, ref_logp, values, scores

    jitted = jax.jit(score, out_shardings=layout.replicated)  # every process gets every row's figures

    def run(policy, critic, rollout: Rollout) -> list[np.ndarray]:
        with jax.set_mesh(layout.mesh):
            b = layout.put({"seq": rollout.seq, "last": rollout.last})
            out = jitted(policy, models.ref_params, critic, models.reward_params, b["seq"], b["last"])
        return [np.asarray(x) for x in jax.device_get(out)]

    return run


def rollout_stats(rollout: Rollout, logp, ref_logp, scores, n: int | None = None) -> dict[str, float]:
    """Mean score, KL to the reference per reply (Σ log π − log π_ref over its tokens),
    reply length and share of replies that stopped, over the first n rows."""
    n = len(scores) if n is None else n
    kl = ((logp - ref_logp) * rollout.mask)[:n].sum(1)
    return {"reward": float(scores[:n].mean()), "kl": float(kl.mean()),
            "reply_tokens": float(rollout.mask[:n].sum(1).mean()),
            "stopped": float(rollout.stopped[:n].mean())}  # fmt: skip
