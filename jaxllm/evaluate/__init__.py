"""Evaluation: perplexity and bits-per-byte, multiple-choice scoring, and an adapter
for EleutherAI's lm-evaluation-harness, all on one batched log-likelihood scorer."""

from jaxllm.evaluate.multiple_choice import MCExample, MCResult, evaluate_mc, read_mc
from jaxllm.evaluate.perplexity import PerplexityResult, perplexity, read_texts, rolling_rows
from jaxllm.evaluate.scoring import Row, RowScore, encode_pair, score_rows, span_row

__all__ = [
    "MCExample",
    "MCResult",
    "PerplexityResult",
    "Row",
    "RowScore",
    "encode_pair",
    "evaluate_mc",
    "perplexity",
    "read_mc",
    "read_texts",
    "rolling_rows",
    "score_rows",
    "span_row",
]
