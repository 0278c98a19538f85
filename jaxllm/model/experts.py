"""The routed experts' computation: (token, choice) pairs grouped by expert, one grouped
matmul per projection, and, under expert parallelism, the routed tokens' trip to the
devices that hold their experts and back.

Grouping (dropless): every token's k choices make N*k (token, choice) rows. They are
sorted by expert, so each expert's rows are one contiguous group; `jax.lax.ragged_dot`
(JAX's grouped matmul) multiplies group g by expert g's weights, given only the group
sizes, so no expert has a fixed capacity and no row is padded or dropped. Rows routed
nowhere (dropped past a capacity, jaxllm/model/moe.py) carry the id `num_experts`: they
sort last, lie outside every group, and ragged_dot leaves their output zero. The results
are scaled by their router weights and added back into their tokens (a scatter-add by
token index, which also undoes the sort).

Expert parallelism (the rules put the logical `expert` on the `expert` mesh axis, `ep`
devices): each device holds num_experts / ep experts and, like a data-parallel device,
its own rows of the batch (`batch -> data, fsdp, expert`). Inside a `shard_map` every
device groups its own rows by expert, which also groups them by the device holding each
expert; one all-to-all sends each device its rows (and one the per-expert counts), the
device groups what it received by its local experts and runs the grouped matmuls, and a
second all-to-all sends the results back to the tokens' devices. The exchanged buffers
have a fixed size (all-to-all needs one): ep chunks of N_local*k rows, room for the worst
case in which every row goes to one device, so nothing is ever dropped; the price is
memory and traffic of ep x the routed rows. (`jax.lax.ragged_all_to_all` would send only
the real rows, but XLA:CPU does not implement it, and the tests run on CPU.)
Tensor parallelism splits each expert's hidden units over `tensor` (logical `mlp`), so the
down projection leaves partial sums, added up by one psum over `tensor` at the end, as the
dense MLP's reduce does. FSDP-split expert weights are gathered along d_model before the
`shard_map` (its input spec leaves that axis whole), as every FSDP layer gathers its weights;
their gradients go back the same way. The router, its losses and the capacity ranks run
outside, on the whole batch, so they equal the one-device model's whatever the mesh.
What the compiled step holds (tests/test_moe.py, expert 2 x data 4, forward and backward of
a 2-layer model): 5 all-to-alls in the layers' scan body (forward: the rows, the counts, the
results; backward: the results' and the rows' cotangents; the counts are integers), besides
the data-parallel gradient all-reduces.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from jaxllm.model.primitives import gelu_tanh

Kernels = dict[str, jax.Array]  # gate_proj (X, E, F) for gated kinds, up_proj (X, E, F), down_proj (X, F, E)


def expert_mlps(kind: str, rows: jax.Array, group_sizes: jax.Array, kernels: Kernels) -> jax.Array:
    """Each group of `rows` (R, E), grouped by expert, through its expert's MLP: (R, E), rows
    past the groups' total zero. `kind` is model.mlp: swiglu/geglu gate up_proj with
    silu/gelu(gate_proj); gelu/relu activate up_proj. Accumulates in float32."""
    dtype = rows.dtype

    def grouped(x: jax.Array, w: jax.Array) -> jax.Array:
        return jax.lax.ragged_dot(x, w, group_sizes, preferred_element_type=jnp.float32).astype(dtype)

    h = grouped(rows, kernels["up_proj"])  # (R, F)
    if kind in ("swiglu", "geglu"):
        gate = grouped(rows, kernels["gate_proj"])  # (R, F)
        h = (jax.nn.silu(gate) if kind == "swiglu" else gelu_tanh(gate)) * h
    elif kind == "gelu":
        h = gelu_tanh(h)
    else:
        h = jax.nn.relu(h)
    return grouped(h, kernels["down_proj"])  # (R, E)


def _group(ids: jax.Array, groups: int) -> tuple[jax.Array, jax.Array]:
    """(order, sizes): the stable sort of `ids` (A,) that makes each id's rows contiguous,
    and the rows per id (groups,); ids >= groups (routed nowhere) sort last, uncounted."""
    order = jnp.argsort(ids, stable=True)  # (A,)
    sizes = jnp.zeros((groups,), jnp.int32).at[ids].add(1, mode="drop")  # (groups,)
    return order, sizes


def _exchange(rows: jax.Array, sizes: jax.Array, run: Callable, axes: tuple[str, ...], ep: int) -> jax.Array:
    """Rows (A, E) sorted by global expert, `sizes` (X,) rows per expert: send each row to the
    device holding its expert, `run(rows, group_sizes)` there on its local experts' groups,
    and return the results (A, E) in the same order (rows routed nowhere: zero)."""
    A, E = rows.shape
    per_device = sizes.reshape(ep, -1)  # (ep, X/ep): rows for each device's experts, in order
    send = per_device.sum(axis=1)  # (ep,)
    ends = jnp.cumsum(send)
    index = jnp.arange(A)
    dest = jnp.searchsorted(ends, index, side="right")  # (A,) device of each row; ep: routed nowhere
    slot = index - (ends - send)[jnp.minimum(dest, ep - 1)]  # (A,) place in that device's chunk
    outbox = jnp.zeros((ep, A, E), rows.dtype).at[dest, slot].set(rows, mode="drop")  # (ep, A, E)
    inbox = jax.lax.all_to_all(outbox, axes, 0, 0)  # (ep, A, E): inbox[s] = device s's rows for my experts
    counts = jax.lax.all_to_all(per_device, axes, 0, 0)  # (ep, X/ep): counts[s, j] = its rows for my expert j
    # Each chunk holds its rows sorted by local expert, the rest zero padding (id X/ep: no group).
    local = jax.vmap(lambda c: jnp.searchsorted(jnp.cumsum(c), jnp.arange(A), side="right"))(counts)  # (ep, A)
    order, _ = _group(local.reshape(-1), counts.shape[1])
    out = run(inbox.reshape(ep * A, E)[order], counts.sum(axis=0))  # (ep*A, E) grouped by local expert
    outbox = jnp.zeros_like(out).at[order].set(out).reshape(ep, A, E)  # back in chunk order
    returned = jax.lax.all_to_all(outbox, axes, 0, 0)  # (ep, A, E): returned[d] = my rows' results from d
    return returned.at[dest, slot].get(mode="fill", fill_value=0)  # (A, E)


def _routed(
    kind: str,
    x: jax.Array,
    weights: jax.Array,
    experts: jax.Array,
    kernels: Kernels,
    ep_axes: tuple[str, ...] = (),
    tp_axes: tuple[str, ...] = (),
) -> jax.Array:
    """sum_j weights[..., j] * expert_{experts[..., j]}(x) for the tokens this device holds:
    x (B, T, E), weights (B, T, k) float32, experts (B, T, k) int (num_experts: nowhere)."""
    B, T, E = x.shape
    k = experts.shape[-1]
    ep = math.prod(jax.lax.axis_size(a) for a in ep_axes)
    num_experts = kernels["up_proj"].shape[0] * ep
    flat = experts.reshape(-1)  # (A,) with A = B*T*k, (token, choice) order
    order, sizes = _group(flat, num_experts)
    token = order // k  # (A,) the token of each sorted row
    rows = x.reshape(B * T, E)[token]  # (A, E) grouped by expert
    run = partial(expert_mlps, kind, kernels=kernels)
    out = _exchange(rows, sizes, run, ep_axes, ep) if ep > 1 else run(rows, sizes)  # (A, E)
    scale = weights.reshape(-1)[order] * (flat[order] < num_experts)  # (A,) f32; 0 for rows routed nowhere
    y = jnp.zeros((B * T, E), jnp.float32).at[token].add(out.astype(jnp.float32) * scale[:, None])  # (N, E)
    if tp_axes:  # each tensor device holds a slice of every expert's hidden units: partial sums
        y = jax.lax.psum(y, tp_axes)
    return y.reshape(B, T, E).astype(x.dtype)


def _mesh_axes(names: tuple[str | None, ...]) -> tuple[tuple[str, ...], ...]:
    """Each logical name's mesh axes under the current rules, as tuples (empty: whole)."""
    spec = nn.logical_to_mesh_axes(names)
    return tuple(() if a is None else (a,) if isinstance(a, str) else tuple(a) for a in spec)


def routed_experts(kind: str, x: jax.Array, weights: jax.Array, experts: jax.Array, kernels: Kernels) -> jax.Array:
    """The routed experts' output (B, T, E) in x's dtype: x (B, T, E), weights (B, T, k)
    float32, experts (B, T, k) int in [0, num_experts], num_experts meaning "dropped".

    Outside a mesh, one grouping over the whole batch. Under a mesh, a `shard_map` in which
    each device groups the tokens it holds and exchanges them with the other expert devices
    (module docstring); the mesh axes come from the logical names, as everywhere else."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return _routed(kind, x, weights, experts, kernels)
    batch, length, _ = _mesh_axes(("batch", "length", None))
    (expert,), (mlp,) = _mesh_axes(("expert",)), _mesh_axes(("mlp",))
    if set(mlp) & set(batch + length):
        raise ValueError(
            f"the rules split the experts' hidden units over {mlp}, which also split the tokens "
            f"({batch + length}); map `mlp` to axes the batch does not use"
        )
    tokens = PartitionSpec(batch or None, length or None, None)
    w_in = PartitionSpec(expert or None, None, mlp or None)  # (X, E, F): d_model gathered (FSDP) before
    w_out = PartitionSpec(expert or None, mlp or None, None)  # (X, F, E)
    specs = {name: w_out if name == "down_proj" else w_in for name in kernels}
    body = partial(_routed, kind, ep_axes=expert, tp_axes=mlp)  # size-1 axes too: a no-op psum types the output
    return jax.shard_map(body, in_specs=(tokens, tokens, tokens, specs), out_specs=tokens)(x, weights, experts, kernels)


__all__ = ["Kernels", "expert_mlps", "routed_experts"]
