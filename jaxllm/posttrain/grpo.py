"""GRPO (Shao et al., DeepSeekMath): the math, as pure functions.

Conventions (where implementations differ, these are ours):
- A rollout's rows come in groups: the `group_size` replies to one prompt are consecutive
  rows (row i answers prompt i // group_size). Advantages are measured within a group only,
  so no critic is needed: the group's mean reward is the baseline.
- scale_rewards="group" (GRPO): A_i = (r_i − mean) / (std + 1e-4), std the group's sample
  standard deviation (ddof 1, as TRL computes it); a group whose rewards are all equal gets
  A = 0 on every reply (no signal). scale_rewards="none" (Dr. GRPO, Liu et al.): A_i = r_i −
  mean, which does not up-weight groups whose rewards barely differ.
- Every reply token carries its reply's advantage. Per token:
  l_t = −min(ρ A, clip(ρ, 1 − clip_low, 1 + clip_high) A) + kl_coef · k3_t, with
  ρ = exp(log π − log π_old) and k3_t = exp(log π_ref − log π) − (log π_ref − log π) − 1
  (Schulman's k3: unbiased for KL(π‖π_ref) under the sampled tokens, never negative).
- Log-probs are of the distribution the tokens were sampled from: logits / temperature, as
  in PPO (jaxllm/posttrain/ppo.py).
- The loss is a (sum, count) pair, as every train-step loss (jaxllm/train/step.py), so the
  step's single division by the global count is exact under accumulation and data
  parallelism: "sequence" (GRPO) sums each reply's mean token loss and counts replies with
  tokens; "token" (DAPO) sums token losses and counts reply tokens; "constant" (Dr. GRPO)
  sums token losses and counts rows × max_new_tokens, a fixed divisor that weights no reply
  by its length.

The run (rollouts, rewards, updates, checkpoints) is jaxllm/posttrain/grpo_loop.py.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LOSS_NORMS = ("sequence", "token", "constant")
SCALE_REWARDS = ("group", "none")
STD_EPS = 1e-4


def group_advantages(rewards: jax.Array, group_size: int, scale: str = "group") -> jax.Array:
    """One advantage per row: its reward minus its group's mean, over the group's std
    (+ 1e-4) with scale="group". rewards: (N,), N a multiple of group_size."""
    if scale not in SCALE_REWARDS:
        raise ValueError(f"scale={scale!r}: choose from {', '.join(SCALE_REWARDS)}")
    groups = jnp.asarray(rewards, jnp.float32).reshape(-1, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if scale == "group":
        centred = centred / (groups.std(axis=1, ddof=1, keepdims=True) + STD_EPS)
    return centred.reshape(-1)


def flat_groups(rewards: jax.Array, group_size: int) -> jax.Array:
    """Share of groups whose rewards are all equal: they teach nothing (every advantage 0)."""
    groups = jnp.asarray(rewards).reshape(-1, group_size)
    return jnp.mean(jnp.all(groups == groups[:, :1], axis=1).astype(jnp.float32))


def k3_kl(logprobs: jax.Array, ref_logprobs: jax.Array) -> jax.Array:
    """Per token: exp(ref − logp) − (ref − logp) − 1 (>= 0; its mean under π is KL(π‖π_ref))."""
    d = ref_logprobs - logprobs
    return jnp.exp(d) - d - 1.0


def token_terms(
    logprobs: jax.Array,
    old_logprobs: jax.Array,
    advantages: jax.Array,
    clip_low: float,
    clip_high: float,
    kl_coef: float = 0.0,
    ref_logprobs: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per token (B, T): (loss l_t, 1 where the clip acted, k3 KL (zeros without a reference)).
    advantages (B,) is broadcast over each row's tokens."""
    adv = advantages[:, None]
    ratio = jnp.exp(logprobs - old_logprobs)
    unclipped = ratio * adv
    clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high) * adv
    loss = -jnp.minimum(unclipped, clipped)
    kl = jnp.zeros_like(logprobs) if ref_logprobs is None else k3_kl(logprobs, ref_logprobs)
    if ref_logprobs is not None and kl_coef:
        loss = loss + kl_coef * kl
    return loss, (clipped < unclipped).astype(jnp.float32), kl


def normalise(losses: jax.Array, mask: jax.Array, norm: str, max_new_tokens: int) -> tuple[jax.Array, jax.Array]:
    """(loss sum, count) of per-token `losses` (B, T) over the reply tokens (mask 1), so that
    sum / count over any split of the rows is the objective of the whole batch."""
    masked = losses * mask
    if norm == "sequence":
        n = mask.sum(axis=1)
        return jnp.sum(masked.sum(axis=1) / jnp.maximum(n, 1.0)), jnp.sum((n > 0).astype(jnp.float32))
    if norm == "token":
        return jnp.sum(masked), jnp.sum(mask)
    if norm == "constant":
        return jnp.sum(masked), jnp.asarray(mask.shape[0] * max_new_tokens, jnp.float32)
    raise ValueError(f"loss_norm={norm!r}: choose from {', '.join(LOSS_NORMS)}")
