"""The decoder: embeddings -> scanned block stack -> final norm -> LM head.

The blocks are one `nn.scan` over a leading `layers` axis (DESIGN.md §3): block i's
parameters live at index i of every array under params["blocks"], compile time does
not grow with depth, and the pipeline schedule can later view the stack as
[stages, layers/stage, ...].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import ModelConfig
from jaxllm.model.attention import layer_is_local
from jaxllm.model.block import REMAT_POLICIES, Block
from jaxllm.model.context import from_layout, to_layout
from jaxllm.model.kv_cache import KVCache, cache_mask, cache_positions, ring_window
from jaxllm.model.layers import BATCH_LENGTH_EMBED, RESIDUAL, constrain, context_shards, norm, param_init
from jaxllm.model.pipelined import PipelinedBlocks
from jaxllm.model.primitives import linear


class LMHead(nn.Module):
    """Untied output projection (E -> V)."""

    config: ModelConfig

    def setup(self) -> None:
        cfg = self.config
        self.kernel = self.param(
            "kernel",
            param_init(nn.initializers.normal(cfg.init_std), ("embed", "vocab")),
            (cfg.d_model, cfg.vocab_size),
            jnp.dtype(cfg.param_dtype),
        )  # (E, V)

    def __call__(self, x: jax.Array) -> jax.Array:
        return logits_matmul(x, self.kernel.astype(x.dtype))


# Logical names of the logits (B, T, V), wherever the head is applied.
LOGITS = ("batch", "length", "vocab")


def soft_cap(logits: jax.Array, cap: float) -> jax.Array:
    """cap * tanh(logits / cap) (Gemma 2's final logit soft-capping); the logits as they are
    when cap is 0."""
    return cap * jnp.tanh(logits / cap) if cap else logits


def logits_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
    """Vocabulary projection x (B, T, E) @ w (E, V) with float32 output: inputs stay in the
    compute dtype, accumulation and result are float32, so the softmax/loss never see bf16
    logits. Through `linear`, whose backward does not transpose the (tokens, vocab)
    logits gradient (on CPU that copy was the slowest op of GPT-2's step)."""
    return linear(x, w, 1, jnp.float32)


def head_logits(x: jax.Array, w: jax.Array, softcap: float = 0.0) -> jax.Array:
    """Float32 logits (B, T, V) of hidden states x (B, T, E) through the head w (E, V),
    soft-capped when `softcap` > 0 (model.final_logit_softcap), constrained to the logits'
    logical names: the one place the head is applied."""
    return constrain(soft_cap(logits_matmul(x, w), softcap), LOGITS)


def block_stack(config: ModelConfig, deterministic: bool, decoding: bool = False) -> nn.Module:
    """The scanned, optionally rematerialised, stack of `num_layers` blocks.

    Decoding scans the cache with the parameters (layer i reads and returns slice i of
    k and v) and skips remat, which only matters for a backward pass.
    """
    block = Block
    if decoding:
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast, 0, 0, nn.broadcast),  # positions, segments, local, kv, decode
            length=config.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        return stack(config, deterministic, name="blocks")
    if config.remat != "none":
        # prevent_cse=False is safe (and faster) inside scan, which already stops CSE.
        block = nn.remat(Block, prevent_cse=False, policy=REMAT_POLICIES[config.remat])
    stack = nn.scan(
        block,
        # Sown values stack per layer: "intermediates" (jaxllm.viz), "moe" (the routers' auxiliary losses).
        variable_axes={"params": 0, "intermediates": 0, "moe": 0},
        split_rngs={"params": True, "dropout": True},  # each layer its own init and dropout
        # positions, segment_ids: the same for every layer; local (the sliding-window flag): one per layer
        in_axes=(nn.broadcast, nn.broadcast, 0),
        length=config.num_layers,
        unroll=config.num_layers if config.scan_unroll else 1,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    return stack(config, deterministic, name="blocks")


class Decoder(nn.Module):
    """A decoder-only language model; every architectural choice comes from config."""

    config: ModelConfig
    # (stages, repeats, microbatches) to run the stack through the pipeline schedule
    # (jaxllm/model/pipelined.py); None runs the plain scan. Same parameters either way.
    pipeline: tuple[int, int, int] | None = None

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array | None = None,
        segment_ids: jax.Array | None = None,
        deterministic: bool = True,
        cache: KVCache | None = None,
        last_only: bool = False,
        hidden: bool = False,
    ) -> jax.Array | tuple[jax.Array, jax.Array] | tuple[jax.Array, KVCache]:
        """tokens (B, T) int -> logits (B, T, V) float32.

        positions (B, T): each token's position in its document (default 0..T-1);
        segment_ids (B, T): document ids for packed rows, 0 = padding (default: one
        document per row, no padding).
        cache: decode with a KV cache (jaxllm/model/kv_cache.py): the tokens go into
        slots cache.index.., positions and the mask come from the cache, and the result
        is (logits, updated cache).
        last_only: logits of the last position only, (B, 1, V): what decoding needs,
        without the (B, T, V) projection of a long prompt.
        hidden: (final hidden states (B, T, E), LM-head weight (E, V)), both in the compute
        dtype, instead of logits: for the losses that apply the head a chunk of positions
        at a time and so never hold (B, T, V) float32 logits (jaxllm/model/loss.py).
        """
        cfg = self.config
        B, T = tokens.shape
        dtype, param_dtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
        if cache is not None:
            if segment_ids is not None:
                raise ValueError("decoding with a KV cache takes no segment_ids (rows are left-padded instead)")
            positions = cache_positions(cache, T)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        # Context parallelism with load balancing (jaxllm/model/context.py): the blocks see
        # the sequence in the balanced layout; the natural order is restored after them.
        _, shards = context_shards()
        balanced = shards > 1 and cfg.context_load_balance and cache is None and not self.is_initializing()
        if balanced:
            tokens, positions = to_layout(tokens, shards), to_layout(positions, shards)
            segment_ids = None if segment_ids is None else to_layout(segment_ids, shards)

        wte = nn.Embed(
            cfg.vocab_size,
            cfg.d_model,
            dtype=dtype,
            param_dtype=param_dtype,
            embedding_init=param_init(nn.initializers.normal(cfg.init_std), ("vocab", "embed")),
            name="wte",
        )
        x = wte(tokens)  # (B, T, E)
        if cfg.scale_embeddings:  # Gemma: by sqrt(d_model), rounded to the compute dtype first
            x = x * jnp.asarray(cfg.d_model**0.5, dtype)
        if cfg.position == "learned":
            wpe = nn.Embed(
                cfg.max_seq_len,
                cfg.d_model,
                dtype=dtype,
                param_dtype=param_dtype,
                embedding_init=param_init(nn.initializers.normal(cfg.init_std), (None, "embed")),
                name="wpe",
            )
            x = x + wpe(positions)
        x = nn.Dropout(cfg.dropout, deterministic=deterministic)(x)
        x = constrain(x, BATCH_LENGTH_EMBED if cache is not None else RESIDUAL)

        new_cache = None
        local = jnp.asarray(layer_is_local(cfg))  # (L,) bool, scanned with the layers
        if cache is not None:
            decode = (cache.index, cache_mask(cache, T, ring_window(cfg)))
            x, (k, v) = block_stack(cfg, deterministic, decoding=True)(
                x, positions, None, local, (cache.k, cache.v), decode
            )
            new_cache = cache._replace(k=k, v=v, index=cache.index + T)
        elif self.pipeline is not None and not self.is_initializing():
            stages, repeats, microbatches = self.pipeline
            x = PipelinedBlocks(cfg, stages, repeats, microbatches, deterministic, name="blocks")(
                x, positions, segment_ids, local
            )
        else:
            x, _ = block_stack(cfg, deterministic)(x, positions, segment_ids, local)
        if balanced:
            x = constrain(from_layout(x, shards), RESIDUAL)

        if last_only:
            x = x[:, -1:]
        if cfg.final_norm:
            x = norm(cfg, "ln_f")(x)
        if cfg.head == "scalar":  # a reward model: one float32 score per position
            score = self.param(
                "score",
                param_init(nn.initializers.zeros_init(), ("embed",)),
                (cfg.d_model,),
                param_dtype,
            )
            values = jnp.einsum("bte,e->bt", x, score.astype(x.dtype), preferred_element_type=jnp.float32)
            return values if cache is None else (values, new_cache)
        if cfg.tie_embeddings:
            w = wte.embedding.astype(dtype).T  # (E, V)
        else:
            w = LMHead(cfg, name="lm_head").kernel.astype(x.dtype)  # (E, V)
        if hidden and cache is None:
            return x, w
        logits = head_logits(x, w, cfg.final_logit_softcap)  # (B, T, V) float32
        return logits if cache is None else (logits, new_cache)
