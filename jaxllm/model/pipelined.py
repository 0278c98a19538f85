"""Pipeline parallelism as a schedule over the scanned layer stack (DESIGN.md §5).

The block parameters are stored as [L, ...] (the on-disk layout, whatever the mesh).
With S = mesh.pipeline stages and R = pipeline.repeats, they are viewed as
[R, S, L/(S*R), ...]: layer chunk c = r*S + s (layers c*Lc .. (c+1)*Lc - 1) runs on
stage s. R = 1 is GPipe; R > 1 is the circular (interleaved) schedule, where each
microbatch goes round the S stages R times.

The batch is split into M microbatches (rows m, m+M, ..., as in gradient accumulation).
A buffer `buf` (S, b, T, E) holds each stage's input. Each iteration t:
  1. stage 0 takes microbatch t (first lap) or the finished lap of microbatch t mod M;
  2. every stage runs its chunk at once (`vmap` over the stage axis, which is sharded
     over `pipeline`, so each device runs only its own stage);
  3. stage S-1's output is parked in `laps` (M, b, T, E) for its next lap / the end;
  4. the outputs shift one stage down: `roll` along the pipeline-sharded stage axis,
     which XLA lowers to a collective-permute between neighbouring devices.
Stage s works on microbatch t - s; R*M + S - 1 iterations cover every (microbatch, lap,
stage); the idle (bubble) share is (S-1) / (R*M + S - 1). Iterations where a stage has
no microbatch compute on stale data whose results are never used, so they add nothing
to the loss or the gradients. Backward is autodiff through the `lax.scan`.

Why this lives in `model/` and not `parallel/`: it is another way to run the same stack
of blocks (beside the scanned and rematerialised stacks in decoder.py), over the same
parameters; it needs only the stage axis's name, not the mesh. Keeping it here lets the
decoder import it at the top and `parallel/` stay above `model/` (tests/test_layers.py).
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.model.block import REMAT_POLICIES, Block


def bubble_fraction(stages: int, microbatches: int, repeats: int = 1) -> float:
    """Share of stage-iterations that are idle in the schedule."""
    return (stages - 1) / (repeats * microbatches + stages - 1)


def chunked(blocks, stages: int, repeats: int):
    """[L, ...] leaves -> [R, S, L/(S*R), ...]: chunk (r, s) holds layers (r*S + s)*Lc + j."""
    return jax.tree.map(lambda p: p.reshape(repeats, stages, p.shape[0] // (stages * repeats), *p.shape[1:]), blocks)


def shift_stages(y: jax.Array) -> jax.Array:
    """Stage s's output becomes stage s+1's input (a collective-permute over `pipeline`)."""
    return jnp.roll(y, 1, axis=0)


def pipeline_stack(
    run_chunk: Callable[[object, jax.Array, jax.Array, jax.Array | None], tuple[jax.Array, object]],
    blocks,
    x: jax.Array,
    positions: jax.Array,
    segment_ids: jax.Array | None,
    *,
    stages: int,
    repeats: int,
    microbatches: int,
    unroll: bool = False,
) -> tuple[jax.Array, object]:
    """Apply the layer stack to x (B, T, E) through the pipeline schedule.

    run_chunk(chunk_params, x, positions, segment_ids) applies one chunk of layers
    (leaves [Lc, ...]) to one microbatch and returns (output, per-layer values): a pytree
    of [Lc] float leaves (the routers' losses, jaxllm/model/moe.py; {} for none). Returns
    (output, those values as [L] leaves in layer order, each the mean over the microbatches);
    the bubble's iterations, on stale data, add nothing to them.
    """
    S, R, M = stages, repeats, microbatches
    B = x.shape[0]
    b = B // M
    split = lambda a: a.reshape(b, M, *a.shape[1:]).swapaxes(0, 1)  # noqa: E731  (M, b, ...)
    xs, pos = split(x), split(positions)
    seg = split(segment_ids) if segment_ids is not None else None
    weights = chunked(blocks, S, R)
    stage = jnp.arange(S)
    weights = jax.tree.map(lambda w: nn.with_logical_constraint(w, (None, "stage") + (None,) * (w.ndim - 2)), weights)
    stage_constraint = ("stage", "batch", "length", "embed")

    def run_stages(buf, lap, m):
        # (S, Lc, ...): stage s takes its chunk of lap `lap[s]`; indexing only the unsharded
        # R axis inside a vmap over the pipeline-sharded S axis keeps this local per device.
        stage_weights = jax.tree.map(lambda w: jax.vmap(lambda ws, r: ws[r], in_axes=(1, 0))(w, lap), weights)
        return jax.vmap(run_chunk)(stage_weights, buf, pos[m], seg[m] if seg is not None else None)

    def step(carry, t):
        buf, laps, sums = carry
        m0 = t % M
        buf = buf.at[0].set(jnp.where(t < M, xs[m0], laps[m0]))  # stage 0: a new microbatch or its next lap
        buf = nn.with_logical_constraint(buf, stage_constraint)
        rel = t - stage  # (S,) microbatch-lap position of each stage
        m = rel % M
        lap = jnp.clip(rel // M, 0, R - 1)
        y, values = run_stages(buf, lap, m)  # (S, b, T, E), [S, Lc] leaves
        y = nn.with_logical_constraint(y, stage_constraint)
        done = (rel[S - 1] >= 0) & (rel[S - 1] < R * M)  # stage S-1 really finished microbatch m[S-1]
        laps = laps.at[m[S - 1]].set(jnp.where(done, y[S - 1], laps[m[S - 1]]))
        busy = ((rel >= 0) & (rel < R * M))[:, None]  # (S, 1): the stages working on a real microbatch
        sums = jax.tree.map(lambda a, v: a.at[lap, stage].add(jnp.where(busy, v, 0)), sums, values)  # [R, S, Lc]
        return (shift_stages(y), laps, sums), None

    buf0 = jnp.zeros((S, *xs.shape[1:]), x.dtype)
    first = jnp.zeros((S,), jnp.int32)
    shapes = jax.eval_shape(run_stages, buf0, first, first)[1]
    sums0 = jax.tree.map(lambda a: jnp.zeros((R, *a.shape), jnp.float32), shapes)  # [R, S, Lc]: chunk (r, s)
    carry0 = (buf0, jnp.zeros_like(xs), sums0)
    (_, laps, sums), _ = jax.lax.scan(step, carry0, jnp.arange(R * M + S - 1), unroll=unroll)
    per_layer = jax.tree.map(lambda a: a.reshape(-1) / M, sums)  # chunk (r, s) holds layers (r*S + s)*Lc + j
    return laps.swapaxes(0, 1).reshape(B, *x.shape[1:]), per_layer


class PipelinedBlocks(nn.Module):
    """Drop-in for the scanned stack at apply time: same params (`params["blocks"]`), run
    through the pipeline schedule. Parameters are created by the plain scanned stack."""

    config: ModelConfig
    stages: int
    repeats: int
    microbatches: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None, local: jax.Array):
        """`local` (L,) bool: each layer's sliding-window flag, chunked with its parameters."""
        if self.is_initializing():
            raise ValueError("initialize parameters without pipelining (jaxllm.init_params); the layout is the same")
        if not self.deterministic:
            raise NotImplementedError("dropout inside the pipeline schedule is not supported yet; set model.dropout=0")
        cfg = self.config
        blocks = {"params": self.variables["params"], "local": local}

        def run_chunk(chunk, h, pos, seg):
            def layer(h, p):
                # The "moe" collection (routers' losses, jaxllm/model/moe.py) comes out per layer.
                (h, _), sown = Block(cfg, True).apply(
                    {"params": p["params"]}, h, pos, seg, p["local"], mutable=["moe"]
                )
                return h, sown.get("moe", {})

            if cfg.remat != "none":  # the policy applies per layer, inside every stage iteration
                layer = jax.checkpoint(layer, policy=REMAT_POLICIES[cfg.remat], prevent_cse=False)
            return jax.lax.scan(layer, h, chunk, unroll=cfg.scan_unroll)

        x, sown = pipeline_stack(
            run_chunk, blocks, x, positions, segment_ids,
            stages=self.stages, repeats=self.repeats, microbatches=self.microbatches, unroll=cfg.scan_unroll,
        )  # fmt: skip
        if jax.tree.leaves(sown):  # [L] per-layer values, as the scanned stack stacks them
            self.sow("moe", "pipelined", sown)
        return x
