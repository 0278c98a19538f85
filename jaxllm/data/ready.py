"""Make a config's data exist: train its tokenizer and prepare its shards if missing.

This is what lets `jaxllm train shakespeare-char-cpu` be the first command on a fresh
machine: a preset names its inputs, tokenizer file and dataset directory, and
whatever is not there yet is built once, with the same code as the explicit
`jaxllm tokenizer train` and `jaxllm data prepare` verbs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from jaxllm.config import Config
from jaxllm.data.clean import clean_text
from jaxllm.data.errors import DataError
from jaxllm.data.prepare import MANIFEST, ReadReport, prepare, read_documents
from jaxllm.data.tokenizer import SentencePieceTokenizer, train_sentencepiece


def train_tokenizer(cfg: Config, log: Callable[[str], None] = print) -> SentencePieceTokenizer:
    """Train `cfg.tokenizer` on the cleaned documents of `cfg.data.inputs`."""
    if cfg.tokenizer.path == "byte":
        raise DataError("tokenizer.path=byte needs no training; set tokenizer.path=FILE.model to write a model")
    if not cfg.data.inputs:
        raise DataError("data.inputs is empty; name the text files to train on, e.g. data.inputs=[corpus/*.txt]")
    report = ReadReport()
    tok = train_sentencepiece((clean_text(d) for d in read_documents(cfg.data, report)), cfg.tokenizer,
                              cfg.tokenizer.path, log=log)  # fmt: skip
    for path in report.unreadable + report.empty:
        log(f"warning: skipped {path}")
    return tok


def ensure_data(cfg: Config, log: Callable[[str], None] = print) -> None:
    """Build the tokenizer and the prepared dataset if they do not exist yet."""
    if cfg.tokenizer.path != "byte" and not Path(cfg.tokenizer.path).exists():
        log(f"tokenizer {cfg.tokenizer.path} does not exist yet: training it on data.inputs")
        train_tokenizer(cfg, log)
    if not (Path(cfg.data.path) / MANIFEST).exists():
        log(f"{cfg.data.path} has no prepared dataset yet: preparing it from data.inputs")
        prepare(cfg, log)
