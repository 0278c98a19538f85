"""Raw documents out of the corpus files: text, JSONL, zstd-compressed JSONL and parquet.

Both preparation paths read through this module (the single process in jaxllm.data.prepare,
the Beam pipeline in jaxllm.data.pipeline), so they see the same documents in the same
order. A document's identity is its position: (index of its file among the sorted, expanded
inputs, index of the document within the file), packed into one int64 by `doc_id`. Sorting by
that id is input order, which is what first-occurrence-wins dedup and the shard layout are
defined on, and a worker can compute it for the files it reads without a global counter.

What one document is: a text file is one document (or, with data.documents=paragraph, each
block between blank lines); a JSONL line or a parquet row is one, its text in
`data.jsonl_field`. Unreadable paths, empty files, lines without the text field and
non-UTF-8 bytes (decoded as U+FFFD) are reported, never fatal: a web-scale corpus always has
a few, and losing a day's run to one bad line is worse than skipping it aloud.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from jaxllm.config import DataConfig

PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")  # a blank line (after newline normalization)
FILE_BITS = 40  # doc_id = file index << 40 | document index: 2^40 documents per file, 2^23 files
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.zst", ".ndjson.zst")


def doc_id(file_index: int, index_in_file: int) -> int:
    """The sortable int64 identity of a document: input order is ascending id."""
    return (file_index << FILE_BITS) | index_in_file


@dataclass
class ReadReport:
    """What reading the inputs found: every source file and every problem."""

    sources: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)
    non_utf8: list[str] = field(default_factory=list)
    bad_json_lines: int = 0
    stats: dict[str, os.stat_result] = field(default_factory=dict)  # of each source, taken before reading it

    def merge(self, source: SourceRead) -> None:
        """Add one file's findings (the pipeline reads files on workers and merges them here)."""
        if source.problem == "unreadable":
            self.unreadable.append(source.detail)
            return
        self.sources.append(source.record)
        if source.stat is not None:
            self.stats[source.record["path"]] = source.stat
        if source.problem == "empty":
            self.empty.append(source.record["path"])
        if source.non_utf8:
            self.non_utf8.append(source.record["path"])
        self.bad_json_lines += source.bad_lines


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


@dataclass
class SourceRead:
    """One file's reading: its manifest record, its problem if any, and (after iterating) counts."""

    record: dict[str, Any]
    stat: os.stat_result | None = None
    problem: str | None = None  # "unreadable" | "empty" | None
    detail: str = ""
    non_utf8: bool = False
    bad_lines: int = 0


def _decode(raw: bytes, source: SourceRead) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        source.non_utf8 = True
        return raw.decode("utf-8", errors="replace")


def _jsonl_texts(text: str, key: str, source: SourceRead) -> Iterator[str]:
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line).get(key)
        except (json.JSONDecodeError, AttributeError):
            value = None
        if not isinstance(value, str):
            source.bad_lines += 1
            continue
        yield value


def _parquet_texts(raw: bytes, key: str, source: SourceRead) -> Iterator[str]:
    import pyarrow.parquet as pq  # slow import (~0.2 s), and only parquet inputs need it

    table = pq.ParquetFile(io.BytesIO(raw))
    if key not in table.schema_arrow.names:
        source.bad_lines += table.metadata.num_rows
        return
    for batch in table.iter_batches(columns=[key], batch_size=4096):
        for value in batch.column(0).to_pylist():
            if isinstance(value, str):
                yield value
            else:
                source.bad_lines += 1


def read_source(path: Path, data: DataConfig) -> tuple[SourceRead, Iterator[str]]:
    """(what reading `path` found, its raw documents). The file is read whole, hashed for the
    manifest, and decompressed if it ends in .zst; iterate the documents to fill the counts."""
    try:
        stat = path.stat()
        raw = path.read_bytes()
    except OSError as e:
        return SourceRead({}, problem="unreadable", detail=f"{path} ({e.strerror or e})"), iter(())
    source = SourceRead({"path": str(path), "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "docs": 0},
                        stat=stat)  # fmt: skip
    if path.name.endswith(".zst") and raw.strip():
        raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
    if not raw.strip():
        source.problem = "empty"
        return source, iter(())
    return source, _counted(_texts(path, raw, data, source), source)


def _texts(path: Path, raw: bytes, data: DataConfig, source: SourceRead) -> Iterator[str]:
    name = path.name.removesuffix(".zst")
    if name.endswith(".parquet"):
        yield from _parquet_texts(raw, data.jsonl_field, source)
        return
    text = _decode(raw, source)
    if name.endswith(JSONL_SUFFIXES):
        yield from _jsonl_texts(text, data.jsonl_field, source)
    elif data.documents == "paragraph":
        for paragraph in PARAGRAPH_BREAK.split(text.replace("\r\n", "\n").replace("\r", "\n")):
            if paragraph.strip():
                yield paragraph
    else:
        yield text


def _counted(texts: Iterator[str], source: SourceRead) -> Iterator[str]:
    for text in texts:
        source.record["docs"] += 1
        yield text


def read_documents(data: DataConfig, report: ReadReport) -> Iterator[str]:
    """Yield the raw documents of `data.inputs` in input order, recording sources and problems."""
    for _, text in read_numbered(data, report):
        yield text


def read_numbered(data: DataConfig, report: ReadReport, start: int = 0) -> Iterator[tuple[int, str]]:
    """(doc_id, raw document) of every input document from doc_id `start` on, in input order.

    A resumed preparation passes the id it stopped at, with the report it had then: files
    before it are skipped unread (the report has them already), the one it is in is read
    from its start and its earlier documents skipped."""
    first_file, first_doc = start >> FILE_BITS, start & ((1 << FILE_BITS) - 1)
    for file_index, path in enumerate(expand_inputs(data.inputs, report if start == 0 else ReadReport())):
        if file_index < first_file:
            continue
        source, texts = read_source(path, data)
        for i, text in enumerate(texts):
            if file_index > first_file or i >= first_doc:
                yield doc_id(file_index, i), text
        report.merge(source)
