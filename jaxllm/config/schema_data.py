"""The tokenizer and data sections: raw text -> tokenizer -> prepared shards -> batches.

Every field has a `#:` comment on the lines above it: what it means and its unit
(`python -m jaxllm.config.docs` turns them into docs/config.md).
"""

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

    #: The tokenizer: "byte", a sentencepiece .model file, or a tokenizer.json; `jaxllm tokenizer train` writes here.
    path: str = "byte"
    #: Algorithm when training one: "bpe" (byte-pair merges), "unigram" (a unigram language model), "char", "word".
    kind: TokenizerKind = "bpe"
    #: Pieces in a trained tokenizer, special and byte pieces included (model.vocab_size must be at least this).
    vocab_size: int = 8000
    #: Unseen characters become byte pieces: nothing is ever out of vocabulary.
    byte_fallback: bool = True
    #: Share of characters (by frequency) that get their own piece; the rest fall back to bytes.
    character_coverage: float = 1.0
    #: Lines sampled for training, in lines; 0 = all.
    input_sentence_size: int = 0
    #: Longest training line, in bytes; longer lines are skipped.
    max_sentence_length: int = 65536
    #: Pieces that always stay whole (sentencepiece user-defined symbols): the default chat template's markers,
    #: so `<|user|>` costs one token, never seven.
    special_tokens: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Document quality filters applied by `jaxllm data prepare` (see jaxllm/data/clean.py)."""

    #: Shortest document kept, in characters.
    min_chars: int = 20
    #: Longest document kept, in characters.
    max_chars: int = 50_000_000
    #: Least share of letters and digits among a document's non-whitespace characters.
    min_alnum_fraction: float = 0.5
    #: Most share of a document's non-empty lines that may repeat an earlier line of it.
    max_repeated_line_fraction: float = 0.5


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """Exact (normalized-text hash) and near (MinHash + LSH) deduplication."""

    #: Drop documents whose normalized text hashes equal an earlier document's.
    exact: bool = True
    #: Drop near-duplicates found by MinHash + LSH.
    near: bool = True
    #: Estimated Jaccard similarity of word shingles at which a document is a near-duplicate, in (0, 1].
    threshold: float = 0.8
    #: MinHash signature length, in hash functions.
    num_perm: int = 128
    #: LSH bands; each holds num_perm / bands signature rows.
    bands: int = 16
    #: Words per shingle (the overlapping word n-grams compared).
    shingle_words: int = 5


@dataclasses.dataclass(frozen=True)
class MixtureComponent:
    """One dataset of a streaming training mixture (`data.mixture`; see jaxllm/data/stream.py)."""

    #: A prepared dataset folder (its train split is read), or raw text files/globs (.parquet, .jsonl, .jsonl.zst,
    #: .array_record of UTF-8 text, .txt) that are tokenized on the fly by the loader.
    path: str = ""
    #: Relative sampling weight; the weights of all components are normalized to sum to 1.
    weight: float = 1.0
    #: The text field of parquet and JSONL records.
    field: str = "text"


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Raw text -> prepared shards (`jaxllm data prepare`) -> batches (the grain pipeline)."""

    #: The prepared dataset directory (manifest.json + shards): prepare writes it, train reads it.
    path: str = "data/prepared"
    #: Raw text files, globs, or .jsonl files (one JSON object per line).
    inputs: tuple[str, ...] = ()
    #: The key of each JSONL record that holds its text.
    jsonl_field: str = "text"
    #: Share of the text held out for validation (see data.split), in [0, 1).
    val_fraction: float = 0.05
    #: How the validation share is chosen: "document": whole documents, chosen by a seeded hash of their text;
    #: "tail": the last val_fraction of every document (for a one-document corpus).
    split: Literal["document", "tail"] = "document"
    #: What one document is in a text file: the whole "file", or each "paragraph" (a block between blank lines; a
    #: speech, in a play). Filters and dedup judge one document at a time, so paragraphs let them see boilerplate
    #: and repeats inside files. JSONL: a record.
    documents: Literal["file", "paragraph"] = "file"
    #: Tokens per shard file of the prepared dataset.
    shard_tokens: int = 16_777_216
    #: Shard files prepare writes: "bin" (jaxllm's memory-mappable format) or "array_record" (grain's native
    #: random-access record format, one record per document); both are listed with their sha256 in the manifest.
    shard_format: Literal["bin", "array_record"] = "bin"
    #: Tokens per training row: documents are packed into rows of this length. At most model.max_seq_len (the
    #: longest context the model supports); shorter trains on shorter contexts.
    seq_len: int = 256
    #: Seed of the validation split's hash and of the order rows are read in.
    seed: int = 0
    #: Grain worker processes; 0 reads in the main process.
    num_workers: int = 0
    #: Batches read ahead of the train step.
    prefetch: int = 4
    #: Streaming training mixture: when set, training reads these datasets through grain (weighted sampling,
    #: tokenizing raw text on the fly) instead of data.path's packed rows; empty: data.path.
    mixture: tuple[MixtureComponent, ...] = ()
    #: Independent reader shards of the streaming mixture; each process reads the documents of its own shards,
    #: so the global stream is the same for any process count dividing it. 0: the number of processes.
    stream_shards: int = 0
    #: Document quality filters (see the data.filters keys).
    filters: FilterConfig = FilterConfig()
    #: Deduplication (see the data.dedup keys).
    dedup: DedupConfig = DedupConfig()
