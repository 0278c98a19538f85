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


# ----------------------------------------------------------------------------- the loop's pieces


def test_rollout_rows_mark_each_sampled_token_as_one_action():
    from jaxllm.generation import Generation
    from jaxllm.posttrain.ppo_loop import build_rollout

    gen = Generation(tokens=[[7, 8], [9, 9, 9]], finish_reasons=["stop", "length"], stops=[[5, 6], []])
    ro = build_rollout([[1, 2, 3], [4]], gen, width=8)
    assert ro.seq.tolist() == [[1, 2, 3, 7, 8, 5, 6, 0], [4, 9, 9, 9, 0, 0, 0, 0]]
    # mask[j] = 1 when the target seq[j + 1] was sampled (the stop string included)
    assert ro.mask.tolist() == [[0, 0, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]]
    assert ro.last.tolist() == [6, 3] and ro.stopped.tolist() == [True, False]
    assert ro.replies == [[7, 8, 5, 6], [9, 9, 9]]


def test_training_log_probs_are_those_the_sampler_drew_from():
    """The policy's log-probs in the loss (one full forward, logits / temperature, padded
    vocabulary rows removed) equal log-softmax of the cached decoder's logits at the
    tokens it sampled: the convention that makes PPO's ratio start at exactly 1."""
    import jax

    import jaxllm
    from jaxllm.generation import decode_step, generate, left_pad, prefill
    from jaxllm.posttrain.ppo import token_logprobs
    from jaxllm.posttrain.ppo_loop import build_rollout

    cfg = jaxllm.load_config("gpt2-124m", ["model.num_layers=2", "model.d_model=32", "model.num_heads=2",
                                           "model.max_seq_len=32", "data.seq_len=32"])  # fmt: skip
    params = jaxllm.init_params(cfg, jax.random.key(1))
    params = jax.tree.map(lambda x: x * 8.0 if x.ndim == 2 else x, params)  # a peaked distribution
    prompts, T, limit = [[3, 4, 5], [6]], 0.7, 200
    gen = generate(cfg, params, prompts, 6, temperature=T, seed=3, vocab_limit=limit)
    ro = build_rollout(prompts, gen, 32)
    from jaxllm.model.decoder import Decoder

    logits = Decoder(cfg.model).apply({"params": params}, jnp.asarray(ro.seq[:, :-1]))
    logp, _ = token_logprobs(logits, jnp.asarray(ro.seq[:, 1:]), T, limit)
    for i, (p, reply) in enumerate(zip(prompts, ro.replies, strict=True)):
        tokens, start = left_pad([p])
        step_logits, cache = prefill(cfg, params, tokens, start, 16)
        for j, tok in enumerate(reply):
            masked = jnp.where(jnp.arange(cfg.model.vocab_size) < limit, step_logits[0] / T, -jnp.inf)
            expected = float(jax.nn.log_softmax(masked)[tok])
            assert float(logp[i, len(p) - 1 + j]) == pytest.approx(expected, abs=2e-4)
            step_logits, cache = decode_step(cfg, params, jnp.array([tok]), cache)
