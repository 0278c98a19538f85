"""PPO for language models (RLHF): the math, as pure functions.

Conventions (where implementations differ, these are ours):
- A response of n tokens is n actions. Token t's reward is −kl_coef · (log π(a_t) −
  log π_ref(a_t)) (the per-token KL estimate, policy minus reference log-prob of the
  sampled token); the reward model's score is added to the reward of the last
  response token (the last non-padding one).
- Log-probs are of the distribution the tokens were sampled from: logits / temperature
  (the rollout temperature enters the policy, the old policy and the reference alike).
- γ = 1 and λ = 0.95 by default; advantages are whitened (mean 0, std 1 over the valid
  tokens of the batch); returns = advantages (before whitening) + values.
- Policy loss: −min(ρ A, clip(ρ, 1 − ε, 1 + ε) A) with ρ = exp(log π − log π_old),
  ε = 0.2; value loss: ½ max((V − R)², (clip(V, V_old ± ε_v) − R)²), ε_v = 0.2; both
  averaged over valid tokens.
- Adaptive KL (Ziegler et al.): kl_coef ← kl_coef · (1 + clip(KL / target − 1, ±0.2) ·
  n_steps / horizon).

The rollout loop (sampling with the KV-cache generator, the value head, epochs over
each rollout batch) builds on these.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def token_rewards(
    logprobs: jax.Array, ref_logprobs: jax.Array, scores: jax.Array, mask: jax.Array, kl_coef: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(rewards (B, T), per-token KL (B, T)): KL penalty on every response token, the
    score on the last valid one. mask (B, T) is 1 on response tokens."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    T = mask.shape[1]
    last = T - 1 - jnp.argmax(mask[:, ::-1], axis=1)  # index of the last response token
    rewards = rewards + jax.nn.one_hot(last, T) * scores[:, None] * (mask.sum(1, keepdims=True) > 0)
    return rewards, kl


def gae(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = 1.0, lam: float = 0.95
) -> tuple[jax.Array, jax.Array]:
    """Generalized advantage estimation by a reverse `lax.scan` over time.

    rewards, values, mask: (B, T). A token past the end of its response (mask 0) has no
    value: the step before it bootstraps from 0. Returns (advantages, returns)."""

    def step(carry, xs):
        next_value, next_adv = carry
        r, v, m = xs
        delta = r + gamma * next_value - v
        adv = (delta + gamma * lam * next_adv) * m
        return (v * m, adv), adv

    xs = (rewards.T, values.T, mask.T)  # time-major
    zeros = jnp.zeros(rewards.shape[0], rewards.dtype)
    _, adv = jax.lax.scan(step, (zeros, zeros), xs, reverse=True)
    advantages = adv.T
    return advantages, (advantages + values) * mask


def whiten(x: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """(x − mean) / std over the valid entries (mask 1); invalid entries become 0."""
    n = jnp.maximum(mask.sum(), 1.0)
    mean = (x * mask).sum() / n
    var = (((x - mean) * mask) ** 2).sum() / n
    return (x - mean) * jax.lax.rsqrt(var + eps) * mask


def policy_loss(
    logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, mask: jax.Array, clip: float = 0.2
) -> tuple[jax.Array, jax.Array]:
    """(mean clipped surrogate loss over valid tokens, share of tokens where clipping acted)."""
    ratio = jnp.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1 - clip, 1 + clip) * advantages
    losses = -jnp.minimum(unclipped, clipped)
    n = jnp.maximum(mask.sum(), 1.0)
    clip_frac = ((clipped < unclipped).astype(jnp.float32) * mask).sum() / n
    return (losses * mask).sum() / n, clip_frac


def value_loss(
    values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array, clip: float = 0.2
) -> jax.Array:
    """Mean over valid tokens of ½ max((V − R)², (clip(V, V_old ± clip) − R)²)."""
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    losses = 0.5 * jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def adaptive_kl(kl_coef: float, kl: float, target: float, n_steps: int, horizon: int) -> float:
    """The proportional KL controller: raise the coefficient when KL is above target."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
