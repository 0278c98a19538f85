"""Log-likelihood of scored token spans, batched and jitted: the one primitive every
evaluation here is built on.

A *row* is (inputs, targets, mask): the model reads `inputs`, and the log-probability
of each `targets[t]` with mask[t] set is added to the row's score. Multiple choice
scores a continuation after its context; perplexity scores the new tokens of a
rolling window. Both go through `score_rows`, so the numbers of `jaxllm eval mc`,
`jaxllm eval perplexity` and the lm-evaluation-harness adapter come from the same code.

Rows are right-padded to a length bucket (a few compiled shapes, not one per row) and
grouped into fixed-size batches. Right padding is safe in a causal model: a position
never attends to the padding after it, so the real tokens' logits are unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config, ModelConfig
from jaxllm.data.tokenizer import prompt_start
from jaxllm.model.api import forward, model_config


@dataclasses.dataclass(frozen=True)
class Row:
    """One scored span: the model reads `inputs`; `targets[t]` counts where `mask[t]`."""

    inputs: np.ndarray  # (T,) int32
    targets: np.ndarray  # (T,) int32, inputs shifted left by one
    mask: np.ndarray  # (T,) bool: which targets are scored


@dataclasses.dataclass(frozen=True)
class RowScore:
    """Sum of log p(target) over a row's scored targets, how many there were, and
    whether each of them was the model's argmax (lm-eval's `is_greedy`)."""

    logprob: float
    count: int
    greedy: bool


def span_row(context: Sequence[int], continuation: Sequence[int], max_len: int) -> Row:
    """The row that scores `continuation` after `context`, left-truncated to max_len inputs.

    The sequence read is context + continuation minus its last token; only the
    continuation's tokens are scored. A context longer than the window loses its
    oldest tokens (the continuation keeps all of its own; one longer than the window
    keeps its last max_len tokens scored and is the caller's problem to avoid).
    """
    if not context:
        raise ValueError("span_row needs at least one context token (give the BOS/EOS id for an empty context)")
    if not continuation:
        raise ValueError("span_row needs a non-empty continuation to score")
    full = np.asarray([*context, *continuation], dtype=np.int32)[-(max_len + 1) :]
    inputs, targets = full[:-1], full[1:]
    mask = np.zeros(len(targets), dtype=bool)
    mask[-min(len(continuation), len(targets)) :] = True
    return Row(inputs, targets, mask)


def length_bucket(n: int, max_len: int, minimum: int = 16) -> int:
    """Next power of two >= n (at least `minimum`, at most max_len): few compiled shapes."""
    b = minimum
    while b < n:
        b *= 2
    return min(b, max_len)


@functools.partial(jax.jit, static_argnums=0)
def _score_batch(model: ModelConfig, params, inputs, targets, mask):
    logits = forward(model, params, inputs)  # (B, T, V) float32
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    target_logp = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    hit = jnp.argmax(logits, axis=-1) == targets
    return (
        jnp.sum(jnp.where(mask, target_logp, 0.0), axis=-1),
        jnp.sum(mask, axis=-1),
        jnp.all(hit | ~mask, axis=-1),
    )


def score_rows(
    config: Config | ModelConfig,
    params,
    rows: Sequence[Row],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[RowScore]:
    """Score every row; results in the order given.

    Rows are sorted by length so each batch pads to the smallest bucket it needs
    (that sort is undone before returning). `progress(done, total)` is called after
    each batch, for long evaluations.
    """
    model = model_config(config)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be at least 1")
    for i, r in enumerate(rows):
        if len(r.inputs) > model.max_seq_len:
            raise ValueError(f"row {i} has {len(r.inputs)} inputs; the model reads at most {model.max_seq_len}")
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].inputs))
    out: list[RowScore | None] = [None] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        T = length_bucket(max(len(rows[i].inputs) for i in idx), model.max_seq_len)
        inputs = np.zeros((batch_size, T), np.int32)  # a full batch every time: one shape per bucket
        targets = np.zeros((batch_size, T), np.int32)
        mask = np.zeros((batch_size, T), bool)
        for j, i in enumerate(idx):
            n = len(rows[i].inputs)
            inputs[j, :n], targets[j, :n], mask[j, :n] = rows[i].inputs, rows[i].targets, rows[i].mask
        logprob, count, greedy = jax.device_get(_score_batch(model, params, inputs, targets, mask))
        for j, i in enumerate(idx):
            out[i] = RowScore(float(logprob[j]), int(count[j]), bool(greedy[j]))
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return out  # type: ignore[return-value]


def document_start(tokenizer) -> int:
    """The token a document follows in the packed training stream: BOS, else EOS (the
    previous document's end)."""
    return tokenizer.bos_id if tokenizer.bos_id is not None else tokenizer.eos_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation), split where the text splits.

    The context starts with the document-start token (BOS, else EOS), as documents
    did in training; a Hugging Face tokenizer's context starts as its source tokenizer
    starts text (prompt_start), which may be no token at all (then an empty context is
    EOS, for something to score from); an empty context is that token alone. Spaces at the end of the
    context move to the start of the continuation (so "Q: x " + "y" is tokenized like
    "Q: x" + " y", the way the text appears in training), and the continuation's ids
    are those of the whole text after the context's ids, so a merge across the
    boundary is not split apart.
    """
    n_space = len(context) - len(context.rstrip(" "))
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    if hasattr(tokenizer, "adds_bos"):
        start = prompt_start(tokenizer) or ([] if context else [int(tokenizer.eos_id)])
    else:
        start = [document_start(tokenizer)]
    ctx = [int(t) for t in tokenizer.encode(context)] if context else []
    whole = [int(t) for t in tokenizer.encode(context + continuation)]
    if whole[: len(ctx)] != ctx or len(whole) == len(ctx):
        # the boundary merged into the context's last token: encode the two apart
        return start + ctx, [int(t) for t in tokenizer.encode(continuation)]
    return start + ctx, whole[len(ctx) :]
