"""The compiled steps of KV-cache generation, and the public building blocks over them.

One compiled program per shape bucket does the whole job: a prefill pass writes the
(left-padded) prompts into a fixed-size cache (jaxllm/model/kv_cache.py), then a
`lax.while_loop` samples a token, feeds it back through the model (one position, all
layers, reading the cache) and stops as soon as every row has hit a stop token or a
stop sequence, or at max_new_tokens. Prompt lengths and output lengths are rounded up
to powers of two (`bucket`), so a chat session compiles a handful of programs, not one
per turn. Sampling settings are data (jaxllm/sampling.py): changing them never recompiles.

Streaming runs the same two functions, prefill-and-sample (`_start_jit`) and
decode-and-sample (`_advance_jit`), from a Python loop instead of the while_loop
(jaxllm/generation/loop.py). `prefill` / `decode_step` expose the bare model steps for
callers that drive their own loop (rollouts, benchmarks).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config, ModelConfig
from jaxllm.model.api import model_config
from jaxllm.model.decoder import Decoder
from jaxllm.model.kv_cache import CACHE_AXES, KVCache, init_cache
from jaxllm.model.layers import constrain
from jaxllm.sampling import sample_tokens

NO_TOKEN = -1  # output slots after a row has finished
_NEVER = -2  # fills the left margin of the output buffer: matches no stop sequence
_ANY = -3  # left padding of stop sequences: matches any token


def bucket(n: int, minimum: int = 16) -> int:
    """The power of two >= n (at least `minimum`): lengths that share a compiled program."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


class _State(NamedTuple):
    cache: KVCache
    token: jax.Array  # (B,) the last sampled token (fed to the next decode step)
    out: jax.Array  # (B, margin + N) int32: margin (_NEVER) then the new tokens
    done: jax.Array  # (B,) bool
    seen: jax.Array | None  # (B, V) bool, for the repetition penalty
    step: jax.Array  # () int32: tokens sampled so far


class _Static(NamedTuple):
    """Everything that shapes the compiled program (hashable: a jit static argument)."""

    model: ModelConfig
    slots: int
    out_len: int
    margin: int
    vocab_limit: int | None
    penalty: bool
    rules: tuple | None


def _apply(model: ModelConfig, params, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Tokens (B, T) through the model into the cache: (last position's logits (B, V), cache)."""
    logits, cache = Decoder(model).apply({"params": params}, tokens, cache=cache, last_only=True)
    return logits[:, -1], cache


def _record(static: _Static, state: _State, logits, rng, sampling, stop_ids, stop_seqs) -> _State:
    """Sample from logits, write the token, mark rows that hit a stop token or sequence."""
    token = sample_tokens(
        logits, jax.random.fold_in(rng, state.step), sampling, state.seen if static.penalty else None,
        static.vocab_limit,
    )  # fmt: skip
    written = jnp.where(state.done, NO_TOKEN, token)
    out = jax.lax.dynamic_update_slice(state.out, written[:, None], (0, static.margin + state.step))
    hit = jnp.any(token[:, None] == stop_ids[None, :], axis=-1)
    width = stop_seqs.shape[1]  # the last `width` tokens, the new one included
    window = jax.lax.dynamic_slice(out, (0, static.margin + state.step + 1 - width), (out.shape[0], width))
    matches = (stop_seqs[None] == _ANY) | (stop_seqs[None] == window[:, None, :])  # (B, Q, Ls)
    hit |= jnp.any(jnp.all(matches, axis=-1), axis=-1)
    seen = state.seen
    if static.penalty:
        seen = seen.at[jnp.arange(token.shape[0]), token].set(True)
    return _State(state.cache, token, out, state.done | hit, seen, state.step + 1)


def _start(static: _Static, params, prompts, start, sampling, stop_ids, stop_seqs, rng, done) -> _State:
    """Prefill the left-padded prompts (B, P) and sample the first token."""
    with nn.logical_axis_rules(static.rules or ()):
        B, P = prompts.shape
        cache = init_cache(static.model, B, static.slots, start)
        cache = cache._replace(k=constrain(cache.k, CACHE_AXES), v=constrain(cache.v, CACHE_AXES))
        logits, cache = _apply(static.model, params, prompts, cache)
        seen = None
        if static.penalty:
            V = static.model.vocab_size
            real = jnp.arange(P)[None] >= start[:, None]
            seen = jnp.zeros((B, V), bool).at[jnp.arange(B)[:, None], prompts].max(real)
        out = jnp.full((B, static.margin + static.out_len), _NEVER, jnp.int32)
        state = _State(cache, jnp.zeros((B,), jnp.int32), out, done, seen, jnp.zeros((), jnp.int32))
        return _record(static, state, logits, rng, sampling, stop_ids, stop_seqs)


def _advance(static: _Static, params, state: _State, sampling, stop_ids, stop_seqs, rng) -> _State:
    """Feed the last token through the model (one cached step) and sample the next."""
    with nn.logical_axis_rules(static.rules or ()):
        logits, cache = _apply(static.model, params, state.token[:, None], state.cache)
        return _record(static, state._replace(cache=cache), logits, rng, sampling, stop_ids, stop_seqs)


@functools.partial(jax.jit, static_argnums=0)
def _generate_jit(static: _Static, params, prompts, start, sampling, stop_ids, stop_seqs, rng, done, max_new):
    state = _start(static, params, prompts, start, sampling, stop_ids, stop_seqs, rng, done)

    def running(s: _State) -> jax.Array:
        return (s.step < max_new) & ~jnp.all(s.done)

    state = jax.lax.while_loop(
        running, lambda s: _advance(static, params, s, sampling, stop_ids, stop_seqs, rng), state
    )
    return state.out, state.step


_start_jit = jax.jit(_start, static_argnums=0)
_advance_jit = jax.jit(_advance, static_argnums=0, donate_argnums=2)


def left_pad(prompts: Sequence[Sequence[int]], width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(tokens (B, width) int32, start (B,) int32): prompts right-aligned, zeros before."""
    width = width or max(len(p) for p in prompts)
    tokens = np.zeros((len(prompts), width), np.int32)
    start = np.zeros((len(prompts),), np.int32)
    for i, p in enumerate(prompts):
        tokens[i, width - len(p) :] = p
        start[i] = width - len(p)
    return tokens, start


@functools.partial(jax.jit, static_argnames=("config", "slots"))
def _prefill(config: ModelConfig, params, tokens, start, slots: int):
    return _apply(config, params, tokens, init_cache(config, tokens.shape[0], slots, start))


@functools.partial(jax.jit, static_argnames=("config",), donate_argnames=("cache",))
def _decode_step(config: ModelConfig, params, tokens, cache):
    return _apply(config, params, tokens[:, None], cache)


def prefill(
    config: Config | ModelConfig, params, tokens: jax.Array, start: jax.Array, slots: int
) -> tuple[jax.Array, KVCache]:
    """Run left-padded prompts (B, P) (see `left_pad`) into a fresh cache of `slots`
    positions: (next-token logits (B, V) float32, the cache). The building block of
    `generate`, public for callers that drive their own loop (rollouts, benchmarks)."""
    return _prefill(model_config(config), params, jnp.asarray(tokens), jnp.asarray(start), slots)


def decode_step(config: Config | ModelConfig, params, tokens: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Feed one token per row (B,) at the cache's next slot: (logits (B, V), cache).
    The cache passed in is donated (its buffers are reused): keep only the returned one."""
    return _decode_step(model_config(config), params, jnp.asarray(tokens, jnp.int32), cache)
