"""The input pipeline: prepared shards -> packed sequences -> per-process batches.

Packing is random access. For epoch e, the documents are put in a seeded random order
and laid end to end, each as [BOS] + tokens + [EOS]; row j of the epoch is the window
[j*T, j*T + T + 1) of that stream (T + 1 tokens give T inputs and T shifted targets),
and the rows are visited in a second seeded random order. Because any row can be
computed from its index alone:
  - each JAX process reads only its own rows of each global batch, and the rows of all
    processes together are exactly the single-process global batch;
  - the iterator state is one integer (grain's `next_index`), saved in checkpoints,
    and restoring it continues with exactly the next batch;
  - grain can fan rows out to worker processes with no coordination.

Every row carries what the model needs to keep documents apart (DESIGN.md §8):
`segment_ids` (1, 2, ... per document fragment in the row), `positions` (restarting at
0 at each fragment, so RoPE and learned positions restart per document and never
exceed T), and `target_mask` (0 where the target is the next document's first token,
which the row's causal, same-segment attention could never predict).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from jaxllm.config import Config
from jaxllm.data.prepare import load_manifest
from jaxllm.data.shards import ShardError, open_shard
from jaxllm.data.stream_rows import pack_window
from jaxllm.errors import DataError
from jaxllm.parallel.mesh import batch_sharding

Batch = dict[str, np.ndarray]


class DocumentStore:
    """All documents of one split of a prepared dataset, across its shards.

    Shards are memory-mapped lazily and re-opened after pickling, so the store can be
    sent to grain worker processes without copying any tokens.
    """

    def __init__(self, path: str | os.PathLike[str], split: str = "train", verify: bool = False):
        self.path = Path(path)
        self.manifest = load_manifest(self.path)
        if split not in self.manifest["splits"]:
            raise DataError(f"split={split!r} is not in {self.path}; it has {', '.join(self.manifest['splits'])}")
        self.split = split
        self._entries = self.manifest["splits"][split]["shards"]
        self._shards = [open_shard(self.path / e["file"], self.manifest, e["sha256"] if verify else None)
                        for e in self._entries]  # fmt: skip
        for entry, shard in zip(self._entries, self._shards, strict=True):
            if len(shard) != entry["docs"] or shard.n_tokens != entry["tokens"]:
                raise ShardError(f"shard {shard.path} does not match the manifest (docs/tokens differ)")
        self.lengths = np.concatenate([s.lengths() for s in self._shards]) if self._shards else np.zeros(0, np.int64)
        counts = np.array([len(s) for s in self._shards], dtype=np.int64)
        self._shard_start = np.concatenate([[0], np.cumsum(counts)])

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_shards"] = None  # memmaps are re-opened in the receiving process
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._shards = [open_shard(self.path / e["file"], self.manifest) for e in self._entries]

    def __len__(self) -> int:
        return int(self.lengths.size)

    def tokens(self, doc: int, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of document `doc` (int64)."""
        s = int(np.searchsorted(self._shard_start, doc, side="right") - 1)
        local = doc - int(self._shard_start[s])
        return self._shards[s].span(local, start, stop).astype(np.int64)


class PackedSequences:
    """Random-access packed rows: `rows[g]` for a global row index g (epoch-major)."""

    def __init__(self, store: DocumentStore, seq_len: int, seed: int, bos_id: int | None, eos_id: int, epochs: int):
        self.store, self.seq_len, self.seed, self.epochs = store, seq_len, seed, epochs
        self.bos_id, self.eos_id = bos_id, eos_id
        self.has_bos = int(bos_id is not None)
        self.doc_lengths = store.lengths + 1 + self.has_bos  # with the EOS separator (and BOS)
        total = int(self.doc_lengths.sum())
        self.rows_per_epoch = max(total - 1, 0) // seq_len
        if self.rows_per_epoch == 0:
            raise DataError(
                f"{store.path} split {store.split!r} has {total} tokens, fewer than data.seq_len + 1 = {seq_len + 1}; "
                "lower data.seq_len or add data"
            )
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.rows_per_epoch * self.epochs

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document order, stream start of each placed document, row order) of an epoch."""
        if epoch not in self._cache:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.store))
            starts = np.concatenate([[0], np.cumsum(self.doc_lengths[order])])
            rows = rng.permutation(self.rows_per_epoch)
            if len(self._cache) >= 2:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = (order, starts, rows)
        return self._cache[epoch]

    def _augmented(self, doc: int, start: int, stop: int) -> np.ndarray:
        """Slice [start, stop) of [BOS] + tokens + [EOS] without building the whole document."""
        n = int(self.store.lengths[doc])
        lo, hi = start - self.has_bos, stop - self.has_bos  # in token coordinates
        parts = []
        if self.has_bos and start == 0:
            parts.append(np.array([self.bos_id], np.int64))
        if max(lo, 0) < min(hi, n):
            parts.append(self.store.tokens(doc, max(lo, 0), min(hi, n)))
        if hi > n:
            parts.append(np.array([self.eos_id], np.int64))
        return np.concatenate(parts)

    def __getitem__(self, index: int) -> Batch:
        epoch, k = divmod(int(index), self.rows_per_epoch)
        order, starts, rows = self._epoch(epoch)
        T = self.seq_len
        begin = int(rows[k]) * T
        end = begin + T + 1
        pieces = []  # one per document fragment in the window
        d = int(np.searchsorted(starts, begin, side="right") - 1)
        pos = begin
        while pos < end:
            doc_start, doc_end = int(starts[d]), int(starts[d + 1])
            stop = min(end, doc_end)
            pieces.append(self._augmented(int(order[d]), pos - doc_start, stop - doc_start))
            pos, d = stop, d + 1
        return pack_window(pieces, T)


class ProcessRows:
    """This process's rows, in order: of global batch s, rows [p*b, (p+1)*b), b = B / P."""

    def __init__(self, rows: PackedSequences, global_batch: int, process_index: int, process_count: int):
        if global_batch % process_count:
            raise DataError(
                f"train.batch_size={global_batch} is not divisible by the {process_count} processes; "
                "each process must read an equal share"
            )
        if not 0 <= process_index < process_count:
            raise DataError(f"process_index={process_index} is outside [0, {process_count})")
        self.rows, self.global_batch = rows, global_batch
        self.local_batch = global_batch // process_count
        self.offset = process_index * self.local_batch

    def __len__(self) -> int:
        return (len(self.rows) // self.global_batch) * self.local_batch

    def __getitem__(self, r: int) -> Batch:
        step, i = divmod(int(r), self.local_batch)
        return self.rows[step * self.global_batch + self.offset + i]


def make_dataset(
    cfg: Config,
    split: str = "train",
    *,
    process_index: int | None = None,
    process_count: int | None = None,
    epochs: int | None = None,
) -> grain.IterDataset:
    """The grain dataset of this process's local batches (dicts of (B/P, T) int32 arrays).

    Iterate it with `iter(ds)`; the iterator's `get_state()` / `set_state()` save and
    restore the position exactly. `epochs=None` repeats the data practically forever.
    """
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    store = DocumentStore(cfg.data.path, split)
    tok = store.manifest["tokenizer"]
    rows = PackedSequences(
        store, cfg.data.seq_len, cfg.data.seed, tok["bos_id"], tok["eos_id"], epochs if epochs else 1_000_000
    )
    local = ProcessRows(rows, cfg.train.batch_size, pi, pc)
    ds = grain.MapDataset.source(local).batch(local.local_batch, drop_remainder=True)
    iter_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=max(cfg.data.prefetch, 1)))
    if cfg.data.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a library caller never parsed them
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.data.num_workers))
    return iter_ds


def global_batches(batches: Iterator[Batch], mesh) -> Iterator[dict[str, Any]]:
    """Assemble each process's local batch into global `jax.Array`s split over the mesh's
    batch axes (`data`, `fsdp`): every process passes only the rows it read."""
    sharding = batch_sharding(mesh)
    for batch in batches:
        yield {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
