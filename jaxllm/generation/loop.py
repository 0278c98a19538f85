"""The host side of generation: check the request, then drive it round by round.

A round is one prefill + decode pass over the batch (jaxllm/generation/steps.py). Past the
context a model cannot attend beyond max_seq_len positions: with overflow="slide" (the
default) generation continues in a new round that re-reads the last half context of each
row as a fresh prompt (cropping the window once per half context instead of every token);
overflow="stop" ends those rows with finish reason "length". The same loop serves
`generate` (one compiled while_loop per round) and `generate_stream` (a Python loop over
the step functions, yielding each token as it is produced).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxllm.config import Config, MeshConfig, ModelConfig
from jaxllm.generation.steps import (
    _ANY,
    _NEVER,
    NO_TOKEN,
    _advance_jit,
    _generate_jit,
    _start_jit,
    _Static,
    bucket,
)
from jaxllm.model.api import model_config, param_logical_axes
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.rules import flax_rules, named_shardings, parse_rules
from jaxllm.sampling import GenerationError, SamplingParams, sampling_params


@dataclass(frozen=True)
class Generation:
    """New tokens per prompt (stop token / stop sequence removed) and why each ended:
    "stop" (a stop token or sequence) or "length" (max_new_tokens or the context).
    `stops` holds the stop token / sequence each row produced and lost (empty when it
    ran to "length"): tokens + stops is exactly what was sampled (PPO needs that)."""

    tokens: list[list[int]]
    finish_reasons: list[str]
    stops: list[list[int]] = field(default_factory=list)


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
    if isinstance(mesh, Layout):  # a run's layout (PPO): its rules as parsed once for the run
        mesh, table = mesh.mesh, mesh.rules
    elif mesh is not None:
        table = parse_rules((config.mesh if isinstance(config, Config) else MeshConfig()).rules)
    if mesh is not None:
        rules = flax_rules(table)
        # rows split over the axes the rules give `batch` (data, fsdp and expert by default)
        multiple = math.prod(mesh.shape[a] for a in dict(table).get("batch") or ())
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
            if not out.is_fully_addressable:  # a multi-process mesh (PPO's rollouts): every process takes all rows
                out = multihost_utils.process_allgather(out, tiled=True)
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
