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
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np

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
