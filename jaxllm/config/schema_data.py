"""The tokenizer and data sections: raw text -> tokenizer -> prepared shards -> batches."""

from __future__ import annotations

import dataclasses
from typing import Literal

TokenizerKind = Literal["bpe", "unigram", "char", "word"]


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Which tokenizer a run uses, and how `jaxllm tokenizer train` makes one.

    `path` is "byte" (256 byte ids, no training; byte 0 doubles as EOS/PAD), a
    sentencepiece `.model` file, or a Hugging Face `tokenizer.json` (an imported
    model's). The rest only matters when training one.
    """

    path: str = "byte"
    kind: TokenizerKind = "bpe"
    vocab_size: int = 8000
    byte_fallback: bool = True  # unseen characters become byte pieces: nothing is ever out of vocabulary
    character_coverage: float = 1.0  # share of characters that get their own piece; the rest fall back to bytes
    input_sentence_size: int = 0  # lines sampled for training; 0 = all
    max_sentence_length: int = 65536  # longest training line, in bytes; longer lines are skipped
    # pieces that always stay whole (sentencepiece user-defined symbols): the default chat
    # template's markers, so `<|user|>` costs one token, never seven
    special_tokens: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Document quality filters applied by `jaxllm data prepare` (see jaxllm/data/clean.py)."""

    min_chars: int = 20
    max_chars: int = 50_000_000
    min_alnum_fraction: float = 0.5  # letters+digits over non-whitespace characters
    max_repeated_line_fraction: float = 0.5  # non-empty lines that repeat an earlier line of the document


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """Exact (normalized-text hash) and near (MinHash + LSH) deduplication."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.8  # estimated Jaccard similarity of word shingles at which a document is a near-duplicate
    num_perm: int = 128  # MinHash signature length
    bands: int = 16  # LSH bands; num_perm / bands rows each
    shingle_words: int = 5


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Raw text -> prepared shards (`jaxllm data prepare`) -> batches (the grain pipeline)."""

    path: str = "data/prepared"  # the prepared dataset (manifest.json + shards): prepare writes it, train reads it
    inputs: tuple[str, ...] = ()  # raw text files, globs, or .jsonl files (one JSON object per line)
    jsonl_field: str = "text"
    val_fraction: float = 0.05  # share held out for validation (see data.split)
    # "document": whole documents, chosen by a seeded hash of their text;
    # "tail": the last val_fraction of every document (nanoGPT's split, for a one-document corpus).
    split: Literal["document", "tail"] = "document"
    # What one document is in a text file: the whole "file", or each "paragraph" (a block
    # between blank lines; a speech, in a play). Filters and dedup judge one document at a
    # time, so paragraphs let them see boilerplate and repeats inside files. JSONL: a record.
    documents: Literal["file", "paragraph"] = "file"
    shard_tokens: int = 16_777_216  # tokens per shard file
    seq_len: int = 256
    seed: int = 0
    num_workers: int = 0  # grain worker processes; 0 reads in the main process
    prefetch: int = 4  # batches read ahead of the train step
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()
