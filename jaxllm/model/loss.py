"""Losses over the LM head that never hold the whole (B, T, V) float32 logits.

At long sequences and large vocabularies the logits are the biggest activation of the
step: Llama 3's 128,256-entry vocabulary at 8192 tokens is 4 GiB of float32 per
sequence, and its gradient as much again. Here the head (E -> V) and whatever is read
from the logits (the next-token loss, a token's log-probability, the entropy) run one
chunk of `chunk` positions at a time in a `lax.scan`, under `jax.checkpoint`: the
forward keeps only per-token results, and the backward recomputes each chunk's logits
from the hidden states it already has. The peak is one chunk's (B, chunk, V) logits and
their gradient, whatever the sequence length. (The same idea as MaxText's vocabulary
tiling and the chunked cross-entropy of Liger/torchtitan; here over positions, because
the per-token reductions then stay whole rows.)

A sequence no longer than one chunk takes the plain path: one head matmul and the same
per-token function, no scan (identical programs for short-context runs).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.model.decoder import head_logits
from jaxllm.model.layers import constrain

PerToken = Callable[[jax.Array, jax.Array], object]  # (logits (B, C, V) f32, targets (B, C)) -> (B, C) arrays


def chunked_over_positions(
    x: jax.Array,
    w: jax.Array,
    targets: jax.Array,
    per_token: PerToken,
    chunk: int,
    unroll: bool = False,
    softcap: float = 0.0,
):
    """`per_token(logits, targets)` for every position, computed `chunk` positions at a
    time: x (B, T, E) hidden states, w (E, V) the head, targets (B, T) ints; returns the
    per-token pytree with (B, T) leaves. chunk <= 0 or >= T: one plain pass. `unroll`
    (model.scan_unroll) writes the chunks out as straight-line code: XLA's cost analysis
    counts a loop body once, and `jaxllm plan`'s probes must count every chunk's head.
    `softcap`: model.final_logit_softcap, applied to every chunk's logits."""
    B, T, E = x.shape
    if chunk <= 0 or T <= chunk:
        return per_token(head_logits(x, w, softcap), targets)
    n = -(-T // chunk)
    pad = n * chunk - T  # padded positions are computed and dropped: any target id is valid there
    if pad:
        x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
        targets = jnp.pad(targets, ((0, 0), (0, pad)))
    # Gather an FSDP-sharded head once, here: left sharded, the partitioner gathers it inside
    # the loop, once per chunk (seen in a compiled Llama-8B step on v5p-128: a 1 GiB all-reduce
    # per chunk). The vocabulary axis stays as the rules shard it (tensor parallelism).
    w = constrain(w, (None, "vocab"))
    xs = x.reshape(B, n, chunk, E).swapaxes(0, 1)  # (n, B, C, E)
    ts = targets.reshape(B, n, chunk).swapaxes(0, 1)  # (n, B, C)

    # prevent_cse=False is safe inside scan (scan already stops CSE) and lets XLA fuse.
    @partial(jax.checkpoint, prevent_cse=False)
    def one_chunk(xc: jax.Array, tc: jax.Array):
        return per_token(head_logits(xc, w, softcap), tc)

    _, out = jax.lax.scan(lambda carry, a: (carry, one_chunk(*a)), None, (xs, ts), unroll=n if unroll else 1)
    return jax.tree.map(lambda o: o.swapaxes(0, 1).reshape(B, n * chunk)[:, :T], out)


def token_nll(logits: jax.Array, targets: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(−log p(target), log Z) per position, float32 (B, T) each."""
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return log_z - target_logit, log_z


def next_token_loss(
    config: ModelConfig,
    x: jax.Array,
    w: jax.Array,
    targets: jax.Array,
    mask: jax.Array | None = None,
    z_loss: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sum of token losses, counted tokens, sum of log(Z)^2), float32, from the final
    hidden states x (B, T, E) and head w (E, V) (`Decoder(..., hidden=True)`), in chunks of
    `config.loss_chunk` positions. The loss sum includes `z_loss` * log(Z)^2 per token
    (PaLM's auxiliary loss, which keeps the softmax normaliser near 1); the third value
    reports log(Z)^2 alone, so the cross-entropy is the sum minus z_loss times it."""
    nll, log_z = chunked_over_positions(
        x, w, targets, token_nll, config.loss_chunk, config.scan_unroll, config.final_logit_softcap
    )
    weight = jnp.ones_like(nll) if mask is None else mask.astype(jnp.float32)
    z_sum = jnp.sum(jnp.square(log_z) * weight)
    return jnp.sum(nll * weight) + z_loss * z_sum, jnp.sum(weight), z_sum


def target_log_probs(config: ModelConfig, x: jax.Array, w: jax.Array, targets: jax.Array) -> jax.Array:
    """log p(target) per position (B, T), float32, in chunks of `config.loss_chunk` positions."""
    nll, _ = chunked_over_positions(
        x, w, targets, token_nll, config.loss_chunk, config.scan_unroll, config.final_logit_softcap
    )
    return -nll


__all__ = ["chunked_over_positions", "next_token_loss", "target_log_probs", "token_nll"]
