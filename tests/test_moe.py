"""Mixture of experts (jaxllm/model/moe.py, jaxllm/model/experts.py): the grouped experts
equal the MLPs written out by hand, the router losses equal a numpy computation, expert
parallelism (2, 4, and expert 2 x fsdp 2 x tensor 2) equals one device for the loss with
its router losses and every gradient, the pipeline schedule collects every layer's router
losses, capacity drops exactly the assignments it says, and a training run adds the router
losses and logs them, exactly under gradient accumulation."""

from __future__ import annotations

import dataclasses
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.config import MeshConfig, ModelConfig
from jaxllm.hlo import collectives
from jaxllm.model.moe import MoE, drop_past_capacity, expert_capacity
from tests.fixtures import TINY_MODEL
from tests.sharded import max_rel_error, on_mesh

SMALL = ModelConfig(vocab_size=64, max_seq_len=16, d_model=16, num_layers=2, num_heads=2, d_ff=32, use_bias=False,
                    num_experts=4, experts_per_token=2, expert_d_ff=8)  # fmt: skip
RNG = np.random.default_rng(0)


def _moe(cfg: ModelConfig, x: np.ndarray, zero_router: bool = False):
    """(output, params, sown "moe" values) of one MoE layer on x (B, T, E)."""
    params = nn.meta.unbox(jax.jit(MoE(cfg).init)(jax.random.key(1), jnp.asarray(x))["params"])
    if zero_router:
        params = {**params, "router": {"kernel": jnp.zeros_like(params["router"]["kernel"])}}
    y, sown = jax.jit(lambda p, x: MoE(cfg).apply({"params": p}, x, mutable=["moe"]))(params, jnp.asarray(x))
    return np.asarray(y), jax.tree.map(np.asarray, params), jax.tree.map(np.asarray, sown["moe"])


def _expert_by_hand(kind: str, p: dict, j: int, x: np.ndarray) -> np.ndarray:
    """Expert j's MLP on x (..., E), in numpy."""
    gelu = lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))  # noqa: E731
    up = x @ p["up_proj"]["kernel"][j]
    if kind in ("swiglu", "geglu"):
        gate = x @ p["gate_proj"]["kernel"][j]
        h = (gate / (1 + np.exp(-gate)) if kind == "swiglu" else gelu(gate)) * up
    else:
        h = gelu(up) if kind == "gelu" else np.maximum(up, 0)
    return h @ p["down_proj"]["kernel"][j]


@pytest.mark.parametrize("kind, router", [("swiglu", "softmax"), ("gelu", "sigmoid"), ("geglu", "softmax"),
                                          ("relu", "softmax")])  # fmt: skip
def test_uniform_routing_to_every_expert_is_the_mean_of_the_expert_mlps(kind, router):
    """Router kernel zero, top-k = E: every expert weighs 1/E (softmax: 1/E each; sigmoid:
    1/2 each, renormalised), so the layer is the plain mean of the E expert MLPs."""
    cfg = dataclasses.replace(SMALL, mlp=kind, router=router, experts_per_token=SMALL.num_experts)
    x = RNG.standard_normal((2, 5, cfg.d_model)).astype(np.float32)
    y, p, _ = _moe(cfg, x, zero_router=True)
    expected = np.mean([_expert_by_hand(kind, p, j, x) for j in range(cfg.num_experts)], axis=0)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_top_k_routing_and_a_shared_expert_equal_the_sum_by_hand():
    """Top-2 of 4 with random router weights, renormalised, plus one shared SwiGLU expert."""
    cfg = dataclasses.replace(SMALL, mlp="swiglu", num_shared_experts=1, shared_expert_d_ff=12)
    x = RNG.standard_normal((2, 6, cfg.d_model)).astype(np.float32)
    y, p, _ = _moe(cfg, x)
    logits = x @ p["router"]["kernel"]
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top = np.argsort(-probs, axis=-1)[..., :2]
    w = np.take_along_axis(probs, top, -1)
    w /= w.sum(-1, keepdims=True)
    expected = np.zeros_like(x)
    for b, t in np.ndindex(*x.shape[:2]):
        for j in range(2):
            expected[b, t] += w[b, t, j] * _expert_by_hand("swiglu", p, top[b, t, j], x[b, t])
    s = p["shared"]
    gate, up = x @ s["gate_proj"]["kernel"], x @ s["up_proj"]["kernel"]
    expected += (gate / (1 + np.exp(-gate)) * up) @ s["down_proj"]["kernel"]
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    assert p["shared"]["up_proj"]["kernel"].shape == (cfg.d_model, 12)


@pytest.mark.parametrize("router", ["softmax", "sigmoid"])
def test_router_losses_equal_a_hand_computation(router):
    cfg = dataclasses.replace(SMALL, router=router, num_experts=5, experts_per_token=2)
    x = RNG.standard_normal((3, 4, cfg.d_model)).astype(np.float32)
    _, p, sown = _moe(cfg, x)
    logits = (x @ p["router"]["kernel"]).reshape(-1, 5)  # (N, X)
    if router == "softmax":
        scores = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        probs = scores
    else:
        scores = 1 / (1 + np.exp(-logits))
        probs = scores / scores.sum(-1, keepdims=True)
    top = np.argsort(-scores, axis=-1)[:, :2]  # (N, k)
    f = np.bincount(top.ravel(), minlength=5) / top.size  # share of the (token, choice) assignments
    load_balance = 5 * np.sum(f * probs.mean(0))
    z = np.mean(np.log(np.exp(logits).sum(-1)) ** 2)
    np.testing.assert_allclose(sown["load_balance"][0], load_balance, rtol=1e-5)
    np.testing.assert_allclose(sown["z_loss"][0], z, rtol=1e-5)
    uniform = _moe(cfg, x, zero_router=True)[2]["load_balance"][0]
    np.testing.assert_allclose(uniform, 1.0, rtol=1e-6)  # perfect balance is 1, whatever k


def test_capacity_drops_the_latest_positions_first():
    experts = jnp.asarray([[[0, 1], [0, 2], [0, 1]],
                           [[1, 0], [2, 1], [0, 3]]])  # (B=2, T=3, k=2)  # fmt: skip
    # Expert 0, in position-major order: (t0,b0) (t0,b1) (t1,b0) (t2,b0) (t2,b1): the last three
    # pass capacity 2. Expert 1: (t0,b0) (t0,b1) (t1,b1) (t2,b0): the last two go.
    kept = np.asarray(drop_past_capacity(experts, 4, capacity=2))
    np.testing.assert_array_equal(kept, [[[0, 1], [4, 2], [4, 4]],
                                         [[1, 0], [2, 4], [4, 3]]])  # fmt: skip
    assert expert_capacity(tokens=6, k=2, num_experts=4, factor=1.25) == 4  # ceil(1.25 * 6 * 2 / 4)


def test_a_token_past_capacity_loses_that_expert_and_nothing_else():
    """k = 1, router zero: every token picks expert 0 (ties go to the lower index). Capacity
    ceil(0.5 * 16 / 2) = 4 keeps positions 0 and 1 of both rows; the rest output zero."""
    cfg = dataclasses.replace(SMALL, experts_per_token=1, num_experts=2, expert_capacity_factor=0.5)
    x = RNG.standard_normal((2, 8, cfg.d_model)).astype(np.float32)
    y, p, _ = _moe(cfg, x, zero_router=True)
    expected = _expert_by_hand("gelu", p, 0, x)
    expected[:, 2:] = 0
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    roomy, _, _ = _moe(dataclasses.replace(cfg, expert_capacity_factor=2.0), x, zero_router=True)
    dropless, _, _ = _moe(dataclasses.replace(cfg, expert_capacity_factor=0.0), x, zero_router=True)
    np.testing.assert_allclose(roomy, dropless, rtol=1e-6)


# --- expert parallelism: sharded == one device ---------------------------------------------

EP_CFG = ModelConfig(vocab_size=64, max_seq_len=16, d_model=32, num_layers=2, num_heads=4, d_ff=64, norm="rmsnorm",
                     position="rope", mlp="swiglu", use_bias=False, attention_impl="xla", num_experts=4,
                     experts_per_token=2, expert_d_ff=16, num_shared_experts=1, router_z_loss_coef=1e-3)  # fmt: skip
TOKENS = jnp.asarray(RNG.integers(0, 64, (8, 16)), jnp.int32)
TARGETS = jnp.asarray(RNG.integers(0, 64, (8, 16)), jnp.int32)


def objective(params, cfg: ModelConfig = EP_CFG):
    """Mean cross-entropy plus the weighted router losses: what training minimises."""
    s, c, aux = jaxllm.loss(cfg, params, TOKENS, TARGETS, aux=True)
    return s / c + cfg.router_aux_loss_coef * aux["load_balance"] + cfg.router_z_loss_coef * aux["z_loss"]


@pytest.fixture(scope="module")
def reference():
    """Weights well away from init (every expert and the router matter), and the one-device
    value and gradients of `objective`."""
    from tests.parity.common import random_params

    params = random_params(EP_CFG)
    return params, jax.jit(jax.value_and_grad(objective))(params)


MESHES = {
    "expert2-data4": MeshConfig(data=4, expert=2),
    "expert4-data2": MeshConfig(data=2, expert=4),
    "expert2-fsdp2-tensor2": MeshConfig(data=1, fsdp=2, expert=2, tensor=2),
}


@pytest.mark.parametrize("mesh", MESHES)
def test_expert_parallel_loss_and_every_gradient_equal_one_device(mesh, reference):
    params, (ref_loss, ref_grads) = reference
    (loss, grads), text = on_mesh(jax.value_and_grad(objective), params, EP_CFG, MESHES[mesh])
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert max_rel_error(grads, ref_grads) <= 1e-5
    # The routed tokens travel by all-to-all (forward: rows and counts out, results back;
    # backward: the same in reverse), inside the layers' scan.
    assert collectives(text).get("all-to-all", 0) >= 3, collectives(text)


def test_the_pipeline_schedule_collects_each_layers_router_losses(reference):
    """GPipe, 2 stages x 2 microbatches (and the circular schedule, 2 laps of 1-layer chunks):
    each layer's losses are the mean over the microbatches (rows m, m+2, ...) of what the
    scanned stack sows for that microbatch; the bubble's iterations add nothing."""
    from jaxllm.model.decoder import Decoder

    params, _ = reference
    cfg = dataclasses.replace(EP_CFG, num_layers=4)
    params = {**params, "blocks": jax.tree.map(lambda a: jnp.concatenate([a, 1.5 * a]), params["blocks"])}

    @partial(jax.jit, static_argnums=2)
    def sown(p, tokens, pipeline):
        return Decoder(cfg, pipeline=pipeline).apply({"params": p}, tokens, mutable=["moe"])[1]["moe"]

    per_mb = [sown(params, TOKENS[m::2], None)["blocks"]["mlp"] for m in range(2)]
    for pipeline in [(2, 1, 2), (2, 2, 2)]:
        got = sown(params, TOKENS, pipeline)["blocks"]["pipelined"][0]["mlp"]
        for name in ("load_balance", "z_loss"):
            expected = (per_mb[0][name][0] + per_mb[1][name][0]) / 2  # (L,)
            np.testing.assert_allclose(got[name][0], expected, rtol=1e-5)


def test_expert_weights_are_split_over_the_expert_axis():
    from jaxllm.parallel.mesh import make_mesh
    from jaxllm.parallel.rules import named_shardings, parse_rules

    specs = named_shardings(jaxllm.param_logical_axes(EP_CFG), make_mesh(MeshConfig(data=4, expert=2)), parse_rules(()))
    mlp = specs["blocks"]["mlp"]
    assert tuple(mlp["gate_proj"]["kernel"].spec) == ("pipeline", "expert", ("fsdp", "context"), "tensor")
    assert tuple(mlp["down_proj"]["kernel"].spec) == ("pipeline", "expert", "tensor", ("fsdp", "context"))
    assert tuple(mlp["router"]["kernel"].spec) == ("pipeline", ("fsdp", "context"), None)


def test_expert_settings_that_cannot_run_are_refused_at_load():
    from jaxllm.config import ConfigError

    moe = ["model.num_experts=4", "model.expert_d_ff=32"]
    with pytest.raises(ConfigError, match="num_experts=4 is not divisible by mesh.expert=3"):
        jaxllm.load_config("shakespeare-char", [*moe, "mesh.data=1", "mesh.expert=3"])
    with pytest.raises(ConfigError, match="expert_d_ff=31 is not divisible by mesh.tensor=2"):
        jaxllm.load_config("shakespeare-char", [*moe, "model.expert_d_ff=31", "mesh.data=1", "mesh.tensor=2"])
    with pytest.raises(ConfigError, match=r"mesh.data\*mesh.fsdp\*mesh.expert=8"):
        jaxllm.load_config("shakespeare-char", [*moe, "mesh.data=2", "mesh.expert=4", "train.batch_size=12"])


# --- training -------------------------------------------------------------------------------

MOE_TRAIN = ["model.num_experts=4", "model.experts_per_token=2", "model.expert_d_ff=32",
             "model.router_z_loss_coef=0.001"]  # fmt: skip


def test_accumulated_router_losses_are_the_token_weighted_mean_over_microbatches():
    """train.microbatches=2: the step's loss is, exactly, each microbatch's cross-entropy sum
    plus count x (coef x router losses), over the total count (microbatch m: rows m, m+2, ...)."""
    from jaxllm.parallel.mesh import make_mesh
    from jaxllm.train.optimizer import make_optimizer
    from jaxllm.train.state import init_state
    from jaxllm.train.step import make_train_step, shard_batch
    from tests.test_train import synthetic_batch

    cfg = jaxllm.load_config("shakespeare-char", [*TINY_MODEL, *MOE_TRAIN, "mesh.data=1", "train.microbatches=2",
                                                  "train.batch_size=4"])  # fmt: skip
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    tx = make_optimizer(cfg.optimizer)
    state = init_state(cfg, mesh, tx)
    params = jax.device_get(state["params"])
    batch = synthetic_batch(B=4, T=32)
    _, metrics = make_train_step(cfg, mesh, tx)(state, shard_batch(batch, mesh))
    m = cfg.model
    total, count, lb, zl = 0.0, 0.0, 0.0, 0.0

    @jax.jit
    def loss(rows):
        return jaxllm.loss(m, params, rows["inputs"], rows["targets"], target_mask=rows["target_mask"],
                           positions=rows["positions"], segment_ids=rows["segment_ids"], aux=True)  # fmt: skip

    for i in range(2):
        s, c, aux = loss({k: jnp.asarray(v[i::2]) for k, v in batch.items()})
        s, c, b, z = float(s), float(c), float(aux["load_balance"]), float(aux["z_loss"])
        total += s + c * (m.router_aux_loss_coef * b + m.router_z_loss_coef * z)
        count, lb, zl = count + c, lb + c * b, zl + c * z
    np.testing.assert_allclose(float(metrics["loss"]), total / count, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["moe_load_balance"]), lb / count, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["moe_z_loss"]), zl / count, rtol=1e-5)


def test_a_moe_training_run_logs_its_router_losses(tiny_dataset, tmp_path):
    from jaxllm.train.metrics import read_metrics
    from jaxllm.train.trainer import train
    from tests.fixtures import QUIET, tiny_overrides

    cfg = jaxllm.load_config("shakespeare-char", tiny_overrides(tiny_dataset, tmp_path / "run", *MOE_TRAIN,
                                                                "train.steps=2", "model.mlp=swiglu"))  # fmt: skip
    train(cfg, **QUIET)
    records = [r for r in read_metrics(tmp_path / "run") if r["split"] == "train"]
    assert len(records) == 2
    for r in records:
        assert 0.9 < r["moe_load_balance"] < 2.0 and r["moe_z_loss"] > 0, r
