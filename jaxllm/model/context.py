"""Context parallelism: attention over sequences split along their length across devices.

With `mesh.context = C > 1` the rules put the logical `length` on the `context` mesh axis
(jaxllm/parallel/axes.py), so every activation of a long sequence is split C ways: each
device holds T/C positions of every row. Everything but attention is per position and
needs nothing more. Attention needs, for each local query, the keys and values of all
earlier positions, which live on other devices. Two strategies, as in MaxText and
torchtitan (`model.context_attention`):

- allgather: all-gather K and V along `context` (K/V are num_kv_heads wide, a fraction of
  the queries under GQA), then attend the local queries to the whole sequence. Simple,
  and on TPU it runs the splash kernel (jaxllm/model/splash.py) on each shard.
- ring: the K/V blocks travel around the context devices (`ppermute`, C - 1 hops); each
  device attends its queries to the block it holds while the next one is in flight, and
  merges the partial results with an online softmax (running log-sum-exp). In the forward
  pass no device holds more than two K/V blocks; the backward is autodiff, which keeps each
  hop's block and running output. Each block is XLA einsums under `jax.checkpoint`, so the
  backward pass recomputes a block's scores instead of keeping C of them.

Load balancing (`model.context_load_balance`): under the causal mask, position t attends
to t + 1 keys, so with contiguous shards the last device does about 2C - 1 times the first's work
(and a kernel that skips masked tiles finishes first on device 0 and waits). The sequence
is cut into 2C chunks and device i takes chunks i and 2C - 1 - i: every device then holds
one early and one late chunk and the same number of unmasked (query, key) pairs. The
decoder reorders the tokens into this layout before the embedding and restores the natural
order after the last block (`to_layout`, `from_layout`); RoPE positions and segment ids
travel with their tokens, and attention masks by each slot's true position
(`layout_order`), so the result equals the unsplit model's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from jaxllm.model.layers import context_shards
from jaxllm.model.primitives import MASK_VALUE, attention
from jaxllm.model.splash import KV_NAMES, QKV_NAMES, block_size, on_tpu


def layout_order(length: int, shards: int, balanced: bool) -> np.ndarray:
    """(length,) int32: the natural position held at each slot of the split sequence.

    Unbalanced it is 0..T-1 (device i holds positions [i T/C, (i+1) T/C)). Balanced, the
    sequence is cut into 2C chunks and device i holds chunk i then chunk 2C - 1 - i."""
    natural = np.arange(length, dtype=np.int32)
    if not balanced or shards == 1:
        return natural
    chunks = natural.reshape(2 * shards, -1)
    order = [c for i in range(shards) for c in (i, 2 * shards - 1 - i)]
    return chunks[order].reshape(-1)


def to_layout(x: jax.Array, shards: int) -> jax.Array:
    """Reorder x (B, T, ...) from natural order into the balanced layout along T."""
    B, T = x.shape[:2]
    chunks = x.reshape(B, 2, shards, T // (2 * shards), *x.shape[2:])  # (B, 2, C, T/2C, ...)
    early, late = chunks[:, 0], jnp.flip(chunks[:, 1], axis=1)  # late: chunks 2C-1 .. C
    return jnp.stack([early, late], axis=2).reshape(x.shape)  # device i: (early i, late i)


def from_layout(x: jax.Array, shards: int) -> jax.Array:
    """Inverse of `to_layout`: the balanced layout back to natural order along T."""
    B, T = x.shape[:2]
    pairs = x.reshape(B, shards, 2, T // (2 * shards), *x.shape[2:])  # (B, C, 2, T/2C, ...)
    early, late = pairs[:, :, 0], jnp.flip(pairs[:, :, 1], axis=1)
    return jnp.stack([early, late], axis=1).reshape(x.shape)


def _visible(q_pos: jax.Array, k_pos: jax.Array, q_seg: jax.Array, k_seg: jax.Array) -> jax.Array:
    """(B, Tq, Tk) bool: causal by natural position, and same packed document."""
    return (k_pos[None, None, :] <= q_pos[None, :, None]) & (q_seg[:, :, None] == k_seg[:, None, :])


@jax.checkpoint
def _block(q: jax.Array, k: jax.Array, v: jax.Array, allowed: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One ring step: queries q (B, T, K, G, D) against a K/V block (B, S, K, D) under
    `allowed` (B, T, S). Returns the block's softmax-normalised output (B, T, K, G, D)
    and log-sum-exp (B, T, K, G), both float32, for `_merge`. A row with no visible key
    in this block gets a log-sum-exp near MASK_VALUE, so it weighs nothing when merged."""
    s = jnp.einsum("btkgd,bskd->bkgts", q, k, preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
    s = jnp.where(allowed[:, None, None], s, MASK_VALUE)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)  # (B, K, G, T, 1)
    out = jnp.einsum("bkgts,bskd->btkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
    lse = (m + jnp.log(denom))[..., 0]  # (B, K, G, T)
    out = out / jnp.moveaxis(denom, 3, 1)  # denom (B, T, K, G, 1)
    return out, jnp.moveaxis(lse, 3, 1)


def _merge(acc: tuple[jax.Array, jax.Array], new: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Online softmax: two partial attentions over disjoint key sets -> one over their union."""
    (o1, l1), (o2, l2) = acc, new
    lse = jnp.logaddexp(l1, l2)
    return o1 * jnp.exp(l1 - lse)[..., None] + o2 * jnp.exp(l2 - lse)[..., None], lse


def _ring(q, k, v, seg, order, axes: tuple[str, ...], shards: int):
    """This device's queries against every shard's K/V, the blocks passed around the ring."""
    B, Tl, H, D = q.shape
    K = k.shape[2]
    i = jax.lax.axis_index(axes)
    positions = lambda shard: jax.lax.dynamic_slice_in_dim(order, shard * Tl, Tl)  # noqa: E731
    q_pos = positions(i)
    qg = q.reshape(B, Tl, K, H // K, D)
    ring = [(s, (s + 1) % shards) for s in range(shards)]  # each device sends its block to the next
    block = (k, v, seg)
    acc = None
    for hop in range(shards):
        # Send the block on before attending to it: the transfer and the matmuls are independent.
        incoming = jax.lax.ppermute(block, axes, ring) if hop < shards - 1 else None
        k_blk, v_blk, seg_blk = block
        source = (i - hop) % shards  # whose positions this block holds
        part = _block(qg, k_blk, v_blk, _visible(q_pos, positions(source), seg, seg_blk))
        acc = part if acc is None else _merge(acc, part)
        block = incoming
    return acc[0].reshape(B, Tl, H, D).astype(q.dtype)


def _allgather(q, k, v, seg, order, axes: tuple[str, ...], shards: int):
    """This device's queries against the whole sequence's K/V, gathered along `context`."""
    B, Tl, H, D = q.shape
    K = k.shape[2]
    q_pos = jax.lax.dynamic_slice_in_dim(order, jax.lax.axis_index(axes) * Tl, Tl)
    k_all, v_all, seg_all = (jax.lax.all_gather(a, axes, axis=1, tiled=True) for a in (k, v, seg))  # (B, T, ...)
    mask = _visible(q_pos, order, seg, seg_all)  # keys in layout order, masked by natural position
    return attention(q.reshape(B, Tl, K, H // K, D), k_all, v_all, mask).reshape(B, Tl, H, D)


def _splash_allgather(kernel, q, k, v, seg, order, axes: tuple[str, ...], shards: int):
    """`_allgather` through the splash kernel: keys back in natural order, the kernel's
    causal mask reading each local query's natural position from its q_sequence."""
    from jax.experimental.pallas.ops.tpu.splash_attention import SegmentIds  # slow import: only when used

    natural = np.argsort(order)  # layout slot of each natural position
    k_all, v_all, seg_all = (jnp.take(jax.lax.all_gather(a, axes, axis=1, tiled=True), natural, axis=1)
                             for a in (k, v, seg))  # fmt: skip
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)

    def one(qb, kb, vb, sq, sk):  # one sequence: (T, H, D) -> (H, T, D) for the kernel
        out = kernel((qb * scale).swapaxes(0, 1), kb.swapaxes(0, 1), vb.swapaxes(0, 1), segment_ids=SegmentIds(sq, sk))
        return out.swapaxes(0, 1)

    return jax.vmap(one)(q, k_all, v_all, seg, seg_all)


def _splash_kernel(heads: int, length: int, shards: int, order: np.ndarray, block: int, interpret: bool):
    """The splash kernel for the whole (T, T) causal mask, its query rows split `shards`
    ways and numbered by natural position (`order`), so tile skipping follows the layout."""
    from jax.experimental.pallas.ops.tpu import splash_attention as splash  # slow import: only when used

    masks = []
    for _ in range(heads):
        mask = splash.CausalMask((length, length), shard_count=shards)
        mask.q_sequence = order  # the natural position of each query row, in layout order
        masks.append(mask)
    sizes = splash.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block,
        block_q_dkv=block, block_kv_dkv=block, block_kv_dkv_compute=block,
        block_q_dq=block, block_kv_dq=block,
    )  # fmt: skip
    return splash.make_splash_mha(
        splash.MultiHeadMask(masks), block_sizes=sizes, head_shards=1, q_seq_shards=shards, interpret=interpret
    )


def context_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    segment_ids: jax.Array | None,
    strategy: str,
    balanced: bool,
    kernel: bool = False,
    block: int = 0,
) -> jax.Array:
    """Causal attention with the length split over the context devices: q (B, T, H, D),
    k/v (B, T, K, D) in the layout `to_layout` made (balanced) or natural order, segment_ids
    (B, T) or None; returns (B, T, H, D) in q's dtype. `strategy` "allgather" or "ring";
    `kernel` runs allgather's local attention through splash (TPU; interpret mode elsewhere)."""
    axes, shards = context_shards()
    B, T, H, _ = q.shape
    order = layout_order(T, shards, balanced)
    if segment_ids is None:
        segment_ids = jnp.ones((B, T), jnp.int32)  # one document per row
    q_spec, kv_spec = (PartitionSpec(*nn.logical_to_mesh_axes(n)) for n in (QKV_NAMES, KV_NAMES))
    seg_spec = PartitionSpec(q_spec[0], q_spec[1])
    if kernel:
        if strategy != "allgather":
            raise ValueError("the splash kernel runs context_attention=allgather only; ring uses xla blocks")
        splash = _splash_kernel(H, T, shards, order, block_size(T // shards, block), not on_tpu())
        mesh = jax.sharding.get_abstract_mesh()
        kernel_spec = splash.manual_sharding_spec(jax.sharding.NamedSharding(mesh, PartitionSpec(None, axes)))

        def run(kern, q_, k_, v_, s_):
            return _splash_allgather(kern, q_, k_, v_, s_, order, axes, shards)

        return jax.shard_map(
            run, in_specs=(kernel_spec, q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec, check_vma=False
        )(splash, q, k, v, segment_ids)
    local = _ring if strategy == "ring" else _allgather
    order_arr = jnp.asarray(order)
    return jax.shard_map(
        lambda q_, k_, v_, s_: local(q_, k_, v_, s_, order_arr, axes, shards),
        in_specs=(q_spec, kv_spec, kv_spec, seg_spec),
        out_specs=q_spec,
        check_vma=False,
    )(q, k, v, segment_ids)
