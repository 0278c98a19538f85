"""The per-document stages of preparation, and the manifest, shared by both paths.

`jaxllm data prepare` runs in one process (jaxllm.data.prepare) or as a Beam pipeline
(jaxllm.data.pipeline). Both must keep the same documents and write the same bytes, so
everything that decides what a document becomes lives here once:

  judge        clean, then the first failing filter (or None), then the exact-dedup key
  split_parts  which split(s) a kept document goes to: by a seeded hash of its key, or
               its tail (data.split=tail)
  ShardRoller  the shard layout: documents of a split, in input order, fill a shard until
               it holds >= data.shard_tokens tokens, then the next one starts
  Removed      what a stage removed: counts, characters, the first examples in input order
  build_manifest
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxllm.config import Config, DataConfig
from jaxllm.data.clean import clean_text, filter_reason
from jaxllm.data.dedup import exact_key
from jaxllm.data.manifest import FORMAT
from jaxllm.data.shards import ShardWriter, shard_writer
from jaxllm.data.sources import ReadReport

SPLITS = ("train", "val")
EXAMPLES_PER_REASON = 3


def example(text: str) -> str:
    """A removed document as one short line, for the manifest and the log."""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= 100 else one_line[:97] + "..."


@dataclass
class Removed:
    """Documents and characters one filter or dedup stage removed, with the first few as examples.

    Counts alone do not say whether a filter removed junk or good text; the examples do, so
    they go into the manifest and the prepare log.
    """

    docs: int = 0
    chars: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.docs += 1
        self.chars += len(text)
        if len(self.examples) < EXAMPLES_PER_REASON:
            self.examples.append(example(text))


def judge(raw: str, data: DataConfig) -> tuple[str, str | None, str]:
    """(cleaned text, the failing filter's name or None, exact-dedup key; "" when filtered)."""
    text = clean_text(raw)
    reason = filter_reason(text, data.filters)
    return text, reason, ("" if reason is not None else exact_key(text))


def is_validation(text_key: str, seed: int, fraction: float) -> bool:
    """Deterministic split by content: hash(seed, normalized text) < fraction."""
    h = hashlib.sha256(f"{seed}:{text_key}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction


def split_parts(text: str, key: str, data: DataConfig) -> list[tuple[str, str]]:
    """[(split, text)] of a kept document; empty parts are left out."""
    if data.split == "tail":  # the last val_fraction of every document is held out
        cut = int(round(len(text) * (1 - data.val_fraction)))
        parts = [("train", text[:cut]), ("val", text[cut:])]
    else:
        parts = [("val" if is_validation(key, data.seed, data.val_fraction) else "train", text)]
    return [(split, part) for split, part in parts if part]


class ShardRoller:
    """Rolls the documents of one split, in input order, into shard files of ~shard_tokens tokens."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int, fmt: str = "bin"):
        self.out, self.split, self.dtype, self.shard_tokens, self.fmt = out, split, dtype, shard_tokens, fmt
        self.shards: list[dict[str, Any]] = []
        self._writer: ShardWriter | None = None

    def add(self, tokens: np.ndarray) -> None:
        if self._writer is None:
            self._writer = shard_writer(self.out, self.split, len(self.shards), self.dtype, self.fmt)
        self._writer.add(tokens)
        if self._writer.n_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if self._writer is not None and len(self._writer):
            self.shards.append(self._writer.close())
        self._writer = None

    def summary(self) -> dict[str, Any]:
        return {
            "docs": sum(s["docs"] for s in self.shards),
            "tokens": sum(s["tokens"] for s in self.shards),
            "shards": self.shards,
        }


def shard_starts(lengths: np.ndarray, shard_tokens: int) -> np.ndarray:
    """Index (into `lengths`, the token counts of a split's documents in input order) of each
    shard's first document: `ShardRoller`'s rule, computed from the lengths alone, so the
    pipeline can lay shards out without holding their tokens."""
    starts, total = [0], 0
    for i, n in enumerate(lengths.tolist()):
        total += n
        if total >= shard_tokens and i + 1 < len(lengths):
            starts.append(i + 1)
            total = 0
    return np.array(starts if len(lengths) else [], np.int64)


def tokenizer_entry(cfg: Config, tokenizer, dtype: np.dtype) -> dict[str, Any]:
    return {
        "path": cfg.tokenizer.path if cfg.tokenizer.path == "byte" else os.path.abspath(cfg.tokenizer.path),
        "identity": tokenizer.identity,
        "vocab_size": tokenizer.vocab_size,
        "bos_id": tokenizer.bos_id,
        "eos_id": tokenizer.eos_id,
        "pad_id": tokenizer.pad_id,
        "dtype": dtype.name,
    }


def build_manifest(cfg: Config, tokenizer_info: dict, splits: dict, read: int, filtered: dict[str, int],
                   removed: dict[str, Removed], report: ReadReport, engine: str) -> dict[str, Any]:  # fmt: skip
    """The manifest of a prepared dataset (see docs/data.md); `engine` is informational only."""
    data = cfg.data
    return {
        "format": FORMAT,
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shard_format": data.shard_format,
        "engine": engine,
        "tokenizer": tokenizer_info,
        "splits": splits,
        "documents": {
            "read": read,
            "filtered": filtered,
            "duplicates_removed": {
                "exact": removed["exact_duplicate"].docs if "exact_duplicate" in removed else 0,
                "near": removed["near_duplicate"].docs if "near_duplicate" in removed else 0,
            },
            "removed": {reason: asdict(r) for reason, r in removed.items()},
        },
        "problems": {
            "unreadable": report.unreadable,
            "empty": report.empty,
            "non_utf8": report.non_utf8,
            "bad_json_lines": report.bad_json_lines,
        },
        "sources": report.sources,
        "settings": {
            "filters": asdict(data.filters),
            "dedup": asdict(data.dedup),
            "val_fraction": data.val_fraction,
            "split": data.split,
            "seed": data.seed,
            "jsonl_field": data.jsonl_field,
            "documents": data.documents,
        },
    }


def what_was_lost(read: int, filtered: dict[str, int], deduped: int, report: ReadReport) -> str:
    """Why no training document is left, in words: where the documents went, not a dump of counts."""
    if not read:
        missing = report.unreadable + report.empty
        why = [f"{len(missing)} input(s) missing, unreadable or empty (e.g. {missing[0]})"] if missing else []
        why += [f"{report.bad_json_lines:,} JSONL line(s) without the text field"] if report.bad_json_lines else []
        return f"no document was read ({'; '.join(why) or 'data.inputs names no file'}); check data.inputs"
    dropped = {k: v for k, v in filtered.items() if k != "kept" and v}
    by_filter = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in dropped.items()) or "none"
    left = filtered["kept"] - deduped
    return (
        f"of {read:,} documents read, the filters removed {sum(dropped.values()):,} ({by_filter}) and dedup "
        f"{deduped:,}"
        + (f"; the {left:,} left all went to validation" if left else "")
        + "; check data.inputs, loosen data.filters, or lower data.val_fraction"
    )
