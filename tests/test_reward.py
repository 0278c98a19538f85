"""Reward model: the scalar head, the Bradley-Terry loss by hand, and `jaxllm reward`
end to end from an SFT checkpoint on the shared preference data."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import pytest

import jaxllm
from jaxllm.generation import GenerationError
from jaxllm.posttrain.reward import bradley_terry_loss
from tests.data_paths import SHARED_DATA

PREFS = SHARED_DATA / "instructions" / "instruction-data-with-preference.json"


def test_bradley_terry_loss_by_hand():
    rc, rr = jnp.array([1.5, -0.5]), jnp.array([0.5, 0.5])
    losses, m = bradley_terry_loss(rc, rr)
    assert losses.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log1p(math.exp(1.0))], rel=1e-6)
    assert m["accuracy"].tolist() == [1.0, 0.0]
    with pytest.raises(jaxllm.ConfigError, match=r"posttrain.reward_center=-1.0 must be >= 0"):
        jaxllm.load_config("gpt2-124m", ["posttrain.reward_center=-1"])
    with_margin, _ = bradley_terry_loss(rc, rr, margin=0.5, center=0.1)  # -log s(d - 0.5) + 0.1 (rc + rr)^2
    assert float(with_margin[0]) == pytest.approx(math.log1p(math.exp(-0.5)) + 0.1 * 2.0**2, rel=1e-6)


def test_scalar_head_scores_every_position_and_cannot_generate():
    cfg = jaxllm.load_config("gpt2-124m", ["model.num_layers=1", "model.d_model=32", "model.num_heads=2",
                                           "model.head=scalar"])  # fmt: skip
    params = jaxllm.init_params(cfg, jax.random.key(0))
    assert "lm_head" not in params and params["score"].shape == (32,)
    values = jaxllm.forward(cfg, params, jnp.zeros((2, 7), jnp.int32))
    assert values.shape == (2, 7) and float(jnp.abs(values).max()) == 0.0  # the score starts at zero
    with pytest.raises(GenerationError, match="reward model"):
        jaxllm.generate(cfg, params, [[1, 2]], 3)
