"""The train step: one `jax.jit` with explicit shardings and donated state.

Gradient accumulation runs inside the step as a `lax.scan` over microbatches. Each
microbatch returns the *sum* of its token losses and its token count; gradients of the
sums are added up and divided once by the global token count, so accumulating k
microbatches of b rows is exactly one batch of k*b rows (not a mean of means).

A mixture-of-experts model's router losses (jaxllm/model/moe.py) are statistics of the
batch a layer sees, not sums over tokens, so no split of a batch leaves them unchanged:
each microbatch's (mean over layers) joins its loss sum times its token count, and the one
division leaves the token-weighted mean over microbatches (one microbatch: the batch's own).
The accumulated gradient is exactly that objective's; it does not depend on the mesh.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxllm.config import Config
from jaxllm.model import lora
from jaxllm.model.decoder import Decoder
from jaxllm.model.loss import next_token_loss
from jaxllm.model.moe import router_objective
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.mesh import BATCH_AXES, batch_sharding
from jaxllm.train.optimizer import lr_schedule
from jaxllm.train.state import State, as_layout

Batch = dict[str, jax.Array]


def _loss_sum(
    cfg: Config,
    params,
    batch: Batch,
    rng: jax.Array | None,
    pipeline: tuple[int, int, int] | None = None,
    z_loss: float | None = None,
    router: bool = True,
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, dict]:
    """(sum of token losses, token count[, {"z_loss": sum of log(Z)^2, ...}]) of one
    (micro)batch, or of the whole batch when `pipeline` = (stages, repeats, microbatches)
    runs the microbatches through the schedule. The head and the loss run in chunks of
    positions (jaxllm/model/loss.py), so the step never holds (B, T, V) float32 logits.
    `z_loss` None: cfg.train.z_loss (training); evaluation passes 0 and `router` False, the
    plain cross-entropy. With experts, the routers' auxiliary losses join the sum weighted
    by the token count (`router_objective`), so dividing by the global count once leaves
    each microbatch's losses weighted by its tokens, as the cross-entropy is."""
    deterministic = rng is None
    moe = router and cfg.model.num_experts > 0
    out = Decoder(cfg.model, pipeline=pipeline).apply(
        {"params": params},
        batch["inputs"],
        batch["positions"],
        batch["segment_ids"],
        deterministic,
        hidden=True,
        rngs={} if deterministic else {"dropout": rng},
        mutable=["moe"] if moe else False,
    )
    (x, w), sown = out if moe else (out, {})  # (B, T, E), (E, V); the sown router losses
    z = cfg.train.z_loss if z_loss is None else z_loss
    loss_sum, count, z_sum = next_token_loss(cfg.model, x, w, batch["targets"], batch["target_mask"], z)
    aux = {"z_loss": z_sum} if z > 0 else {}
    if moe:
        extra, sums = router_objective(cfg.model, sown.get("moe", {}), count)
        loss_sum, aux = loss_sum + extra, aux | sums
    return (loss_sum, count, aux) if aux else (loss_sum, count)


def _eval_loss_sum(cfg: Config, params, batch: Batch, rng, pipeline=None) -> tuple[jax.Array, jax.Array]:
    """The plain next-token cross-entropy (no z-loss, no router losses): what evaluation reports."""
    return _loss_sum(cfg, params, batch, rng, pipeline, z_loss=0.0, router=False)


def _tree_where(cond: jax.Array, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _all_finite(tree) -> jax.Array:
    """True when every floating-point entry of `tree` is finite (one fused reduction)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else jnp.array(True)


def pipeline_spec(cfg: Config, mesh: Mesh) -> tuple[int, int, int] | None:
    """(stages, repeats, microbatches) when the mesh has a pipeline axis > 1, else None."""
    stages = mesh.shape["pipeline"]
    return (stages, cfg.pipeline.repeats, cfg.train.microbatches) if stages > 1 else None


def _objective(cfg: Config, loss_fn: Callable, pipeline, frozen=None) -> Callable:
    """`objective(params, batch, rng) -> (loss_sum, (count, aux_sums))`, for value_and_grad;
    `frozen`: the parameters that are not differentiated (lora.split), joined back in."""

    def objective(p, mb, mb_rng):
        out = loss_fn(cfg, lora.join(p, frozen), mb, mb_rng, pipeline)
        s, c, aux = out if len(out) == 3 else (*out, {})
        return s, (c, aux)

    return objective


def _accumulate(cfg: Config, objective: Callable, params, micro: Batch, rng: jax.Array | None, M: int):
    """(gradient sum, loss sum, count, aux sums) over the M microbatches of `micro` ([M, ...]
    leaves); `rng` None: no dropout. Sums, so dividing once by the count is exact."""

    def accumulate(carry, xs):
        grad_sum, loss_sum, count, aux_sum = carry
        mb, i = xs
        mb_rng = jax.random.fold_in(rng, i) if rng is not None else None
        (s, (c, aux)), g = jax.value_and_grad(objective, has_aux=True)(params, mb, mb_rng)
        aux_sum = jax.tree.map(jnp.add, aux_sum, aux)
        return (jax.tree.map(jnp.add, grad_sum, g), loss_sum + s, count + c, aux_sum), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    first = jax.tree.map(lambda x: x[0], micro)
    aux_shape = jax.eval_shape(lambda: objective(params, first, None)[1][1])
    aux0 = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), aux_shape)
    init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), aux0)
    if M == 1:
        # No accumulation: call the body once instead of a length-1 scan, whose while
        # loop makes XLA copy the carried state in and out (measurable on CPU).
        return accumulate(init, (first, jnp.int32(0)))[0]
    return jax.lax.scan(accumulate, init, (micro, jnp.arange(M)), unroll=cfg.model.scan_unroll)[0]


def make_train_step(
    cfg: Config, layout: Layout | Mesh, tx: optax.GradientTransformation, loss_fn: Callable | None = None
) -> Callable[[State, Batch], Any]:
    """Compiled `step(state, batch) -> (state, metrics)`; `state` is donated. The run's
    `layout` gives the state's and batch's shardings and the activation rules.

    `loss_fn(cfg, params, batch, rng, pipeline) -> (loss_sum, count[, aux_sums])` replaces
    the next-token loss (e.g. DPO's pairwise loss: one count per pair). Every aux entry is
    a sum too; metrics report aux / count, exact under accumulation like the loss."""
    loss_fn = loss_fn or _loss_sum
    layout = as_layout(cfg, layout, tx)
    mesh = layout.mesh
    M = cfg.train.microbatches
    pipeline = pipeline_spec(cfg, mesh)
    if pipeline is not None:
        M = 1  # the microbatches flow through the pipeline schedule instead of the accumulation scan
    m = cfg.model
    dropout = m.dropout > 0 or m.attention_dropout > 0 or (m.lora.rank > 0 and m.lora.dropout > 0)
    schedule = lr_schedule(cfg.optimizer)

    def step(state: State, batch: Batch):
        # With adapters (model.lora) only they are differentiated and updated; the frozen
        # base is closed over, so its gradients are never computed and it passes through.
        params, frozen = lora.split(cfg.model, state["params"])
        rng = jax.random.fold_in(state["rng"], state["step"])
        # Microbatch m takes rows m, m+M, m+2M, ...: every device holds a share of every
        # microbatch, so the scan needs no communication and keeps all devices busy.
        micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // M, M, *x.shape[1:]).swapaxes(0, 1), batch)
        micro = jax.lax.with_sharding_constraint(micro, PartitionSpec(None, BATCH_AXES))
        objective = _objective(cfg, loss_fn, pipeline, frozen)
        grad_sum, loss_sum, count, aux_sum = _accumulate(cfg, objective, params, micro, rng if dropout else None, M)
        count = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / count, grad_sum)
        loss = loss_sum / count
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        # A NaN/inf loss, gradient or updated weight never reaches the state (nor so a
        # checkpoint): the update is skipped, and the host stops the run or carries on per
        # train.on_nonfinite. Finite gradients can still make non-finite weights or moments
        # (a huge learning rate, an overflowing second moment), so the results are checked too.
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & _all_finite((new_params, opt_state))
        new_state = {
            "step": state["step"] + 1,
            "params": lora.join(_tree_where(finite, new_params, params), frozen),
            "opt_state": _tree_where(finite, opt_state, state["opt_state"]),
            "rng": state["rng"],
        }
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": schedule(state["step"]),
            "tokens": count,
            "finite": finite,
            **{k: v / count for k, v in aux_sum.items()},
        }
        return new_state, metrics

    def traced(state: State, batch: Batch):
        with layout.activations():  # activations' logical names -> mesh axes
            return step(state, batch)

    jitted = jax.jit(
        traced,
        in_shardings=(layout.state, layout.batch),
        out_shardings=(layout.state, layout.replicated),
        donate_argnums=0,
    )

    def run(state: State, batch: Batch):
        with jax.set_mesh(mesh):  # makes the logical constraints inside the model take effect
            return jitted(state, batch)

    run.jitted = jitted  # for ahead-of-time lowering (lower under `jax.set_mesh(mesh)`)
    return run


def make_eval_step(
    cfg: Config, layout: Layout | Mesh, tx: optax.GradientTransformation | None = None, loss_fn: Callable | None = None
) -> Callable[[Any, Batch], Any]:
    """Compiled `eval(params, batch) -> (loss_sum, count)` (deterministic, no dropout)."""
    loss_fn = loss_fn or _eval_loss_sum
    layout = as_layout(cfg, layout, None)
    mesh = layout.mesh
    pipeline = pipeline_spec(cfg, mesh)

    def evaluate(params, batch: Batch):
        with layout.activations():
            return loss_fn(cfg, params, batch, None, pipeline)[:2]

    jitted = jax.jit(evaluate, in_shardings=(layout.params, layout.batch), out_shardings=layout.replicated)

    def run(params, batch: Batch):
        with jax.set_mesh(mesh):
            return jitted(params, batch)

    return run


def shard_batch(batch: dict, where: Layout | Mesh) -> Batch:
    """Place a host batch (this process's rows) as global arrays split over the batch axes."""
    sharding: NamedSharding = where.batch if isinstance(where, Layout) else batch_sharding(where)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
