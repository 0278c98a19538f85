"""The public entry points: `generate` (a batch to completion), `generate_stream` (token by
token, same result) and `sample` (one prompt). All three share one request check and one
round loop (jaxllm/generation/loop.py), so streaming returns exactly what `generate` does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from jax.sharding import Mesh

from jaxllm.config import Config, ModelConfig
from jaxllm.generation.loop import Generation, _rounds, _setup


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
