"""Text generation with a KV cache: prefill the prompts, then decode token by token.

One compiled program per shape bucket does the whole job: a prefill pass writes the
(left-padded) prompts into a fixed-size cache (jaxllm/model/kv_cache.py), then a
`lax.while_loop` samples a token, feeds it back through the model (one position, all
layers, reading the cache) and stops as soon as every row has hit a stop token or a
stop sequence, or at max_new_tokens. Prompt lengths and output lengths are rounded up
to powers of two, so a chat session compiles a handful of programs, not one per turn.
Sampling settings are data (jaxllm/sampling.py): changing them never recompiles.

Streaming (`generate_stream`) runs the same two functions, prefill-and-sample and
decode-and-sample, from a Python loop instead of the while_loop, so it yields each
token as it is produced and returns exactly what `generate` returns.

Past the context: a model cannot attend beyond max_seq_len positions. With
overflow="slide" (the default) generation continues by re-reading the last half
context of each row as a fresh prompt (as nanoGPT's sampler crops its window, but once
per half context instead of every token); overflow="stop" ends those rows with
finish reason "length".
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxllm.config import Config, MeshConfig, ModelConfig
from jaxllm.model.api import model_config
from jaxllm.model.decoder import Decoder
from jaxllm.model.kv_cache import CACHE_AXES, KVCache, init_cache
from jaxllm.model.layers import constrain
from jaxllm.parallel.rules import flax_rules, named_shardings, parse_rules
from jaxllm.sampling import GenerationError, SamplingParams, sample_tokens, sampling_params

NO_TOKEN = -1  # output slots after a row has finished
_NEVER = -2  # fills the left margin of the output buffer: matches no stop sequence
_ANY = -3  # left padding of stop sequences: matches any token


@dataclass(frozen=True)
class Generation:
    """New tokens per prompt (stop token / stop sequence removed) and why each ended:
    "stop" (a stop token or sequence) or "length" (max_new_tokens or the context).
    `stops` holds the stop token / sequence each row produced and lost (empty when it
    ran to "length"): tokens + stops is exactly what was sampled (PPO needs that)."""

    tokens: list[list[int]]
    finish_reasons: list[str]
    stops: list[list[int]] = field(default_factory=list)


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


@dataclass
class _Round:
    """One prefill + decode pass over a batch, prepared on the host."""

    static: _Static
    prompts: jax.Array
    start: jax.Array
    done: jax.Array
    rows: int  # real rows (the rest pad the batch to the mesh's data-parallel size)


def _stop_arrays(stop_tokens: Sequence[int], stop_sequences: Sequence[Sequence[int]]):
    ids = np.array(list(stop_tokens) or [_NEVER], np.int32)
    seqs = [list(s) for s in stop_sequences]
    if any(len(s) == 0 for s in seqs):
        raise GenerationError("a stop sequence is empty; give at least one token per stop sequence")
    width = max((len(s) for s in seqs), default=1)
    table = np.full((max(len(seqs), 1), width), _ANY, np.int32)
    if not seqs:
        table[0, -1] = _NEVER  # matches nothing
    for i, s in enumerate(seqs):
        table[i, width - len(s) :] = s
    return jnp.asarray(ids), jnp.asarray(table)


class _Setup(NamedTuple):
    model: ModelConfig
    sampling: SamplingParams
    stop_ids: jax.Array
    stop_seqs: jax.Array
    vocab_limit: int | None
    mesh: Mesh | None
    stop_tokens: list[int]  # as given: the host trims a finished row with these
    stop_sequences: list[list[int]]
    rules: tuple | None  # flax's form of the rules table (None without a mesh)
    table: tuple | None  # jaxllm's form
    batch_multiple: int


def _setup(config, prompts, max_new_tokens, sampling_kw, stop_tokens, stop_sequences, vocab_limit, mesh, overflow):
    m = model_config(config)
    if m.head != "lm":
        raise GenerationError(f"model.head={m.head!r} is a reward model: it scores text and cannot generate")
    if not prompts:
        raise GenerationError("generate needs at least one prompt")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise GenerationError(f"prompt {i} is empty; start it with at least one token (e.g. BOS or a newline)")
        if len(p) > m.max_seq_len:
            raise GenerationError(
                f"prompt {i} is {len(p)} tokens, longer than the model's context (max_seq_len={m.max_seq_len}); "
                f"shorten it to at most {m.max_seq_len} tokens"
            )
        bad = [t for t in p if not 0 <= int(t) < m.vocab_size]
        if bad:
            raise GenerationError(f"prompt {i} has token id {bad[0]} outside the vocabulary [0, {m.vocab_size})")
    if max_new_tokens < 0:
        raise GenerationError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if overflow not in ("slide", "stop"):
        raise GenerationError(f"overflow must be 'slide' or 'stop', got {overflow!r}")
    if vocab_limit is not None and not 0 < vocab_limit <= m.vocab_size:
        raise GenerationError(f"vocab_limit={vocab_limit} must be in [1, model.vocab_size={m.vocab_size}]")
    sampling = sampling_params(len(prompts), **sampling_kw)
    stop_ids, stop_seqs = _stop_arrays(stop_tokens, stop_sequences)
    rules = table = None
    multiple = 1
    if mesh is not None:
        table = parse_rules((config.mesh if isinstance(config, Config) else MeshConfig()).rules)
        rules = flax_rules(table)
        multiple = mesh.shape["data"] * mesh.shape["fsdp"]
    stops = [int(t) for t in stop_tokens]
    seqs = [[int(t) for t in q] for q in stop_sequences]
    return _Setup(m, sampling, stop_ids, stop_seqs, vocab_limit, mesh, stops, seqs, rules, table, multiple)


def _prepare_round(setup: _Setup, rows: list[list[int]], done: list[bool], max_new: int) -> _Round:
    """Left-pad the rows to a bucketed length, pad the batch to the mesh's multiple."""
    m = setup.model
    n = len(rows)
    batch = -(-n // setup.batch_multiple) * setup.batch_multiple
    longest = max(len(r) for r in rows)
    width = min(bucket(longest), max(longest, m.max_seq_len))
    prompts = np.zeros((batch, width), np.int32)
    start = np.zeros((batch,), np.int32)
    for i in range(batch):
        row = rows[i] if i < n else rows[0]
        prompts[i, width - len(row) :] = row
        start[i] = width - len(row)
    out_len = bucket(max(max_new, 1))
    margin = int(setup.stop_seqs.shape[1])
    static = _Static(m, width + out_len, out_len, margin, setup.vocab_limit, _uses_penalty(setup), setup.rules)
    done_arr = np.array(list(done) + [True] * (batch - n))
    return _Round(static, jnp.asarray(prompts), jnp.asarray(start), jnp.asarray(done_arr), n)


def _uses_penalty(setup: _Setup) -> bool:
    return bool(np.any(np.asarray(setup.sampling.repetition_penalty) != 1.0))


def _padded(setup: _Setup, batch: int):
    """Sampling arrays padded to the (mesh-padded) batch with the first row's values."""
    n = setup.sampling.temperature.shape[0]
    if batch == n:
        return setup.sampling
    return SamplingParams(*(jnp.concatenate([a, jnp.repeat(a[:1], batch - n)]) for a in setup.sampling))


def _place(setup: _Setup, params):
    """Parameters laid out on the mesh by the run's rules (a no-op if they already are)."""
    if setup.mesh is None:
        return params
    from jaxllm.model.api import param_logical_axes

    return jax.device_put(params, named_shardings(param_logical_axes(setup.model), setup.mesh, setup.table))


def _finish(row: list[int], stop_tokens: Sequence[int], stop_sequences: Sequence[Sequence[int]]):
    """Strip the stop token / sequence that ended a row; (tokens, stopped?)."""
    if row and row[-1] in stop_tokens:
        return row[:-1], True
    for seq in stop_sequences:
        if len(seq) <= len(row) and row[len(row) - len(seq) :] == list(seq):
            return row[: len(row) - len(seq)], True
    return row, False


def _rounds(config, params, prompts, max_new_tokens, setup: _Setup, seed: int, overflow: str, stream: bool):
    """Drive generation round by round (one round per context window); yields
    ("token", step tokens) while streaming and finally ("done", Generation)."""
    m = setup.model
    prompts = [[int(t) for t in p] for p in prompts]
    n = len(prompts)
    new: list[list[int]] = [[] for _ in range(n)]
    stopped = [False] * n
    ends: list[list[int]] = [[] for _ in range(n)]
    full = [False] * n
    params = _place(setup, params)
    keep = max(1, m.max_seq_len // 2)
    round_no = 0
    ctx = jax.set_mesh(setup.mesh) if setup.mesh is not None else contextlib.nullcontext()
    with ctx:
        while True:
            rows = [prompts[i] + new[i] for i in range(n)]
            for i in range(n):
                if not stopped[i] and len(rows[i]) >= m.max_seq_len and len(new[i]) < max_new_tokens:
                    if overflow == "stop":
                        full[i] = True  # the context is full: finish reason "length"
                    else:
                        rows[i] = rows[i][-keep:]  # slide: continue from the last half context
            remaining = [max_new_tokens - len(t) for t in new]
            active = [not stopped[i] and not full[i] and remaining[i] > 0 for i in range(n)]
            if not any(active):
                break
            rows = [rows[i] if active[i] else rows[i][-1:] for i in range(n)]  # finished rows: a placeholder
            room = m.max_seq_len - max(len(rows[i]) for i in range(n) if active[i])
            budget = min(max(remaining[i] for i in range(n) if active[i]), room)
            rnd = _prepare_round(setup, rows, [not a for a in active], budget)
            rng = jax.random.fold_in(jax.random.key(seed), round_no)
            sampling = _padded(setup, rnd.prompts.shape[0])
            args = (sampling, setup.stop_ids, setup.stop_seqs)
            margin = rnd.static.margin
            if stream:
                state = _start_jit(rnd.static, params, rnd.prompts, rnd.start, *args, rng, rnd.done)
                while True:
                    step = int(state.step)
                    tokens = np.asarray(state.out[:, margin + step - 1])[: rnd.rows]
                    yield "token", [int(t) if t != NO_TOKEN else None for t in tokens]
                    if step >= budget or bool(jnp.all(state.done)):
                        break
                    state = _advance_jit(rnd.static, params, state, *args, rng)
                out, steps = state.out, state.step
            else:
                out, steps = _generate_jit(rnd.static, params, rnd.prompts, rnd.start, *args, rng, rnd.done, budget)
            out = np.asarray(out)[: rnd.rows, margin : margin + int(steps)]
            for i in range(n):
                if not active[i]:
                    continue
                row = [int(t) for t in out[i] if t != NO_TOKEN][: remaining[i]]
                new[i].extend(row)
                trimmed, hit = _finish(new[i], setup.stop_tokens, setup.stop_sequences)
                if hit:
                    new[i], ends[i] = trimmed, new[i][len(trimmed) :]
                    stopped[i] = True
            round_no += 1
    reasons = ["stop" if s else "length" for s in stopped]
    yield "done", Generation(new, reasons, ends)


def generate(
    config: Config | ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    temperature: float | Sequence[float] = 1.0,
    top_k: int | Sequence[int] = 0,
    top_p: float | Sequence[float] = 1.0,
    min_p: float | Sequence[float] = 0.0,
    repetition_penalty: float | Sequence[float] = 1.0,
    seed: int = 0,
    stop_tokens: Sequence[int] = (),
    stop_sequences: Sequence[Sequence[int]] = (),
    vocab_limit: int | None = None,
    mesh: Mesh | None = None,
    overflow: str = "slide",
) -> Generation:
    """Continue each prompt (a list of token ids) by up to max_new_tokens tokens.

    Sampling settings take one value or one per prompt (jaxllm/sampling.py explains
    them; temperature 0 is greedy). A row ends at a stop token (e.g. EOS) or a stop
    sequence of token ids, which are removed from its output. vocab_limit keeps the
    padded rows of a model's vocabulary from being emitted. With a mesh, the cache and
    the batch are sharded like training activations (batch over data/fsdp, KV heads
    over tensor). Same seed, same output.
    """
    setup = _setup(
        config, prompts, max_new_tokens,
        dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty),
        stop_tokens, stop_sequences, vocab_limit, mesh, overflow,
    )  # fmt: skip
    result = None
    for kind, value in _rounds(config, params, prompts, max_new_tokens, setup, seed, overflow, stream=False):
        if kind == "done":
            result = value
    return result


def generate_stream(
    config: Config | ModelConfig,
    params,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    **kwargs,
) -> Iterator[list[int | None] | Generation]:
    """Like `generate`, but yields each step's tokens (one per prompt, None once a row
    has finished) as they are produced, and finally the `Generation` itself.

    The yielded tokens are raw: a stop token or sequence appears in them before the
    final Generation removes it.
    """
    seed = kwargs.pop("seed", 0)
    overflow = kwargs.pop("overflow", "slide")
    mesh = kwargs.pop("mesh", None)
    vocab_limit = kwargs.pop("vocab_limit", None)
    stop_tokens = kwargs.pop("stop_tokens", ())
    stop_sequences = kwargs.pop("stop_sequences", ())
    setup = _setup(config, prompts, max_new_tokens, kwargs, stop_tokens, stop_sequences, vocab_limit, mesh, overflow)
    for _, value in _rounds(config, params, prompts, max_new_tokens, setup, seed, overflow, stream=True):
        yield value


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


def sample(
    config: Config | ModelConfig,
    params,
    prompt: Sequence[int],
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = 40,
    seed: int = 0,
    stop_id: int | None = None,
    vocab_limit: int | None = None,
) -> list[int]:
    """One prompt's continuation (a convenience over `generate`)."""
    result = generate(
        config, params, [prompt], max_new_tokens, temperature=temperature, top_k=top_k or 0, seed=seed,
        stop_tokens=() if stop_id is None else (stop_id,), vocab_limit=vocab_limit,
    )  # fmt: skip
    return result.tokens[0]
