"""The documents of one streaming-mixture component (`data.mixture[i].path`), as grain data sources.

A source is what grain's `MapDataset.source` takes: `len(source)` documents, `source[i]`,
document i, read on demand, and `source._getitems(indices)`, grain's batched read, which the
packer uses to read documents ahead (one round of grain's per-read bookkeeping for many).
Two kinds, by what `source[i]` returns:

  token ids (`tokenized = True`): the train split of a prepared dataset folder (it has a
      manifest.json), in either shard format: jaxllm's memory-mapped `.bin` shards
      (jaxllm.data.shards.Shard), or ArrayRecord (manifest `"shard_format": "array_record"`,
      one record per document holding its ids as little-endian bytes of the manifest's
      `tokenizer.dtype`), read with array_record's reader (`_ArrayRecords` says why not
      grain's ArrayRecordDataSource);
  raw text (`tokenized = False`), tokenized on the fly by the stream (jaxllm.data.stream_rows):
      `.txt` (one file = one document), `.jsonl` (one record per non-blank line, its text in
      the component's `field`), `.array_record` (one UTF-8 text record per document),
      `.parquet` (one row per document, the `field` column) and `.jsonl.zst`.

Random access where the format allows it. `.txt`, `.jsonl` (byte offsets of its lines are
indexed once, when the source opens), ArrayRecord and `.bin` read any document in one
seek, so the stream can shuffle all of a component's documents. A parquet row group or a
zstd stream must be decoded whole to reach one row, so those sources declare `blocks`
(the first document of each row group / file): the stream then shuffles blocks, and
documents inside a block, and each reader keeps its current block decoded (one block
in memory per reader shard and component).

Sources hold paths and small indexes only; open files and readers are dropped when a
source is pickled (grain sends it to worker processes) and reopened where it is read.
"""

from __future__ import annotations

import bisect
import copy
import glob
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from array_record.python.array_record_module import ArrayRecordReader

from jaxllm.data.manifest import MANIFEST, load_manifest
from jaxllm.data.shards import Shard, ShardError
from jaxllm.errors import DataError

RAW_SUFFIXES = (".jsonl.zst", ".jsonl", ".parquet", ".array_record", ".txt")  # longest first: ".jsonl.zst"


def _suffix(path: str) -> str | None:
    return next((s for s in RAW_SUFFIXES if path.endswith(s)), None)


class _Lazy:
    """Pickles without the attributes named in `_transient` (open files, readers), which
    are rebuilt on first use in the receiving process."""

    _transient: tuple[str, ...] = ()

    def __getstate__(self) -> dict[str, Any]:
        return {k: (None if k in self._transient else v) for k, v in self.__dict__.items()}

    def _getitems(self, indices: list[int]) -> list[Any]:
        """grain's batched read (SupportsBatchedReadRandomAccessDataSource): one call, and one
        round of grain's per-read bookkeeping, for many documents."""
        return [self[i] for i in indices]

    def fresh(self):
        """A copy with nothing open: each reader shard reads through its own (its own cached block)."""
        new = copy.copy(self)
        new.__dict__.update({k: None for k in self._transient})
        return new


class _ArrayRecords:
    """Records of several ArrayRecord files, addressed by one global index, each read with
    `ArrayRecordReader.read(i, i + 1)`: a range read of one record takes ~10 us, where grain's
    ArrayRecordDataSource (`read([i])`, its parallel batch path) takes 180-830 us a record alone
    and 45 us a record in batches of 64 (measured on the works' paragraph shards)."""

    def __init__(self, files: list[str]):
        self._readers = [ArrayRecordReader(f, "readahead_buffer_size:0") for f in files]
        counts = [r.num_records() for r in self._readers]
        self.starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> bytes:
        f = bisect.bisect_right(self.starts, i) - 1
        local = i - int(self.starts[f])
        return self._readers[f].read(local, local + 1)[0]


class PreparedDocs(_Lazy):
    """The train split of a prepared dataset: `source[i]` is document i's token ids."""

    tokenized, blocks = True, None
    _transient = ("_shards", "_records")

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder, self.name, self.tokenizer = folder, str(folder), manifest["tokenizer"]
        if "train" not in manifest["splits"]:
            raise DataError(f"mixture component {self.name!r} has no train split; prepare it again with "
                            "`jaxllm data prepare`")  # fmt: skip
        entries = manifest["splits"]["train"]["shards"]
        self.format = manifest.get("shard_format", "bin")
        if self.format not in ("bin", "array_record"):
            raise DataError(f"{folder / MANIFEST} names shard_format={self.format!r}; jaxllm reads 'bin' and "
                            "'array_record': prepare the dataset again with this version of jaxllm")  # fmt: skip
        self.files = [str(folder / e["file"]) for e in entries]
        self.starts = np.concatenate([[0], np.cumsum([int(e["docs"]) for e in entries])]).astype(np.int64)
        self.dtype = np.dtype(manifest["tokenizer"].get("dtype", "uint16")).newbyteorder("<")
        self._shards: list[Shard] | None = None
        self._records = None
        self._open()  # now, in the main process: a missing or truncated shard fails before training starts
        opened = len(self._records) if self.format == "array_record" else sum(len(s) for s in self._shards)
        if opened != len(self):
            raise ShardError(f"the shards of {self.name!r} hold {opened} documents, its manifest lists {len(self)}; "
                             "prepare the dataset again (`jaxllm data prepare CONFIG`)")  # fmt: skip

    def _open(self) -> None:
        if self.format == "array_record":
            for f in self.files:
                if not Path(f).is_file():
                    raise ShardError(f"shard {f} is missing; prepare the dataset again (`jaxllm data prepare CONFIG`)")
            self._records = _ArrayRecords(self.files)
        else:
            self._shards = [Shard(f) for f in self.files]

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        if self._shards is None and self._records is None:
            self._open()
        if self.format == "array_record":
            return np.frombuffer(self._records[int(i)], dtype=self.dtype)
        s = bisect.bisect_right(self.starts, int(i)) - 1
        return self._shards[s][int(i) - int(self.starts[s])]


class TextFiles(_Lazy):
    """`.txt` files, one document each, as the prepare step reads them (undecodable bytes as U+FFFD)."""

    tokenized, blocks = False, None

    def __init__(self, files: list[str], name: str, field: str):
        self.files, self.name = files, name

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> str:
        return Path(self.files[int(i)]).read_bytes().decode("utf-8", errors="replace")


def _json_text(line: bytes, field: str, where: str) -> str:
    """The `field` string of one JSON record, or a DataError naming the record and the fix."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is not JSON ({e.msg}); fix or remove the line") from None
    value = record.get(field) if isinstance(record, dict) else None
    if not isinstance(value, str):
        keys = ", ".join(map(repr, record)) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where} has no string field {field!r} (it has {keys}); set the mixture component's "
                        "field to the key that holds the text")  # fmt: skip
    return value


class JsonlFiles(_Lazy):
    """`.jsonl` files: one document per non-blank line, found by a byte-offset index built on open."""

    tokenized, blocks = False, None
    _transient = ("_handles",)

    def __init__(self, files: list[str], name: str, field: str):
        self.files, self.name, self.field = files, name, field
        file_of, start, size = [], [], []
        for f, path in enumerate(files):
            pos = 0
            with open(path, "rb") as fh:
                for line in fh:  # ~100 ns a line; the index is 20 bytes a document
                    if line.strip():
                        file_of.append(f), start.append(pos), size.append(len(line))
                    pos += len(line)
        self._file = np.asarray(file_of, np.int32)
        self._start, self._size = np.asarray(start, np.int64), np.asarray(size, np.int64)
        self._handles: dict[int, Any] | None = None
        if len(self):
            self[0]  # a wrong field fails now, not in a worker hours later

    def __len__(self) -> int:
        return int(self._start.size)

    def __getitem__(self, i: int) -> str:
        f, start = int(self._file[i]), int(self._start[i])
        self._handles = self._handles or {}
        if f not in self._handles:
            self._handles[f] = open(self.files[f], "rb")  # noqa: SIM115 (kept open: one seek per document)
        fh = self._handles[f]
        fh.seek(start)
        line = fh.read(int(self._size[i]))
        try:
            return _json_text(line, self.field, "")
        except DataError:  # say which line, counted only now
            fh.seek(0)
            lineno = fh.read(start).count(b"\n") + 1
            return _json_text(line, self.field, f"{self.files[f]} line {lineno}")


class ArrayRecordText(_Lazy):
    """`.array_record` files of UTF-8 text records, one document each."""

    tokenized, blocks = False, None
    _transient = ("_records",)

    def __init__(self, files: list[str], name: str, field: str):
        self.files, self.name = files, name
        self._records = None
        self._length = len(self._open())

    def _open(self) -> _ArrayRecords:
        self._records = _ArrayRecords(self.files)
        return self._records

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> str:
        records = self._records if self._records is not None else self._open()
        return bytes(records[int(i)]).decode("utf-8", errors="replace")


class _Blocked(_Lazy):
    """A source whose documents are read a block at a time (a parquet row group, a zstd file);
    `blocks[b]` is block b's first document. The last decoded block is kept."""

    tokenized = False
    _transient = ("_cached",)

    def __init__(self, files: list[str], name: str, field: str):
        self.files, self.name, self.field = files, name, field
        self._cached: tuple[int, list[str]] | None = None
        self.where = self._index()  # (file, part) of each block
        self.blocks = np.concatenate([[0], np.cumsum([n for *_, n in self.where])]).astype(np.int64)
        if len(self):
            self[0]  # a wrong field fails now

    def __len__(self) -> int:
        return int(self.blocks[-1])

    def __getitem__(self, i: int) -> str:
        b = bisect.bisect_right(self.blocks, int(i)) - 1
        if self._cached is None or self._cached[0] != b:
            self._cached = (b, self._read_block(b))
        return self._cached[1][int(i) - int(self.blocks[b])]


class ParquetText(_Blocked):
    """`.parquet` files: one document per row, the text in column `field`; a block is a row group."""

    def _index(self) -> list[tuple[int, int, int]]:
        import pyarrow as pa  # slow import (~0.1 s), only for parquet components
        import pyarrow.parquet as pq

        where = []
        for f, path in enumerate(self.files):
            meta = pq.ParquetFile(path)
            schema = meta.schema_arrow
            if self.field not in schema.names:
                raise DataError(f"{path} has no column {self.field!r} (it has {', '.join(map(repr, schema.names))}); "
                                "set the mixture component's field to the column that holds the text")  # fmt: skip
            kind = schema.field(self.field).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
                raise DataError(f"{path}: column {self.field!r} holds {kind}, not text; set the mixture component's "
                                "field to the column that holds the text")  # fmt: skip
            where += [(f, g, meta.metadata.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        return where

    def _read_block(self, b: int) -> list[str]:
        import pyarrow.parquet as pq  # slow import, only for parquet components

        f, g, _ = self.where[b]
        texts = pq.ParquetFile(self.files[f]).read_row_group(g, columns=[self.field]).column(0).to_pylist()
        if any(t is None for t in texts):
            raise DataError(f"{self.files[f]} row group {g}: column {self.field!r} holds nulls; drop those rows")
        return texts


class ZstJsonl(_Blocked):
    """`.jsonl.zst` files (zstd-compressed JSONL); a block is a whole file, which zstd must
    decompress from its start to reach any line."""

    def _lines(self, f: int) -> list[bytes]:
        with open(self.files[f], "rb") as fh:
            data = zstandard.ZstdDecompressor().stream_reader(fh).read()
        return [line for line in data.split(b"\n") if line.strip()]

    def _index(self) -> list[tuple[int, int, int]]:
        return [(f, 0, len(self._lines(f))) for f in range(len(self.files))]  # one decompression pass, on open

    def _read_block(self, b: int) -> list[str]:
        return [_json_text(line, self.field, f"{self.files[b]} line {n + 1} (of the non-blank lines)")
                for n, line in enumerate(self._lines(b))]  # fmt: skip


READERS = {".txt": TextFiles, ".jsonl": JsonlFiles, ".array_record": ArrayRecordText, ".parquet": ParquetText,
           ".jsonl.zst": ZstJsonl}  # fmt: skip


def open_source(path: str, field: str, where: str):
    """The source of one component: a prepared dataset folder, or raw files named by a path or glob.

    `where` names the component in errors (e.g. "data.mixture[1]")."""
    expanded = os.path.expanduser(path)
    if os.path.isdir(expanded):
        if not (Path(expanded) / MANIFEST).is_file():
            raise DataError(f"{where}.path={path!r} is a folder without {MANIFEST}, so not a prepared dataset; name "
                            f"its files instead (e.g. {os.path.join(path, '*.jsonl')}), or prepare it with "
                            "`jaxllm data prepare`")  # fmt: skip
        return PreparedDocs(Path(expanded), load_manifest(expanded))
    files = sorted(f for f in glob.glob(expanded, recursive=True) if not os.path.isdir(f))
    if not files:
        raise DataError(f"{where}.path={path!r} matches no file; name a prepared dataset folder, or raw files "
                        f"({', '.join(RAW_SUFFIXES)}) by path or glob")  # fmt: skip
    kinds = {_suffix(f) for f in files}
    if None in kinds:
        bad = next(f for f in files if _suffix(f) is None)
        raise DataError(f"{where}.path={path!r} names {bad}, whose format jaxllm cannot stream; use "
                        f"{', '.join(RAW_SUFFIXES)} files, or a prepared dataset folder")  # fmt: skip
    if len(kinds) > 1:
        raise DataError(f"{where}.path={path!r} mixes {', '.join(sorted(kinds))} files; make one mixture component "
                        "per format (each with its weight)")  # fmt: skip
    return READERS[kinds.pop()](files, path, field)
