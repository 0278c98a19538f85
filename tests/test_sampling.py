"""Sampling: every filter keeps exactly the tokens it should, and temperature-1 sampling
follows the softmax (a chi-square test with enough power to reject a wrong one)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.sampling import GenerationError, sample_tokens, sampling_params

N = 4000  # draws: one per row of a batch of identical logits
_sample = jax.jit(sample_tokens, static_argnames=("vocab_limit",))


def _draw(logits: np.ndarray, seed: int = 0, seen=None, vocab_limit=None, **kw) -> np.ndarray:
    batch = np.broadcast_to(np.asarray(logits, np.float32), (N, len(logits)))
    params = sampling_params(N, **kw)
    seen = None if seen is None else jnp.broadcast_to(jnp.asarray(seen), batch.shape)
    return np.asarray(_sample(jnp.asarray(batch), jax.random.key(seed), params, seen, vocab_limit=vocab_limit))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


LOGITS = np.random.default_rng(0).normal(size=40).astype(np.float32) * 2


def test_top_k_emits_only_the_k_most_likely():
    top5 = set(np.argsort(LOGITS)[-5:].tolist())
    drawn = set(_draw(LOGITS, temperature=1.0, top_k=5).tolist())
    assert drawn == top5  # never outside, and each of the five does come up


def test_top_p_emits_only_the_nucleus():
    for temperature, p in ((1.0, 0.5), (1.0, 0.8), (2.0, 0.8)):  # temperature first, then the nucleus
        probs = _softmax(LOGITS.astype(np.float64) / temperature)
        order = np.argsort(-probs)
        mass_before = np.cumsum(probs[order]) - probs[order]
        nucleus = set(order[mass_before < p].tolist())
        drawn = set(_draw(LOGITS, temperature=temperature, top_p=p).tolist())
        assert drawn <= nucleus
        assert len(drawn) >= len(nucleus) - 2  # the nucleus's rarest tokens may not come up in N draws
    assert len(set(_draw(LOGITS, temperature=2.0, top_p=0.8).tolist())) > len(
        set(_draw(LOGITS, temperature=1.0, top_p=0.8).tolist())
    )


def test_top_k_then_top_p_on_the_survivors():
    top8 = np.argsort(LOGITS)[-8:]
    probs = _softmax(LOGITS[top8].astype(np.float64))
    order = np.argsort(-probs)
    keep = set(top8[order[(np.cumsum(probs[order]) - probs[order]) < 0.6]].tolist())
    assert set(_draw(LOGITS, temperature=1.0, top_k=8, top_p=0.6).tolist()) == keep


def test_min_p_drops_tokens_far_below_the_top():
    probs = _softmax(LOGITS.astype(np.float64))
    allowed = set(np.flatnonzero(probs >= 0.2 * probs.max()).tolist())
    assert set(_draw(LOGITS, temperature=1.0, min_p=0.2).tolist()) == allowed


def test_temperature_to_zero_is_greedy():
    rows = np.random.default_rng(1).normal(size=(64, 40)).astype(np.float32)
    greedy = np.argmax(rows, axis=-1)
    for temperature in (0.0, 1e-4):
        params = sampling_params(64, temperature=temperature, top_k=10, top_p=0.9)
        got = np.asarray(_sample(jnp.asarray(rows), jax.random.key(3), params, None))
        np.testing.assert_array_equal(got, greedy)


def test_temperature_one_follows_the_softmax_chi_square():
    logits = np.array([2.0, 1.0, 0.5, 0.0, -0.5, -1.0], np.float32)
    counts = np.bincount(_draw(logits, seed=5, temperature=1.0), minlength=6)

    def chi2(probs: np.ndarray) -> float:
        expected = N * probs
        return float(np.sum((counts - expected) ** 2 / expected))

    critical = 20.515  # chi-square quantile 0.999 with 5 degrees of freedom
    assert chi2(_softmax(logits.astype(np.float64))) < critical
    assert chi2(_softmax(1.2 * logits.astype(np.float64))) > critical  # a 20% temperature error is caught


def test_repetition_penalty_vocab_limit_and_per_row_settings():
    logits = np.array([3.0, 2.0, -1.0, 5.0], np.float32)
    seen = np.array([True, False, True, False])
    # token 3 is beyond the tokenizer's vocabulary; token 0 is penalized 3.0 / 2 = 1.5 < 2.0
    assert set(_draw(logits, seen=seen, vocab_limit=3, temperature=0.0, repetition_penalty=2.0).tolist()) == {1}
    assert set(_draw(logits, vocab_limit=3, temperature=0.0).tolist()) == {0}
    rows = jnp.asarray(np.stack([LOGITS, LOGITS]))
    params = sampling_params(2, temperature=[0.0, 1.0], top_k=[0, 1])
    for seed in range(5):
        got = np.asarray(_sample(rows, jax.random.key(seed), params, None))
        assert got.tolist() == [int(np.argmax(LOGITS))] * 2  # row 0 greedy, row 1 top-1


def test_bad_sampling_settings_are_named():
    with pytest.raises(GenerationError, match="min_p must be in"):
        sampling_params(1, min_p=1.5)
    with pytest.raises(GenerationError, match="repetition_penalty must be > 0"):
        sampling_params(1, repetition_penalty=0.0)
