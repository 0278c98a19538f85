"""PPO's math: GAE against a plain NumPy loop, the clipped objectives and the KL pieces
against hand computation."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.posttrain.ppo import adaptive_kl, gae, policy_loss, token_rewards, value_loss, whiten


def _gae_numpy(r, v, m, gamma, lam):
    B, T = r.shape
    adv = np.zeros((B, T + 1))
    for b in range(B):
        for t in reversed(range(T)):
            next_value = v[b, t + 1] * m[b, t + 1] if t + 1 < T else 0.0
            delta = r[b, t] + gamma * next_value - v[b, t]
            adv[b, t] = (delta + gamma * lam * adv[b, t + 1]) * m[b, t]
    return adv[:, :T]


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 0.9), (1.0, 1.0), (0.9, 0.0)])
def test_gae_equals_a_numpy_loop(gamma, lam):
    rng = np.random.default_rng(0)
    r, v = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
    m = np.ones((3, 7))
    m[1, 4:] = 0  # a shorter response
    m[2, 1:] = 0
    adv, ret = gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), gamma, lam)
    expected = _gae_numpy(r, v, m, gamma, lam)
    np.testing.assert_allclose(np.asarray(adv), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(ret), (expected + v) * m, rtol=1e-6, atol=1e-6)


def test_clipped_policy_and_value_losses_by_hand():
    logp = jnp.array([[0.3, -0.5, 0.0, 9.0]])
    old = jnp.zeros((1, 4))
    adv = jnp.array([[1.0, -1.0, 1.0, 5.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0]])  # the last token is padding
    loss, clip_frac = policy_loss(logp, old, adv, mask, clip=0.2)
    # token 0: ratio e^0.3 = 1.35 > 1.2 with A = 1 -> -1.2; token 1: ratio e^-0.5 = 0.61 < 0.8 with A = -1 ->
    # min(-0.61, -0.8) = -0.8 -> +0.8; token 2: ratio 1 -> -1
    assert float(loss) == pytest.approx((-1.2 + 0.8 - 1.0) / 3, rel=1e-6)
    assert float(clip_frac) == pytest.approx(2 / 3)
    v, v_old, ret = jnp.array([[1.0, 0.0]]), jnp.array([[0.5, 0.0]]), jnp.array([[2.0, 0.1]])
    # token 0: max((1 - 2)^2, (0.7 - 2)^2) / 2 = 0.845; token 1: max(0.01, 0.01) / 2 = 0.005
    assert float(value_loss(v, v_old, ret, jnp.ones((1, 2)), clip=0.2)) == pytest.approx((0.845 + 0.005) / 2)


def test_token_rewards_put_the_score_on_the_last_response_token():
    logp = jnp.array([[-1.0, -2.0, -1.5, 0.0], [-1.0, -1.0, 0.0, 0.0]])
    ref = jnp.array([[-1.5, -2.0, -1.0, 0.0], [-2.0, -1.0, 0.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    rewards, kl = token_rewards(logp, ref, jnp.array([2.0, -1.0]), mask, kl_coef=0.1)
    np.testing.assert_allclose(np.asarray(kl), [[0.5, 0.0, -0.5, 0.0], [1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(np.asarray(rewards), [[-0.05, 0.0, 0.05 + 2.0, 0.0], [-0.1, -1.0, 0.0, 0.0]],
                               rtol=1e-6)  # fmt: skip


def test_whitening_and_the_adaptive_kl_controller():
    x = jnp.array([[1.0, 2.0, 3.0, 100.0]])
    m = jnp.array([[1.0, 1.0, 1.0, 0.0]])
    w = np.asarray(whiten(x, m))
    assert w[0, 3] == 0 and w[0, :3].mean() == pytest.approx(0, abs=1e-6)
    assert w[0, :3].std() == pytest.approx(1, rel=1e-4)
    assert adaptive_kl(0.05, kl=12.0, target=6.0, n_steps=256, horizon=10000) == pytest.approx(
        0.05 * (1 + 0.2 * 256 / 10000))  # fmt: skip
    assert adaptive_kl(0.05, kl=5.4, target=6.0, n_steps=100, horizon=1000) == pytest.approx(0.05 * (1 - 0.1 * 0.1))
    assert not math.isnan(adaptive_kl(0.05, 0.0, 6.0, 1, 1))
