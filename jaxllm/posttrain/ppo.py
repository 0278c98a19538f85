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

The training loop (rollouts with the KV-cache generator, the critic, epochs over each
rollout batch) is jaxllm/posttrain/ppo_loop.py.
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


def token_logprobs(
    logits: jax.Array, targets: jax.Array, temperature: float = 1.0, vocab_limit: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """(log p(target) (B, T), entropy (B, T)) under softmax(logits / temperature), with ids
    >= vocab_limit (a padded vocabulary's unused rows) removed, exactly as the rollout
    sampler drew them."""
    logits = logits.astype(jnp.float32)
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits = jnp.where(jnp.arange(logits.shape[-1]) < vocab_limit, logits, -1e9)  # finite: no NaN gradients
    logp = jax.nn.log_softmax(logits / temperature, axis=-1)
    token = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return token, entropy


def policy_loss_terms(
    logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, clip: float = 0.2
) -> tuple[jax.Array, jax.Array]:
    """Per token: (clipped surrogate loss −min(ρA, clip(ρ)A), 1 where clipping acted)."""
    ratio = jnp.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = jnp.clip(ratio, 1 - clip, 1 + clip) * advantages
    return -jnp.minimum(unclipped, clipped), (clipped < unclipped).astype(jnp.float32)


def policy_loss(
    logprobs: jax.Array, old_logprobs: jax.Array, advantages: jax.Array, mask: jax.Array, clip: float = 0.2
) -> tuple[jax.Array, jax.Array]:
    """(mean clipped surrogate loss over valid tokens, share of tokens where clipping acted)."""
    losses, clipped = policy_loss_terms(logprobs, old_logprobs, advantages, clip)
    n = jnp.maximum(mask.sum(), 1.0)
    return (losses * mask).sum() / n, (clipped * mask).sum() / n


def value_loss_terms(values: jax.Array, old_values: jax.Array, returns: jax.Array, clip: float = 0.2) -> jax.Array:
    """Per token: ½ max((V − R)², (clip(V, V_old ± clip) − R)²)."""
    clipped = old_values + jnp.clip(values - old_values, -clip, clip)
    return 0.5 * jnp.maximum((values - returns) ** 2, (clipped - returns) ** 2)


def value_loss(
    values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array, clip: float = 0.2
) -> jax.Array:
    """Mean over valid tokens of ½ max((V − R)², (clip(V, V_old ± clip) − R)²)."""
    losses = value_loss_terms(values, old_values, returns, clip)
    return (losses * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def adaptive_kl(kl_coef: float, kl: float, target: float, n_steps: int, horizon: int) -> float:
    """The proportional KL controller: raise the coefficient when KL is above target."""
    error = min(max(kl / target - 1.0, -0.2), 0.2)
    return kl_coef * (1.0 + error * n_steps / horizon)
