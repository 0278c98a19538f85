"""Pipeline parallelism: the pipelined model equals the plain model, loss and every gradient,
on 8 CPU devices; a wrong stage shift is caught; checkpoints move between pipeline degrees."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.config import ConfigError, MeshConfig, ModelConfig
from jaxllm.model import pipelined as pipeline_mod
from jaxllm.model.api import cross_entropy
from jaxllm.model.decoder import Decoder
from jaxllm.model.pipelined import bubble_fraction
from tests.sharded import max_rel_error, on_mesh

CFG = ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, num_layers=4, num_heads=4, num_kv_heads=2, d_ff=64,
                  norm="rmsnorm", position="rope", mlp="swiglu", use_bias=False, remat="full")  # fmt: skip
B, T = 8, 16
RNG = np.random.default_rng(0)
TOKENS = jnp.asarray(RNG.integers(0, 64, (B, T)), jnp.int32)
TARGETS = jnp.asarray(RNG.integers(0, 64, (B, T)), jnp.int32)
SEGMENTS = jnp.asarray(np.repeat([[1] * 9 + [2] * 7], B, 0), jnp.int32)  # two packed documents per row
POSITIONS = jnp.asarray(np.repeat([list(range(9)) + list(range(7))], B, 0), jnp.int32)


def loss_and_grads(params, mesh_cfg=None, pipe=None):
    def mean_loss(p):
        logits = Decoder(CFG, pipeline=pipe).apply({"params": p}, TOKENS, POSITIONS, SEGMENTS, True)
        s, c = cross_entropy(logits, TARGETS)
        return s / c

    if mesh_cfg is None:
        return jax.jit(jax.value_and_grad(mean_loss))(params)
    (loss, grads), hlo = on_mesh(jax.value_and_grad(mean_loss), params, CFG, mesh_cfg)
    return loss, grads, hlo


@pytest.fixture(scope="module")
def reference():
    """Weights perturbed well away from init, so every layer visibly shapes the output
    (at std 0.02 the residual stream hides the layers, and a wrong schedule barely shows)."""
    from tests.parity.common import random_params

    params = random_params(CFG)
    return params, loss_and_grads(params)


CASES = {  # mesh, (stages, repeats, microbatches)
    "data2-tensor2-pipeline2": (MeshConfig(data=2, tensor=2, pipeline=2), (2, 1, 4)),
    "pipeline4-data2": (MeshConfig(data=2, pipeline=4), (4, 1, 4)),
    "pipeline2-fsdp4": (MeshConfig(data=1, fsdp=4, pipeline=2), (2, 1, 2)),
    "circular-R2": (MeshConfig(data=4, pipeline=2), (2, 2, 4)),
}


@pytest.mark.parametrize("case", CASES)
def test_pipelined_loss_and_every_gradient_equal_the_plain_model(case, reference):
    params, (ref_loss, ref_grads) = reference
    loss, grads, hlo = loss_and_grads(params, *CASES[case])
    assert abs(float(loss) / float(ref_loss) - 1) < 1e-5
    assert max_rel_error(grads, ref_grads) < 1e-5
    assert "collective-permute" in hlo, "the stage shift must lower to a collective-permute"


@pytest.mark.parametrize("shift", [0, 2])
def test_an_off_by_one_stage_shift_is_caught(shift, reference, monkeypatch):
    params, (ref_loss, ref_grads) = reference
    monkeypatch.setattr(pipeline_mod, "shift_stages", lambda y: jnp.roll(y, shift, axis=0))
    loss, grads, _ = loss_and_grads(params, *CASES["pipeline4-data2"])
    assert abs(float(loss) / float(ref_loss) - 1) > 1e-2
    assert max_rel_error(grads, ref_grads) > 1e-1


def test_bubble_fraction_and_validation():
    assert bubble_fraction(4, 8) == pytest.approx(3 / 11)
    assert bubble_fraction(4, 8, repeats=2) == pytest.approx(3 / 19)
    base = ["model.num_layers=4", "model.dropout=0", "mesh.pipeline=2"]
    with pytest.raises(ConfigError, match="not divisible by mesh.pipeline x pipeline.repeats"):
        jaxllm.load_config("shakespeare-char", [*base, "pipeline.repeats=4", "train.microbatches=2"])
    with pytest.raises(ConfigError, match="train.microbatches=3 is not divisible by mesh.pipeline=2"):
        jaxllm.load_config("shakespeare-char", [*base, "train.microbatches=3"])
    with pytest.raises(ConfigError, match="dropout"):
        jaxllm.load_config("shakespeare-char", ["model.num_layers=4", "mesh.pipeline=2", "train.microbatches=2"])


def test_pipeline_composes_with_bf16_compute(reference):
    """bf16 activations through the schedule: the pipelined bf16 gradients are as close to
    the float32 ones as the plain bf16 gradients are (bf16's own noise is the yardstick)."""
    global CFG
    params, (ref_loss, ref_grads) = reference
    saved, CFG = CFG, dataclasses.replace(CFG, dtype="bfloat16")
    try:
        plain_loss, plain_grads = loss_and_grads(params)
        loss, grads, _ = loss_and_grads(params, *CASES["data2-tensor2-pipeline2"])
    finally:
        CFG = saved
    plain_err, piped_err = max_rel_error(plain_grads, ref_grads), max_rel_error(grads, ref_grads)
    print(f"bf16 vs float32 gradients: plain {plain_err:.3g}, pipelined {piped_err:.3g}")
    assert 0 < plain_err < 0.2 and piped_err < 2 * plain_err
    assert abs(float(loss) / float(ref_loss) - 1) < 2 * abs(float(plain_loss) / float(ref_loss) - 1) + 1e-3
