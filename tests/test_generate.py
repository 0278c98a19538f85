"""KV-cache decoding: exact against recomputing the full forward pass, ragged batches,
stopping, context overflow, sharding, streaming, bucketing and bad input."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.cli import main
from jaxllm.config import MeshConfig, ModelConfig, RopeScalingConfig
from jaxllm.data.tokenizer import ByteTokenizer
from jaxllm.generation import (
    GenerationError,
    bucket,
    decode_step,
    generate,
    generate_stream,
    left_pad,
    prefill,
)
from jaxllm.generation import loop as generation_loop
from jaxllm.generation.steps import _generate_jit
from jaxllm.interactive import TextStream, stream_text
from jaxllm.parallel.mesh import make_mesh

GPT2 = ModelConfig(vocab_size=61, max_seq_len=32, d_model=32, num_layers=2, num_heads=4)
LLAMA = ModelConfig(
    vocab_size=61, max_seq_len=32, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, norm="rmsnorm",
    position="rope", mlp="swiglu", use_bias=False, tie_embeddings=False,
    rope_scaling=RopeScalingConfig(kind="llama3", factor=8.0, original_max_seq_len=16),
)  # fmt: skip
RAGGED = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12], [40, 41, 42, 43, 44]]


@pytest.fixture(scope="module")
def params():
    return {"gpt2": jaxllm.init_params(GPT2, jax.random.key(1)), "llama": jaxllm.init_params(LLAMA, jax.random.key(2))}


_forward = jax.jit(jaxllm.forward, static_argnums=0)


def _full_forward_logits(cfg, params, rows: list[list[int]]) -> np.ndarray:
    """Next-token logits (B, V) of each row, recomputed over its whole sequence: rows are
    right-padded to the context (one compiled program), which causality makes harmless."""
    padded = np.zeros((len(rows), cfg.max_seq_len), np.int32)
    for b, r in enumerate(rows):
        padded[b, : len(r)] = r
    logits = np.asarray(_forward(cfg, params, jnp.asarray(padded)))
    return np.stack([logits[b, len(r) - 1] for b, r in enumerate(rows)])


def _greedy_recompute(cfg, params, prompts: list[list[int]], n: int) -> list[list[int]]:
    seqs = [list(p) for p in prompts]
    for _ in range(n):
        for seq, logits in zip(seqs, _full_forward_logits(cfg, params, seqs), strict=True):
            seq.append(int(np.argmax(logits)))
    return [s[len(p) :] for s, p in zip(seqs, prompts, strict=True)]


@pytest.mark.parametrize("family,cfg", [("gpt2", GPT2), ("llama", LLAMA)])
def test_cached_logits_equal_the_full_forward_pass_at_every_step(family, cfg, params):
    p = params[family]
    tokens, start = left_pad(RAGGED, width=16)  # extra left padding on every row
    logits, cache = prefill(cfg, p, tokens, start, slots=16 + 8)
    seqs = [list(r) for r in RAGGED]
    for step in range(8):
        np.testing.assert_allclose(np.asarray(logits), _full_forward_logits(cfg, p, seqs), atol=2e-5, rtol=1e-5)
        nxt = np.asarray(jnp.argmax(logits, axis=-1))
        for b, seq in enumerate(seqs):
            seq.append(int(nxt[b]))
        logits, cache = decode_step(cfg, p, nxt, cache)
        assert int(cache.index) == 16 + step + 1


@pytest.mark.parametrize("family,cfg", [("gpt2", GPT2), ("llama", LLAMA)])
def test_greedy_generate_equals_greedy_recompute_on_a_ragged_batch(family, cfg, params):
    p = params[family]
    out = generate(cfg, p, RAGGED, 10, temperature=0.0)
    assert out.tokens == _greedy_recompute(cfg, p, RAGGED, 10)
    assert out.finish_reasons == ["length"] * len(RAGGED)
    # a row's tokens do not depend on the batch around it (and the streamed run is the same)
    assert generate(cfg, p, RAGGED[1:2], 10, temperature=0.0).tokens[0] == out.tokens[1]
    *steps, final = list(generate_stream(cfg, p, RAGGED, 10, temperature=0.0))
    assert final == out and [s[0] for s in steps] == out.tokens[0]


def test_sampled_rows_are_seeded_and_batch_independent(params):
    p = params["llama"]
    kw = dict(temperature=1.0, top_k=20, top_p=0.9, seed=7)
    a = generate(LLAMA, p, RAGGED, 12, **kw)
    assert a == generate(LLAMA, p, RAGGED, 12, **kw)
    assert generate(LLAMA, p, RAGGED[:1], 12, **kw).tokens[0] == a.tokens[0]  # same row index, same key
    assert generate(LLAMA, p, RAGGED, 12, **{**kw, "seed": 8}) != a
    assert a == next(x for x in generate_stream(LLAMA, p, RAGGED, 12, **kw) if not isinstance(x, list))


def test_stop_tokens_and_stop_sequences_end_rows_early(params):
    p = params["gpt2"]
    free = generate(GPT2, p, RAGGED, 12, temperature=0.0).tokens
    stop_tok = free[0][3]  # row 0 emits it at step 3 (or earlier)
    first = free[0].index(stop_tok)
    out = generate(GPT2, p, RAGGED, 12, temperature=0.0, stop_tokens=[stop_tok])
    assert out.tokens[0] == free[0][:first] and out.finish_reasons[0] == "stop"
    for row, full in zip(out.tokens[1:], free[1:], strict=True):  # other rows: cut at their own first stop_tok
        assert row == (full[: full.index(stop_tok)] if stop_tok in full else full)

    seq = free[1][4:6]
    got = generate(GPT2, p, RAGGED, 12, temperature=0.0, stop_sequences=[seq, [60, 60, 60]])
    cut = next(i for i in range(len(free[1]) - 1) if free[1][i : i + 2] == seq)
    assert got.tokens[1] == free[1][:cut] and got.finish_reasons[1] == "stop"


def test_the_loop_exits_as_soon_as_every_row_has_stopped(params):
    p = params["gpt2"]
    free = generate(GPT2, p, [[5, 6, 7]], 8, temperature=0.0).tokens[0]
    out = generate(GPT2, p, [[5, 6, 7]], 300, temperature=0.0, stop_tokens=[free[1]], overflow="stop")
    assert out.tokens[0] == free[: free.index(free[1])] and out.finish_reasons == ["stop"]
    static_steps = []
    real = _generate_jit

    def spy(*args):
        result = real(*args)
        static_steps.append(int(result[1]))
        return result

    g = generation_loop  # the module whose round loop calls _generate_jit
    g._generate_jit, saved = spy, g._generate_jit
    try:
        generate(GPT2, p, [[5, 6, 7]], 25, temperature=0.0, stop_tokens=[free[1]], overflow="stop")
    finally:
        g._generate_jit = saved
    assert static_steps == [free.index(free[1]) + 1]  # steps run, not 25


def test_context_overflow_slides_or_stops(params):
    p = params["gpt2"]
    prompt = list(range(1, 21))  # 20 of 32 positions
    stopped = generate(GPT2, p, [prompt], 30, temperature=0.0, overflow="stop")
    assert len(stopped.tokens[0]) == 12 and stopped.finish_reasons == ["length"]
    slid = generate(GPT2, p, [prompt], 30, temperature=0.0)
    assert len(slid.tokens[0]) == 30 and slid.tokens[0][:12] == stopped.tokens[0]
    # after the slide, greedy continues from the last half context (16 tokens)
    ids = prompt + slid.tokens[0][:12]
    window = ids[-16:]
    assert slid.tokens[0][12] == int(np.argmax(_full_forward_logits(GPT2, p, [window])[0]))


def test_prompt_lengths_share_compiled_programs(params):
    p = params["gpt2"]
    assert [bucket(n) for n in (1, 16, 17, 33)] == [16, 16, 32, 64]
    generate(GPT2, p, [[1, 2]], 5, temperature=0.0)
    size = _generate_jit._cache_size()
    generate(GPT2, p, [[1, 2, 3, 4, 5, 6, 7]], 7, temperature=0.3, top_k=5, top_p=0.5, min_p=0.1, seed=4)
    generate(GPT2, p, [[9] * 15], 3, temperature=1.0)
    assert _generate_jit._cache_size() == size  # new lengths and sampling settings: no recompile


def test_sharded_generation_equals_single_device(params):
    cfg = dataclasses.replace(LLAMA, vocab_size=64)  # the vocabulary splits over tensor=2
    p = jaxllm.init_params(cfg, jax.random.key(3))
    mesh = make_mesh(MeshConfig(data=2, fsdp=2, tensor=2, pipeline=1))
    single = generate(cfg, p, RAGGED[:3], 6, temperature=0.0)
    sharded = generate(cfg, p, RAGGED[:3], 6, temperature=0.0, mesh=mesh)  # 3 rows pad to 4
    assert sharded == single

    # and the cache really is split: batch over data x fsdp, KV heads over tensor
    g = generation_loop
    setup = g._setup(cfg, RAGGED[:3], 6, {}, (), (), None, mesh, "slide")
    rnd = g._prepare_round(setup, RAGGED[:3], [False] * 3, 6)
    with jax.set_mesh(mesh):
        state = g._start_jit(rnd.static, g._place(setup, p), rnd.prompts, rnd.start, g._padded(setup, 4),
                             setup.stop_ids, setup.stop_seqs, jax.random.key(0), rnd.done)  # fmt: skip
    spec = state.cache.k.sharding.spec
    assert tuple(spec)[1:4] == (("data", "fsdp"), None, "tensor"), spec  # context 1: length not split


def test_bad_input_gets_clear_errors(params):
    p = params["gpt2"]
    with pytest.raises(GenerationError, match="longer than the model's context"):
        generate(GPT2, p, [list(range(33))], 4)
    with pytest.raises(GenerationError, match="max_new_tokens must be >= 0"):
        generate(GPT2, p, [[1]], -1)
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(GenerationError, match=r"top_p must be in \(0, 1\]"):
            generate(GPT2, p, [[1]], 4, top_p=bad)
    with pytest.raises(GenerationError, match="temperature must be >= 0"):
        generate(GPT2, p, [[1]], 4, temperature=-1.0)
    with pytest.raises(GenerationError, match="prompt 1 is empty"):
        generate(GPT2, p, [[1], []], 4)
    with pytest.raises(GenerationError, match="outside the vocabulary"):
        generate(GPT2, p, [[61]], 4)
    with pytest.raises(GenerationError, match="2 values for 1 prompts"):
        generate(GPT2, p, [[1]], 4, temperature=[0.5, 0.7])
    assert generate(GPT2, p, [[1]], 0).tokens == [[]]
    assert main(["sample", "no-such-run", "--num-samples", "0"]) == 2


def test_text_streaming_holds_partial_characters_and_cuts_at_stop_strings(params):
    tok = ByteTokenizer()
    stream = TextStream(tok.decode)
    pieces = [stream.push(b) for b in "né!".encode()]
    assert pieces == ["n", "", "é", "!"]  # the 2-byte character appears whole

    cfg = dataclasses.replace(GPT2, vocab_size=128)  # ASCII only: every token is a whole character
    p = jaxllm.init_params(cfg, jax.random.key(4))
    sampling = {"temperature": 1.0, "seed": 3}
    writes: list[str] = []

    class Out:
        def write(self, s: str) -> None:
            writes.append(s)

        def flush(self) -> None:
            pass

    full, reason = stream_text(cfg, p, tok, [65, 66], 20, sampling, [], Out())
    free = generate(cfg, p, [[65, 66]], 20, stop_tokens=[tok.eos_id], **sampling).tokens[0]
    assert full == tok.decode(free) and "".join(writes) == full
    assert len([w for w in writes if w]) > 3  # printed piece by piece, not at the end
    stop = full[8:10]
    assert full.index(stop) >= 4, full
    writes.clear()
    cut, reason = stream_text(cfg, p, tok, [65, 66], 20, sampling, [stop], Out())
    assert cut == full[: full.index(stop)] and reason == "stop" and "".join(writes) == cut
