"""`jaxllm data prepare`: raw text -> cleaned, filtered, deduplicated, tokenized shards.

Steps, per document, in order (each counted in the manifest):
  read      text files (one file = one document, or with data.documents=paragraph each
            block between blank lines), globs, or JSONL (one object per line,
            text in `data.jsonl_field`). Unreadable paths, empty files, bad JSON lines
            and non-UTF-8 bytes (decoded as U+FFFD) are reported, never fatal.
  clean     newline normalization, NUL removal (jaxllm.data.clean.clean_text)
  filter    length bounds, alphanumeric fraction, repeated-line ratio (data.filters)
  dedup     exact (hash of normalized text), then near (MinHash + LSH) (data.dedup)
  split     validation by document: a seeded hash of the normalized text, so a
            document's split does not depend on input order; or (data.split=tail)
            the last data.val_fraction of every document, nanoGPT's split, which
            a one-document corpus like tinyshakespeare needs
  tokenize  with the configured tokenizer, into shards of ~data.shard_tokens tokens

Atomicity: everything is written into a temporary directory beside `data.path`, the
manifest last; only then is the directory swapped into place. A crash leaves the old
dataset (if any) untouched and never a manifest that points at missing shards.

Safety: prepare replaces `data.path` only when it is absent, an empty folder or a complete
jaxllm dataset holding nothing but its own files (jaxllm.data.manifest); a corpus file, a
folder of notes or a dataset with extra files in it is refused before anything is touched.
Paths in the manifest are absolute, so a run prepared here can be used from any directory.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jaxllm.config import Config, DataConfig
from jaxllm.data.clean import FilterStats, clean_text, filter_reason
from jaxllm.data.dedup import ExactDeduplicator, NearDeduplicator, exact_key
from jaxllm.data.manifest import FORMAT, MANIFEST, check_replaceable, load_manifest, replace_dataset
from jaxllm.data.shards import ShardWriter, token_dtype
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.data.verified import VerifiedFiles
from jaxllm.errors import DataError

__all__ = ["FORMAT", "MANIFEST", "ReadReport", "expand_inputs", "load_manifest", "prepare", "read_documents"]
SPLITS = ("train", "val")
PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")  # a blank line (cleaning has normalized newlines to \n)
EXAMPLES_PER_REASON = 3


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
            one_line = " ".join(text.split())
            self.examples.append(one_line if len(one_line) <= 100 else one_line[:97] + "...")


@dataclass
class ReadReport:
    """What reading the inputs found: every source file and every problem."""

    sources: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    non_utf8: list[str] = field(default_factory=list)
    bad_json_lines: int = 0
    stats: dict[str, os.stat_result] = field(default_factory=dict)  # of each source, taken before reading it


def expand_inputs(inputs: tuple[str, ...] | list[str], report: ReadReport) -> list[Path]:
    """Files named by paths and globs, as absolute paths, sorted and deduplicated; misses go to the report."""
    files: list[Path] = []
    for pattern in inputs:
        matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
        if not matches:
            report.unreadable.append(f"{os.path.abspath(os.path.expanduser(pattern))} (no such file or no glob match)")
        files += [Path(os.path.abspath(m)) for m in matches if not Path(m).is_dir()]
    seen: set[Path] = set()
    return [p for p in files if not (p.resolve() in seen or seen.add(p.resolve()))]


def read_documents(data: DataConfig, report: ReadReport) -> Iterator[str]:
    """Yield the raw documents of `data.inputs`, recording sources and problems."""
    for path in expand_inputs(data.inputs, report):
        try:
            stat = path.stat()
            raw = path.read_bytes()
        except OSError as e:
            report.unreadable.append(f"{path} ({e.strerror or e})")
            continue
        source = {"path": str(path), "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "docs": 0}
        report.sources.append(source)
        report.stats[str(path)] = stat
        if not raw.strip():
            report.empty.append(str(path))
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            report.non_utf8.append(str(path))
            text = raw.decode("utf-8", errors="replace")
        if path.suffix in (".jsonl", ".ndjson"):
            for line in text.splitlines():
                if not line.strip():
                    continue
                try:
                    value = json.loads(line).get(data.jsonl_field)
                except (json.JSONDecodeError, AttributeError):
                    value = None
                if not isinstance(value, str):
                    report.bad_json_lines += 1
                    continue
                source["docs"] += 1
                yield value
        elif data.documents == "paragraph":
            for paragraph in PARAGRAPH_BREAK.split(text.replace("\r\n", "\n").replace("\r", "\n")):
                if paragraph.strip():
                    source["docs"] += 1
                    yield paragraph
        else:
            source["docs"] += 1
            yield text


def is_validation(text_key: str, seed: int, fraction: float) -> bool:
    """Deterministic split by content: hash(seed, normalized text) < fraction."""
    h = hashlib.sha256(f"{seed}:{text_key}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2**64 < fraction


class _SplitWriter:
    """Rolls documents of one split into shard files of ~shard_tokens tokens."""

    def __init__(self, out: Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.shard_tokens = out, split, dtype, shard_tokens
        self.shards: list[dict[str, Any]] = []
        self._writer: ShardWriter | None = None

    def add(self, tokens: np.ndarray) -> None:
        if self._writer is None:
            self._writer = ShardWriter(self.out / f"{self.split}-{len(self.shards):05d}.bin", self.dtype)
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


def prepare(cfg: Config, log: Callable[[str], None] = print, progress_every_s: float = 5.0) -> Path:
    """Run the whole preparation; returns the manifest path. See the module docstring."""
    data = cfg.data
    if not data.inputs:
        raise DataError("data.inputs is empty; name text files, globs or .jsonl files, e.g. data.inputs=[corpus/*.txt]")
    out = Path(data.path)
    check_replaceable(out)  # before any work: a wrong data.path must cost nothing, and lose nothing
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # a folder of our own, never a guess
    try:
        manifest = _prepare_into(tmp, cfg, tokenizer, log, progress_every_s)
        replace_dataset(tmp, out, log)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for split in SPLITS:
        s = manifest["splits"][split]
        log(f"{split}: {s['docs']:,} documents, {s['tokens']:,} tokens in {len(s['shards'])} shards")
    log(f"wrote {out / MANIFEST}")
    return out / MANIFEST


def _prepare_into(tmp: Path, cfg: Config, tokenizer, log: Callable[[str], None], progress_every_s: float) -> dict:
    data = cfg.data
    report = ReadReport()
    stats = FilterStats()
    exact = ExactDeduplicator() if data.dedup.exact else None
    near = NearDeduplicator(data.dedup) if data.dedup.near else None
    removed = {"exact": 0, "near": 0}
    removed_by: dict[str, Removed] = {}
    dtype = token_dtype(tokenizer.vocab_size)
    writers = {split: _SplitWriter(tmp, split, dtype, data.shard_tokens) for split in SPLITS}
    seen = tokens_out = 0
    start = last = time.monotonic()

    for raw in read_documents(data, report):
        seen += 1
        text = clean_text(raw)
        reason = filter_reason(text, data.filters)
        stats.record(reason)
        if reason is not None:
            removed_by.setdefault(reason, Removed()).add(text)
            continue
        key = exact_key(text)  # also decides the split, so computed once
        if exact is not None and exact.is_duplicate_key(key):
            removed["exact"] += 1
            removed_by.setdefault("exact_duplicate", Removed()).add(text)
            continue
        if near is not None and near.is_duplicate(text):
            removed["near"] += 1
            removed_by.setdefault("near_duplicate", Removed()).add(text)
            continue
        if data.split == "tail":  # the last val_fraction of every document is held out
            cut = int(round(len(text) * (1 - data.val_fraction)))
            parts = [("train", text[:cut]), ("val", text[cut:])]
        else:
            parts = [("val" if is_validation(key, data.seed, data.val_fraction) else "train", text)]
        for split, part in parts:
            if part:
                ids = tokenizer.encode(part)
                writers[split].add(ids)
                tokens_out += ids.size
        now = time.monotonic()
        if now - last >= progress_every_s:
            last = now
            log(f"  {seen:,} documents read, {tokens_out:,} tokens written, {tokens_out / (now - start):,.0f} tokens/s")

    for w in writers.values():
        w.flush()
    for problem, items in (("unreadable", report.unreadable), ("empty", report.empty), ("non-UTF-8", report.non_utf8)):
        for item in items:
            log(f"warning: {problem} input: {item}")
    if report.bad_json_lines:
        log(f"warning: {report.bad_json_lines} JSONL lines without a string {data.jsonl_field!r} field were skipped")
    log(
        f"read {seen:,} documents: filtered {stats.as_dict()}, "
        f"exact duplicates {removed['exact']:,}, near duplicates {removed['near']:,}"
    )
    for reason, r in removed_by.items():
        log(f"  {reason}: {r.docs:,} documents, {r.chars:,} characters, e.g.")
        for example in r.examples:
            log(f"    | {example}")
    manifest = {
        "format": FORMAT,
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": {
            "path": cfg.tokenizer.path if cfg.tokenizer.path == "byte" else os.path.abspath(cfg.tokenizer.path),
            "identity": tokenizer.identity,
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "pad_id": tokenizer.pad_id,
            "dtype": dtype.name,
        },
        "splits": {split: w.summary() for split, w in writers.items()},
        "documents": {
            "read": seen,
            "filtered": stats.as_dict(),
            "duplicates_removed": removed,
            "removed": {reason: asdict(r) for reason, r in removed_by.items()},
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
    if not manifest["splits"]["train"]["docs"]:
        raise DataError(f"no training documents survived preparation: {_what_was_lost(seen, stats, removed, report)}")
    verified = VerifiedFiles(tmp)  # the hashes just computed: the first check_dataset need not read it all again
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            verified.remember("shards", entry["file"], entry["sha256"], (tmp / entry["file"]).stat())
    for source in report.sources:
        verified.remember("sources", source["path"], source["sha256"], report.stats[source["path"]])
    verified.save(log)
    tmp_manifest = tmp / f".{MANIFEST}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp_manifest, tmp / MANIFEST)  # written last: its presence means the shards are complete
    return manifest


def _what_was_lost(seen: int, stats: FilterStats, removed: dict[str, int], report: ReadReport) -> str:
    """Why nothing is left, in words: the error must say where the documents went, not dump the counts."""
    if not seen:
        missing = report.unreadable + report.empty
        why = [f"{len(missing)} input(s) missing, unreadable or empty (e.g. {missing[0]})"] if missing else []
        why += [f"{report.bad_json_lines:,} JSONL line(s) without the text field"] if report.bad_json_lines else []
        return f"no document was read ({'; '.join(why) or 'data.inputs names no file'}); check data.inputs"
    filtered = {k: v for k, v in stats.as_dict().items() if k != "kept" and v}
    by_filter = ", ".join(f"{v:,} {k.replace('_', ' ')}" for k, v in filtered.items()) or "none"
    deduped = removed["exact"] + removed["near"]
    left = stats.as_dict()["kept"] - deduped
    return (
        f"of {seen:,} documents read, the filters removed {sum(filtered.values()):,} ({by_filter}) and dedup "
        f"{deduped:,}"
        + (f"; the {left:,} left all went to validation" if left else "")
        + "; check data.inputs, loosen data.filters, or lower data.val_fraction"
    )
