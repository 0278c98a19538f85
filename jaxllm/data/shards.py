"""Token shards: a small, documented, memory-mappable random-access format.

One shard file holds many tokenized documents (little-endian):

    offset  size                 field
    0       8                    magic b"JXLMSHD1"
    8       4                    uint32 format version (1)
    12      4                    uint32 bytes per token (2: uint16 ids, 4: uint32 ids)
    16      8                    uint64 n_docs
    24      8                    uint64 n_tokens
    32      8 * (n_docs + 1)     uint64 offsets: document i is tokens[offsets[i]:offsets[i+1]]
    ...     itemsize * n_tokens  token ids

Why not a record format: documents are arrays of ints, and this layout lets a reader
memory-map a shard and slice any document or any span of it without parsing, which
is what random-access packing (jaxllm.data.loader) needs. The header and the file
size are checked on every open (a truncated copy fails at once); the sha256 recorded
in the manifest is checked on demand (`verify=True`, `jaxllm data verify`).

The other format (data.shard_format=array_record) is ArrayRecord, grain's native
random-access source, for datasets read by the streaming loader (jaxllm.data.stream) on
many hosts: one record per document, the token ids as little-endian bytes of the
manifest's dtype, written with group_size 1 so that any document is one read. Its writer
output is deterministic, so both preparation paths give the same bytes, and its sha256
goes into the manifest like a `.bin` shard's.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from jaxllm.errors import DataError

MAGIC = b"JXLMSHD1"
VERSION = 1
HEADER = struct.Struct("<8sIIQQ")  # magic, version, itemsize, n_docs, n_tokens


class ShardError(DataError):
    """A shard that is missing, truncated or corrupt; the message names the file."""


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype that holds every id (uint16 up to 65,536 ids)."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class ShardWriter:
    """Accumulates documents and writes one shard file atomically on `close()`."""

    def __init__(self, path: str | os.PathLike[str], dtype: np.dtype):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self._docs: list[np.ndarray] = []
        self.n_tokens = 0

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, tokens: np.ndarray) -> None:
        tokens = np.asarray(tokens)
        if tokens.size and int(tokens.max()) > np.iinfo(self.dtype).max:
            raise ShardError(f"{self.path}: token id {int(tokens.max())} does not fit in {self.dtype}")
        self._docs.append(tokens.astype(self.dtype))
        self.n_tokens += tokens.size

    def close(self) -> dict[str, object]:
        """Write the file (via a temporary + rename) and return its manifest entry."""
        lengths = np.array([d.size for d in self._docs], dtype=np.uint64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("<u8")
        header = HEADER.pack(MAGIC, VERSION, self.dtype.itemsize, len(self._docs), self.n_tokens)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        digest = hashlib.sha256()
        with tmp.open("wb") as f:
            for chunk in (
                header,
                offsets.tobytes(),
                *(d.astype(self.dtype.newbyteorder("<")).tobytes() for d in self._docs),
            ):
                f.write(chunk)
                digest.update(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self._docs = []
        return {
            "file": self.path.name,
            "docs": int(lengths.size),
            "tokens": int(self.n_tokens),
            "sha256": digest.hexdigest(),
        }


class ArrayRecordShardWriter(ShardWriter):
    """`ShardWriter` that writes an ArrayRecord file (one record per document) on `close()`."""

    OPTIONS = "group_size:1"  # every document one random-access read

    def close(self) -> dict[str, object]:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        writer = ArrayRecordWriter(str(tmp), self.OPTIONS)
        for doc in self._docs:
            writer.write(doc.astype(self.dtype.newbyteorder("<")).tobytes())
        writer.close()
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        entry = {"file": self.path.name, "docs": len(self._docs), "tokens": int(self.n_tokens),
                 "sha256": file_sha256(self.path)}  # fmt: skip
        self._docs = []
        return entry


SHARD_WRITERS = {"bin": (ShardWriter, ".bin"), "array_record": (ArrayRecordShardWriter, ".array_record")}


def shard_writer(directory: Path, split: str, number: int, dtype: np.dtype, fmt: str) -> ShardWriter:
    """The writer of shard `number` of `split` in format `fmt` ("bin" or "array_record")."""
    cls, suffix = SHARD_WRITERS[fmt]
    return cls(directory / f"{split}-{number:05d}{suffix}", dtype)


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Shard:
    """A memory-mapped shard: `len(shard)` documents, `shard[i]` is document i's tokens."""

    def __init__(self, path: str | os.PathLike[str], expected_sha256: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ShardError(f"shard {self.path} is missing; re-run `jaxllm data prepare`")
        size = self.path.stat().st_size
        if size < HEADER.size:
            raise ShardError(f"shard {self.path} is truncated ({size} bytes, smaller than its header)")
        with self.path.open("rb") as f:
            magic, version, itemsize, n_docs, n_tokens = HEADER.unpack(f.read(HEADER.size))
        if magic != MAGIC:
            raise ShardError(f"shard {self.path} is not a jaxllm shard (bad magic {magic!r})")
        if version != VERSION or itemsize not in (2, 4):
            raise ShardError(f"shard {self.path}: unsupported version {version} / token size {itemsize}")
        expected = HEADER.size + 8 * (n_docs + 1) + itemsize * n_tokens
        if size != expected:
            raise ShardError(f"shard {self.path} is truncated or corrupt: {size} bytes, header says {expected}")
        if expected_sha256 is not None and file_sha256(self.path) != expected_sha256:
            raise ShardError(f"shard {self.path} is corrupt: sha256 differs from the manifest")
        self.offsets = np.memmap(self.path, dtype="<u8", mode="r", offset=HEADER.size, shape=(n_docs + 1,))
        if self.offsets[0] != 0 or self.offsets[-1] != n_tokens or np.any(np.diff(self.offsets.astype(np.int64)) < 0):
            raise ShardError(f"shard {self.path} is corrupt: its document offsets are inconsistent")
        dtype = np.dtype("<u2" if itemsize == 2 else "<u4")
        self.tokens = np.memmap(
            self.path, dtype=dtype, mode="r", offset=HEADER.size + 8 * (n_docs + 1), shape=(n_tokens,)
        )
        self.n_tokens = int(n_tokens)

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.tokens[int(self.offsets[i]) : int(self.offsets[i + 1])])

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets.astype(np.int64))

    def span(self, i: int, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of document i, read without touching the rest of it."""
        base = int(self.offsets[i])
        return np.asarray(self.tokens[base + start : base + stop])


class ArrayRecordShard:
    """An ArrayRecord shard with `Shard`'s reading interface (len, [i], lengths, span, n_tokens).

    Document lengths are not stored in the file, so opening one reads every record once; the
    streaming loader (jaxllm.data.stream), which reads these at scale, never needs them."""

    def __init__(self, path: str | os.PathLike[str], dtype: str, expected_sha256: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise ShardError(f"shard {self.path} is missing; re-run `jaxllm data prepare`")
        if expected_sha256 is not None and file_sha256(self.path) != expected_sha256:
            raise ShardError(f"shard {self.path} is corrupt: sha256 differs from the manifest")
        self.dtype = np.dtype(dtype).newbyteorder("<")
        try:
            self._reader = ArrayRecordReader(str(self.path))
            n = self._reader.num_records()
            self._lengths = np.array([len(r) // self.dtype.itemsize for r in self._reader.read(0, n)], np.int64)
        except Exception as e:  # the reader raises plain runtime errors on a damaged file
            raise ShardError(f"shard {self.path} is not a readable ArrayRecord file: {e}") from None
        self.n_tokens = int(self._lengths.sum())

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_reader"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reader = ArrayRecordReader(str(self.path))

    def __len__(self) -> int:
        return int(self._lengths.size)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.frombuffer(self._reader.read(int(i), int(i) + 1)[0], dtype=self.dtype)  # a range read: ~15x faster

    def lengths(self) -> np.ndarray:
        return self._lengths

    def span(self, i: int, start: int, stop: int) -> np.ndarray:
        return self[i][start:stop]


def open_shard(path: Path, manifest: dict, expected_sha256: str | None = None) -> Shard | ArrayRecordShard:
    """The reader of one shard of a prepared dataset, in the format its manifest names."""
    if manifest.get("shard_format", "bin") == "array_record":
        return ArrayRecordShard(path, manifest["tokenizer"]["dtype"], expected_sha256)
    return Shard(path, expected_sha256)
