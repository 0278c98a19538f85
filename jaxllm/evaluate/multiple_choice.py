"""Multiple-choice evaluation by log-likelihood (HellaSwag, ARC, PIQA style).

Each choice is scored as the continuation " " + choice after the context (the
harness's default target delimiter is one space). Two conventions, as in
lm-evaluation-harness:
  acc       the choice with the highest summed log-probability wins;
  acc_norm  the highest log-probability per *character* of the choice wins, which
            removes the bias towards short endings (and, unlike per-token
            normalisation, does not depend on the tokenizer).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from jaxllm.config import Config, ModelConfig
from jaxllm.errors import DataError
from jaxllm.evaluate.scoring import encode_pair, score_rows, span_row
from jaxllm.model.api import model_config
from jaxllm.posttrain.data import load_records


@dataclasses.dataclass(frozen=True)
class MCExample:
    context: str
    choices: tuple[str, ...]
    label: int


@dataclasses.dataclass(frozen=True)
class MCResult:
    acc: float
    acc_norm: float
    n: int
    logprobs: list[list[float]]  # per example, per choice: sum log p(" " + choice | context)

    def as_dict(self) -> dict[str, float | int]:
        return {"acc": self.acc, "acc_norm": self.acc_norm, "n": self.n}


def _hellaswag_clean(text: str) -> str:
    """HellaSwag's WikiHow text carries markup: " [title]" ends a heading, other
    [tags] are noise, and removing them leaves double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _example(record: dict, i: int, path: Path) -> MCExample:
    if "ctx_a" in record and "endings" in record:  # HellaSwag's own format
        ctx = record["ctx_a"] + " " + record.get("ctx_b", "").capitalize()
        context = _hellaswag_clean(record.get("activity_label", "") + ": " + ctx)
        choices = [_hellaswag_clean(e) for e in record["endings"]]
    else:
        context = record.get("context", record.get("query", record.get("ctx")))
        choices = record.get("choices", record.get("endings"))
    label = record.get("label", record.get("gold"))
    if not isinstance(context, str):
        raise DataError(f"{path} record {i} has no string 'context' (or 'query', 'ctx', HellaSwag's 'ctx_a')")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise DataError(f"{path} record {i}: 'choices' (or 'endings') must be a list of two or more non-empty strings")
    try:
        label = int(label)
    except (TypeError, ValueError):
        raise DataError(f"{path} record {i}: 'label' (or 'gold') must be an integer index, got {label!r}") from None
    if not 0 <= label < len(choices):
        raise DataError(f"{path} record {i}: label {label} is not an index into its {len(choices)} choices")
    return MCExample(context, tuple(choices), label)


def read_mc(path: str | Path, limit: int = 0) -> list[MCExample]:
    """Examples from JSONL (or a .json list): HellaSwag records (ctx_a, ctx_b, activity_label, endings,
    label) or generic ones (context, choices, label). `limit` > 0 keeps the first N."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data {str(path)!r} does not exist")
    records = load_records(path)
    examples = [_example(r, i, path) for i, r in enumerate(records[:limit] if limit > 0 else records)]
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def choice_logprobs(
    config: Config | ModelConfig,
    params,
    tokenizer,
    requests: Sequence[tuple[str, str]],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> list[tuple[float, bool]]:
    """(log p(continuation | context), is_greedy) for each (context, continuation) text
    pair: what lm-eval calls `loglikelihood`."""
    max_len = model_config(config).max_seq_len
    rows = [span_row(*encode_pair(tokenizer, c, x), max_len) for c, x in requests]
    return [(s.logprob, s.greedy) for s in score_rows(config, params, rows, batch_size, progress)]


def evaluate_mc(
    config: Config | ModelConfig,
    params,
    tokenizer,
    examples: Sequence[MCExample],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> MCResult:
    """acc and acc_norm over the examples (every choice of every example in one batched pass)."""
    requests = [(ex.context, " " + choice) for ex in examples for choice in ex.choices]
    scores = choice_logprobs(config, params, tokenizer, requests, batch_size, progress)
    logprobs, k = [], 0
    correct = correct_norm = 0
    for ex in examples:
        lp = np.array([s for s, _ in scores[k : k + len(ex.choices)]])
        k += len(ex.choices)
        lengths = np.array([len(c) for c in ex.choices], dtype=np.float64)
        correct += int(np.argmax(lp) == ex.label)
        correct_norm += int(np.argmax(lp / lengths) == ex.label)
        logprobs.append(lp.tolist())
    n = len(examples)
    return MCResult(correct / n, correct_norm / n, n, logprobs)
