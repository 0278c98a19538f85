"""Mixture of experts: the MLP of a block replaced by `num_experts` MLPs and a router that
sends each token to `experts_per_token` (k) of them (Switch, Mixtral, Qwen3-MoE, DeepSeek-V3).

    logits = x @ router                          (B, T, X), float32
    softmax router: s = softmax(logits)          Mixtral, Qwen3-MoE
    sigmoid router: s = sigmoid(logits)          DeepSeek-V3 (each expert scored on its own)
    w, e  = top_k(s, k)                          weights and experts of each token, (B, T, k)
    w     = w / sum(w)   if router_norm_topk     (Mixtral always; Qwen3-MoE's norm_topk_prob)
    y     = sum_j w_j * expert_{e_j}(x)  [+ shared(x)]

The router runs in float32 whatever the compute dtype: the top-k choice and the softmax are
sensitive to rounding, and the router is a small matmul. Each expert is an MLP of the
model's kind (`model.mlp`) with `expert_d_ff` hidden units; their weights are stacked with a
leading expert axis (logical name `expert`), so one grouped matmul serves all experts
(jaxllm/model/experts.py: dropless grouping by `jax.lax.ragged_dot`, and the all-to-all of
expert parallelism). Shared experts (DeepSeek) are one dense MLP of
num_shared_experts * shared_expert_d_ff hidden units that every token goes through.
Experts and router have no biases (Mixtral, Qwen3-MoE and DeepSeek have none), whatever
`use_bias` says of the attention; the shared MLP follows `use_bias` like the dense MLP.

Parameters, under params["blocks"]["mlp"] (each with the leading `layers` axis):
    router/kernel (E, X); gate_proj/kernel (X, E, F) (gated kinds); up_proj/kernel (X, E, F);
    down_proj/kernel (X, F, E); shared/{gate_proj,up_proj,down_proj}/kernel (the dense MLP's).
Mixtral's block_sparse_moe.gate is router (transposed), experts.{j}.w1 / w3 / w2 are
gate_proj[j] / up_proj[j] / down_proj[j]; Qwen3-MoE's mlp.gate and mlp.experts.{j}.gate_proj
/ up_proj / down_proj likewise.

Auxiliary losses, one of each per layer, sown into the "moe" collection (the scanned stack
stacks them per layer; `router_losses` reads them):
  load_balance  Switch Transformer's E * sum_e f_e * P_e, where f_e is the fraction of the
                batch's routed (token, choice) assignments that chose expert e (the router's
                choices, before any capacity drop; sum_e f_e = 1) and P_e the mean over tokens
                of the router's probability for e (for the sigmoid router, the scores
                normalised over the experts). Perfect balance gives 1 for any k. (Hugging
                Face's Mixtral loss counts each of the k choices as a full share: k times this.)
  z_loss        ST-MoE's mean over tokens of logsumexp(logits)^2: keeps the logits small.
The train step adds router_aux_loss_coef * load_balance + router_z_loss_coef * z_loss, each
the mean over layers, to the loss (jaxllm/train/step.py).

Capacity (expert_capacity_factor = c > 0): each expert takes at most ceil(c * N * k / X) of
the N tokens the layer sees (one microbatch). Priority goes by position: earlier positions
first, and at one position rows in batch order; a token past its expert's capacity loses
that choice (its weight is not given to its other choices; the residual stream carries it
on). Default (c = 0): dropless. The capacity applies wherever the layer runs, so a decoding
step (a few tokens per call) and a full forward over the same text can drop differently;
dropless keeps generation equal to the full forward.

Padding (segment id 0): the block gives the MLP no segment ids, so padding tokens are
routed, computed and counted like any other: their outputs never reach the loss (the
targets' mask), they do enter the load-balancing statistics (as in Hugging Face's Mixtral
without an attention mask), and with a capacity they take slots, last in line when the
padding sits at the end of rows, as the packer and the post-training batches put it.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.model.experts import routed_experts
from jaxllm.model.layers import BATCH_LENGTH_EMBED, Dense, constrain, param_init
from jaxllm.model.mlp import MLP

GATED = ("swiglu", "geglu")  # the kinds with a gate_proj


def route(logits: jax.Array, k: int, kind: str, norm_topk: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Router logits (..., X) float32 -> (weights (..., k), experts (..., k) int32, probs (..., X)):
    the top-k experts, their weights (renormalised to sum to 1 if `norm_topk`), and the
    per-expert probabilities the load-balancing loss averages."""
    if kind == "softmax":
        scores = jax.nn.softmax(logits, axis=-1)
        probs = scores
    else:  # sigmoid: independent scores; normalised over the experts only for the balance loss
        scores = jax.nn.sigmoid(logits)
        probs = scores / jnp.sum(scores, axis=-1, keepdims=True)
    weights, experts = jax.lax.top_k(scores, k)  # ties: the lower expert index first
    if norm_topk:
        weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return weights, experts.astype(jnp.int32), probs


def load_balance_loss(probs: jax.Array, experts: jax.Array, num_experts: int) -> jax.Array:
    """Switch's E * sum_e f_e * P_e over all tokens: probs (..., X), experts (..., k). 1 at balance."""
    k = experts.shape[-1]
    chosen = jnp.sum(jax.nn.one_hot(experts, num_experts, dtype=jnp.float32), axis=-2)  # (..., X) 0/1
    f = jnp.mean(chosen.reshape(-1, num_experts), axis=0) / k  # (X,) share of the assignments
    p = jnp.mean(probs.reshape(-1, num_experts), axis=0)  # (X,) mean router probability
    return num_experts * jnp.sum(f * p)


def router_z_loss(logits: jax.Array) -> jax.Array:
    """ST-MoE's mean over tokens of logsumexp(logits)^2."""
    return jnp.mean(jnp.square(jax.nn.logsumexp(logits, axis=-1)))


def expert_capacity(tokens: int, k: int, num_experts: int, factor: float) -> int:
    """Assignments each expert may take: ceil(factor * tokens * k / num_experts)."""
    return math.ceil(factor * tokens * k / num_experts)


def drop_past_capacity(experts: jax.Array, num_experts: int, capacity: int) -> jax.Array:
    """experts (B, T, k) with every choice past its expert's capacity set to `num_experts`
    (routed nowhere). Rank within an expert: by position, then row (module docstring)."""
    B, T, _ = experts.shape
    hits = jnp.sum(jax.nn.one_hot(experts, num_experts, dtype=jnp.int32), axis=2)  # (B, T, X): a token's k are distinct
    by_position = hits.swapaxes(0, 1).reshape(T * B, num_experts)  # (T*B, X) position-major
    before = jnp.cumsum(by_position, axis=0) - by_position  # assignments to e ahead of this token
    rank = jnp.take_along_axis(before.reshape(T, B, num_experts).swapaxes(0, 1), experts, axis=-1)  # (B, T, k)
    return jnp.where(rank < capacity, experts, num_experts)


class ExpertKernel(nn.Module):
    """One stacked expert weight, as params[name]["kernel"] (so a dense MLP's paths and the
    experts' line up: mlp/up_proj/kernel), with its logical names."""

    shape: tuple[int, ...]
    names: tuple[str | None, ...]
    std: float
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self) -> jax.Array:
        init = param_init(nn.initializers.normal(self.std), self.names)
        return self.param("kernel", init, self.shape, self.param_dtype)


class MoE(nn.Module):
    """Router + routed experts (+ shared experts): the block's MLP when model.num_experts > 0."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        B, T, E = x.shape
        X, k, F = cfg.num_experts, cfg.experts_per_token, cfg.expert_d_ff
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        router = Dense((X,), 1, ("embed", None), cfg.init_std, False, jnp.float32, param_dtype, name="router")
        logits = router(x)  # (B, T, X) float32
        weights, experts, probs = route(logits, k, cfg.router, cfg.router_norm_topk)  # (B, T, k) x2, (B, T, X)
        self.sow("moe", "load_balance", load_balance_loss(probs, experts, X))
        self.sow("moe", "z_loss", router_z_loss(logits))
        if cfg.expert_capacity_factor > 0:
            experts = drop_past_capacity(experts, X, expert_capacity(B * T, k, X, cfg.expert_capacity_factor))
        # For jaxllm.viz (routing pictures): kept only when "intermediates" is mutable, else free.
        self.sow("intermediates", "experts", experts)
        self.sow("intermediates", "weights", weights)

        resid_std = cfg.init_std / (2 * cfg.num_layers) ** 0.5  # output projections, as the dense MLP's
        shapes = {"up_proj": ((X, E, F), ("expert", "embed", "mlp"), cfg.init_std),
                  "down_proj": ((X, F, E), ("expert", "mlp", "embed"), resid_std)}  # fmt: skip
        if cfg.mlp in GATED:
            shapes = {"gate_proj": shapes["up_proj"], **shapes}
        kernels = {name: ExpertKernel(shape, names, std, param_dtype, name=name)().astype(dtype)
                   for name, (shape, names, std) in shapes.items()}  # fmt: skip
        y = routed_experts(cfg.mlp, x.astype(dtype), weights, experts, kernels)  # (B, T, E)
        if cfg.num_shared_experts:
            # The dense MLP at the shared width (its own config copy: mlp.py stays as it is).
            shared = dataclasses.replace(cfg, d_ff=cfg.num_shared_experts * cfg.shared_expert_d_ff)
            y = y + MLP(shared, name="shared")(x)
        return constrain(y, BATCH_LENGTH_EMBED)


def router_losses(moe: dict) -> dict[str, jax.Array]:
    """{"load_balance", "z_loss"}: the mean over layers of each loss sown in a "moe"
    collection (`apply(..., mutable=["moe"])`), wherever in the tree it was sown (the
    scanned stack stacks one per layer; the pipelined stack sows its own); zeros if none."""
    found: dict[str, list[jax.Array]] = {"load_balance": [], "z_loss": []}
    for path, leaf in jax.tree_util.tree_leaves_with_path(moe):
        names = [getattr(p, "key", None) for p in path]
        for name in found:
            if name in names:
                found[name].append(jnp.ravel(leaf))
    return {name: jnp.mean(jnp.concatenate(v)) if v else jnp.zeros((), jnp.float32) for name, v in found.items()}


def router_objective(cfg: ModelConfig, moe: dict, weight: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """What the routers add to a loss sum, and their metrics, both times `weight` (the train
    step's token count, so that its one division by the count leaves the plain values):
    (weight * (router_aux_loss_coef * load_balance + router_z_loss_coef * z_loss),
     {"moe_load_balance": weight * load_balance, "moe_z_loss": weight * z_loss})."""
    losses = router_losses(moe)
    lb, z = losses["load_balance"], losses["z_loss"]
    extra = weight * (cfg.router_aux_loss_coef * lb + cfg.router_z_loss_coef * z)
    return extra, {"moe_load_balance": weight * lb, "moe_z_loss": weight * z}


__all__ = ["MoE", "drop_past_capacity", "expert_capacity", "load_balance_loss", "route", "router_losses",
           "router_objective", "router_z_loss"]  # fmt: skip
