"""Perplexity and bits-per-byte of documents, with rolling windows for long ones.

Every token of a document is scored. The first is predicted from the document-start
token (BOS, else EOS), as the model saw documents begin in training. A document
longer than the context is cut into windows: each window reads `max_len` tokens and
scores only the last ones, which no earlier window scored. With `stride` = max_len
the windows barely overlap (fast: about one forward per max_len tokens, but a token
just after a window boundary has little context); a smaller stride scores `stride`
new tokens per window so every token after the first window has at least
`max_len - stride` tokens of context (slower, lower perplexity).

Perplexity depends on the tokenizer (a model with a larger vocabulary predicts fewer,
harder tokens), so we also report bits per UTF-8 byte of the text:
    bits_per_byte = total negative log-likelihood (nats) / ln 2 / total bytes,
which compares models with different vocabularies on the same text.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxllm.config import Config, ModelConfig
from jaxllm.errors import DataError
from jaxllm.evaluate.scoring import Row, document_start, score_rows
from jaxllm.model.api import model_config
from jaxllm.posttrain.data import load_records, read_utf8


def rolling_rows(tokens: Sequence[int], start_id: int, max_len: int, stride: int | None = None) -> list[Row]:
    """Rows that together score every token of `tokens` exactly once.

    The scored sequence is [start_id] + tokens; target t is predicted from the inputs
    before it. The first window scores the first max_len targets; each next one scores
    the following `stride` targets (fewer at the end) and reads the max_len inputs that
    end at its last target, so the last window also gets a full context.
    """
    stride = max_len if stride is None else stride
    if not 0 < stride <= max_len:
        raise ValueError(f"stride={stride} must be between 1 and the context length {max_len}")
    seq = np.asarray([start_id, *tokens], dtype=np.int32)
    n = len(seq) - 1  # number of targets (= of document tokens)
    rows, done = [], 0
    while done < n:
        end = min(done + (stride if done else max_len), n)
        begin = max(0, end - max_len)
        inputs, targets = seq[begin:end], seq[begin + 1 : end + 1]
        mask = np.zeros(end - begin, dtype=bool)
        mask[done - begin :] = True
        rows.append(Row(inputs, targets, mask))
        done = end
    return rows


@dataclasses.dataclass(frozen=True)
class PerplexityResult:
    """Totals over the documents, and the per-document log-likelihoods (lm-eval's
    loglikelihood_rolling values)."""

    nll: float  # total negative log-likelihood, nats
    tokens: int
    bytes: int
    documents: int
    windows: int
    doc_logprobs: list[float]

    @property
    def loss(self) -> float:
        """Mean negative log-likelihood per token, nats."""
        return self.nll / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_byte(self) -> float:
        return self.nll / math.log(2) / self.bytes

    def as_dict(self) -> dict[str, float | int]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_byte": self.bits_per_byte,
            "tokens": self.tokens,
            "bytes": self.bytes,
            "documents": self.documents,
            "windows": self.windows,
        }


def document_logprobs(
    config: Config | ModelConfig,
    params,
    docs_tokens: Sequence[Sequence[int]],
    start_id: int,
    stride: int | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[float], int]:
    """(log p(document) for each document, number of windows read)."""
    max_len = model_config(config).max_seq_len
    rows, owner = [], []
    for d, tokens in enumerate(docs_tokens):
        for row in rolling_rows(tokens, start_id, max_len, stride):
            rows.append(row)
            owner.append(d)
    scores = score_rows(config, params, rows, batch_size, progress)
    totals = [0.0] * len(docs_tokens)
    for d, s in zip(owner, scores, strict=True):
        totals[d] += s.logprob
    return totals, len(rows)


def perplexity(
    config: Config | ModelConfig,
    params,
    tokenizer,
    texts: Sequence[str],
    stride: int | None = None,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    """Loss, perplexity and bits-per-byte of `texts`, each scored as its own document."""
    texts = [t for t in texts if t]
    if not texts:
        raise DataError("no text to evaluate: every document is empty")
    max_len = model_config(config).max_seq_len
    if stride is not None and not 0 < stride <= max_len:
        raise DataError(f"stride {stride} is outside 1..{max_len} (the model's context); give a stride in that range")
    docs = [[int(i) for i in tokenizer.encode(t)] for t in texts]
    logprobs, windows = document_logprobs(config, params, docs, document_start(tokenizer), stride, batch_size, progress)
    return PerplexityResult(
        nll=-sum(logprobs),
        tokens=sum(len(d) for d in docs),
        bytes=sum(len(t.encode("utf-8")) for t in texts),
        documents=len(texts),
        windows=windows,
        doc_logprobs=logprobs,
    )


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    """Documents from a .txt file (one document), a .jsonl / .json file (the `field` of
    each record), or a directory of .txt files (one document each, sorted by name)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise DataError(f"{path} has no .txt files; give a .txt, .jsonl or .json file or a directory of .txt")
        return [read_utf8(f, "--data") for f in files]
    if not path.is_file():
        raise DataError(f"--data {str(path)!r} does not exist")
    if path.suffix == ".txt":
        return [read_utf8(path, "--data")]
    if path.suffix in (".jsonl", ".json"):
        return [_field(r, field, path, i) for i, r in enumerate(load_records(path))]
    raise DataError(f"{path}: unknown suffix {path.suffix!r}; give a .txt, .jsonl or .json file")


def _field(record: dict, field: str, path: Path, i: int) -> str:
    if not isinstance(record, dict) or not isinstance(record.get(field), str):
        raise DataError(f"{path} record {i} has no string field {field!r}; choose the text field with --field")
    return record[field]
