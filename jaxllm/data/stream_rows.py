"""One reader shard of the streaming mixture: its documents -> packed rows -> a weighted mixture.

Everything here runs where grain runs it: in the main process, or in a grain worker process
(data.num_workers > 0), which receives a pickled `ShardChunks` and reads its own shards.

Per component, reader shard s of S reads the documents s, s+S, s+2S, ... of the component in
a seeded order that changes every epoch (`shard_documents`): grain's lazy `MapDataset.shuffle`
(a permutation computed per index, O(1) memory) for random-access sources (below 65,536
documents a shard, where that permutation gets slow, an explicit one: `permutation_index`),
and for block sources (parquet row groups, zstd files) a seeded order of blocks with a seeded
order of the documents inside each block. Raw text is cleaned and tokenized by a grain `.map`.

Packing (`RowPacker`) follows jaxllm/data/loader.py's row contract exactly: documents laid end
to end, each as [BOS] + tokens + [EOS], and a row is a window of T + 1 tokens (T inputs, T
shifted targets) that starts where the previous row's last input was, so consecutive rows
overlap by one token and no target is lost. Rows are consecutive windows (the randomness is
the document order). Documents that are empty after cleaning are skipped, as prepare drops them.
grain's own packers do not fit this contract: ConcatThenSplit / FirstFit cut non-overlapping
windows and pad, and pass a full-length document through out of order.

Mixing (`ShardStream`): row k of shard s comes from component c with probability w_c / sum(w),
drawn from a generator seeded by (data.seed, s, k // 4096), so the draw of any row is known
from its index alone and a shard's state is a few integers. grain's `IterDataset.mix` is not
random: it interleaves by integer proportions (weights scaled so the smallest is 100, then
truncated) in a fixed periodic pattern; see docs/streaming.md for why the stream draws instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from typing import Any

import grain
import numpy as np

from jaxllm.data.clean import clean_text
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.errors import DataError

KEYS = ("inputs", "targets", "segment_ids", "positions", "target_mask")
MIX_BLOCK = 4096  # component draws made at once per shard
SMALL = 2**16  # documents: below, a shard's epoch order is an explicit permutation (see permutation_index)
READ_AHEAD, READ_AHEAD_TOKENS = 64, 1 << 20  # most documents, and about the most tokens, a packer reads at once


def seed32(*parts: object) -> int:
    """A 32-bit seed from any parts (grain's shuffle takes seeds in [0, 2**32))."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:4], "little")


@dataclasses.dataclass
class Component:
    """One mixture component as the readers need it (picklable: paths and small indexes)."""

    source: Any  # a jaxllm.data.stream_sources source
    weight: float
    bos_id: int | None
    eos_id: int
    where: str  # e.g. "data.mixture[1] ('web/*.jsonl')", for errors


@dataclasses.dataclass
class StreamPlan:
    """What every reader shard needs: the components, the tokenizer for raw text, the row shape."""

    components: list[Component]
    tokenizer_path: str
    seq_len: int
    seed: int
    shards: int  # S, reader shards of the whole run
    rows_per_shard: int  # B / S rows of every global batch


class Tokenize(grain.transforms.Map):
    """Raw text -> token ids: `clean_text` (as prepare cleans), then the run's tokenizer."""

    def __init__(self, tokenizer_path: str):
        self.tokenizer_path, self._tokenizer = tokenizer_path, None

    def __getstate__(self) -> dict[str, Any]:
        return {"tokenizer_path": self.tokenizer_path, "_tokenizer": None}  # loaded again in a worker

    def map(self, text: str) -> np.ndarray:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.tokenizer_path)
        return np.asarray(self._tokenizer.encode(clean_text(text)), np.int64)


def permutation_index(j: int, n: int, seed: int, cache: dict) -> int:
    """Position j of a seeded permutation of range(n). Large n: grain's index_shuffle (the O(1)-memory
    permutation behind MapDataset.shuffle). It walks cycles in a domain of at least ~2^16, so it costs
    ~2^16/n index steps (measured: 5 ms an index at n=2, 137 us at 100, 3 us from 65,536 on); below
    SMALL the permutation is drawn whole instead (256 KiB at most) and kept for the next index."""
    if n >= SMALL:
        return grain.experimental.index_shuffle(j, max_index=n - 1, seed=seed, rounds=4)
    if cache.get("key") != (n, seed):
        cache.update(key=(n, seed), order=np.random.default_rng(seed).permutation(n))
    return int(cache["order"][j])


class EpochShuffled(grain.MapDataset):
    """The parent's n elements epoch after epoch, each epoch in its own seeded order: grain's
    `shuffle(seed).repeat(None)` for large n, an explicit permutation below SMALL (see
    permutation_index)."""

    def __init__(self, parent: grain.MapDataset, seed: int):
        super().__init__(parent)
        self._n, self._seed, self._cache = len(parent), seed, {}

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return "EpochShuffled"

    def _position(self, index: int) -> int:
        epoch, j = divmod(int(index), self._n)
        return permutation_index(j, self._n, seed32(self._seed, epoch), self._cache)

    def __getitem__(self, index):
        return self._parent[self._position(index)]

    def _getitems(self, indices):
        return self._parent._getitems([self._position(i) for i in indices])


class BlockShuffled(grain.MapDataset):
    """Shard s's documents of a block source, epoch after epoch: blocks in a seeded order per
    epoch, documents in a seeded order inside each block, so a reader decodes each block once."""

    def __init__(self, parent: grain.MapDataset, blocks: np.ndarray, shard: int, shards: int, seed: int):
        super().__init__(parent)
        lo, hi = blocks[:-1], blocks[1:]
        self._first = lo + (shard - lo) % shards  # the block's first document of this shard
        self._count = np.maximum(0, -(-(hi - self._first) // shards))
        self._shards, self._seed = shards, seed
        self.epoch_length = int(self._count.sum())
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cache: dict = {}

    def __len__(self) -> int:
        return sys.maxsize

    def __str__(self) -> str:
        return "BlockShuffled"

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._epochs:
            rng = np.random.default_rng([self._seed, epoch])
            order = rng.permutation(np.flatnonzero(self._count))
            self._epochs = {epoch: (order, np.cumsum(self._count[order]))}  # one epoch at a time
        return self._epochs[epoch]

    def __getitem__(self, index):
        return self._parent[self._position(index)]

    def _getitems(self, indices):
        return self._parent._getitems([self._position(i) for i in indices])

    def _position(self, index: int) -> int:
        epoch, j = divmod(int(index), self.epoch_length)
        order, ends = self._epoch(epoch)
        k = int(np.searchsorted(ends, j, side="right"))
        b = int(order[k])
        local = j - (int(ends[k - 1]) if k else 0)
        local = permutation_index(local, int(self._count[b]), seed32(self._seed, epoch, b), self._cache)
        return int(self._first[b]) + local * self._shards


def shard_documents(plan: StreamPlan, c: int, shard: int) -> tuple[grain.MapDataset, int]:
    """(shard `shard`'s token-id documents of component c, in their order over all epochs;
    documents per epoch). The source is copied so each reader keeps its own open block."""
    comp = plan.components[c]
    source, S = comp.source.fresh(), plan.shards
    seed = seed32(plan.seed, "documents", c, shard)
    base = grain.MapDataset.source(source)
    if source.blocks is None:
        n = len(range(shard, len(source), S))
        mine = base.slice(slice(shard, None, S))
        docs = (mine.shuffle(seed=seed).repeat(None) if n >= SMALL else EpochShuffled(mine, seed)) if n else base
    else:
        docs = BlockShuffled(base, source.blocks, shard, S, seed)
        n = docs.epoch_length
    if not n:
        raise DataError(f"{comp.where} has {len(source)} documents, fewer than the {S} reader shards "
                        "(data.stream_shards), so a shard would have none; lower data.stream_shards or add "
                        "data")  # fmt: skip
    return (docs if source.tokenized else docs.map(Tokenize(plan.tokenizer_path))), n


def pack_window(pieces: list[np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One row from the T + 1 tokens of its window, given as one piece per document fragment: the
    row contract of every packer (loader.py's PackedSequences and the streaming RowPacker)."""
    window = np.concatenate(pieces)
    seg = np.repeat(np.arange(1, len(pieces) + 1, dtype=np.int32), [p.size for p in pieces])
    inputs_seg = seg[:-1]
    first = np.empty(seq_len, bool)  # the first token of each fragment
    first[0], first[1:] = True, inputs_seg[1:] != inputs_seg[:-1]
    idx = np.arange(seq_len)
    positions = idx - np.maximum.accumulate(np.where(first, idx, 0))
    return {
        "inputs": window[:-1].astype(np.int32),
        "targets": window[1:].astype(np.int32),
        "segment_ids": inputs_seg,
        "positions": positions.astype(np.int32),
        "target_mask": (inputs_seg == seg[1:]).astype(np.int32),
    }


class RowPacker:
    """One component's rows in one reader shard. State: the document the next row starts in
    (an index into all epochs) and the token offset into its [BOS] + tokens + [EOS].

    Documents are read ahead in batches (grain's batched `_getitems`: its per-read bookkeeping
    costs ~25 us, 4x a .bin document's own read), up to READ_AHEAD documents and about
    READ_AHEAD_TOKENS tokens at once; what is read ahead is derived from the state, never part of it."""

    def __init__(self, docs: grain.MapDataset, n_docs: int, seq_len: int, bos_id: int | None, eos_id: int, where: str):
        self.docs, self.n_docs, self.seq_len, self.where = docs, n_docs, seq_len, where
        self._bos = np.array([] if bos_id is None else [bos_id], np.int64)
        self._eos = np.array([eos_id], np.int64)
        self.doc = self.offset = 0
        self._cached: tuple[int, np.ndarray | None] = (-1, None)
        self._ahead: dict[int, Any] = {}
        self._batch = 8  # documents read at once; grows to READ_AHEAD while they stay short

    def _read(self, d: int) -> Any:
        if d not in self._ahead:
            read = getattr(self.docs, "_getitems", None)
            docs = read(list(range(d, d + self._batch))) if read else [self.docs[d]]
            tokens = max(sum(np.size(x) for x in docs), 1)
            self._batch = max(1, min(READ_AHEAD, 2 * self._batch, self._batch * READ_AHEAD_TOKENS // tokens))
            self._ahead = {d + i: x for i, x in enumerate(docs)}
        return self._ahead[d]

    def _augmented(self, d: int) -> np.ndarray | None:
        """[BOS] + tokens + [EOS] of document d, or None for an empty document."""
        if self._cached[0] != d:
            ids = np.asarray(self._read(d), np.int64)
            self._cached = (d, np.concatenate([self._bos, ids, self._eos]) if ids.size else None)
        return self._cached[1]

    def _nonempty(self, d: int) -> tuple[int, np.ndarray]:
        for skipped in range(2 * self.n_docs):  # any 2n documents in a row hold a whole epoch
            a = self._augmented(d + skipped)
            if a is not None:
                return d + skipped, a
        raise DataError(f"every document {self.where} reads is empty after cleaning; remove the component or fix "
                        "its text field")  # fmt: skip

    def next_row(self) -> dict[str, np.ndarray]:
        need, pieces = self.seq_len + 1, []
        d, start = self.doc, self.offset
        while True:
            d, a = self._nonempty(d)
            piece = a[start : start + need]
            pieces.append(piece)
            need -= piece.size
            if not need:
                break
            d, start = d + 1, 0
        self.doc, self.offset = d, start + piece.size - 1  # the next row starts at this window's last token
        return pack_window(pieces, self.seq_len)


class ShardStream:
    """Reader shard `shard`: its rows, each drawn from a component with probability w_c / sum(w)."""

    def __init__(self, plan: StreamPlan, shard: int, state: dict | None = None):
        self.shard, self.row = shard, 0
        self.packers = [RowPacker(*shard_documents(plan, c, shard), plan.seq_len, comp.bos_id, comp.eos_id, comp.where)
                        for c, comp in enumerate(plan.components)]  # fmt: skip
        weights = np.array([comp.weight for comp in plan.components], np.float64)
        self._cumulative = np.cumsum(weights) / weights.sum()
        self._seed, self._draws = plan.seed, (-1, np.zeros(0, np.int64))
        if state is not None:
            self.set_state(state)

    def component(self, k: int) -> int:
        """The component row k is drawn from (seeded by data.seed, the shard and k // MIX_BLOCK)."""
        block, i = divmod(k, MIX_BLOCK)
        if self._draws[0] != block:
            u = np.random.default_rng([self._seed, 0x6D6978, self.shard, block]).random(MIX_BLOCK)
            draws = np.searchsorted(self._cumulative, u, side="right")
            self._draws = (block, np.minimum(draws, len(self.packers) - 1))  # u < 1 = cumulative[-1] up to rounding
        return int(self._draws[1][i])

    def next_chunk(self, rows: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """The next `rows` rows, stacked, and the component of each."""
        comps = np.array([self.component(self.row + i) for i in range(rows)], np.int32)
        self.row += rows
        made = [self.packers[c].next_row() for c in comps]
        return {k: np.stack([r[k] for r in made]) for k in KEYS}, comps

    def get_state(self) -> dict[str, Any]:
        return {"row": self.row, "parts": [{"doc": p.doc, "offset": p.offset} for p in self.packers]}

    def set_state(self, state: dict[str, Any]) -> None:
        self.row = int(state["row"])
        for p, part in zip(self.packers, state["parts"], strict=True):
            p.doc, p.offset = int(part["doc"]), int(part["offset"])


class ShardChunks(grain.IterDataset):
    """The chunks (B/S rows) of the reader shards its parent lists, round robin: with grain
    workers, `mp_prefetch` hands each worker a slice of the parent's shard ids."""

    def __init__(self, shard_ids: grain.IterDataset, plan: StreamPlan, states: dict[int, dict]):
        super().__init__(shard_ids)
        self.plan, self.states = plan, states

    def __iter__(self) -> _ShardChunksIterator:
        return _ShardChunksIterator(self._parent.__iter__(), self.plan, self.states)

    def __str__(self) -> str:
        return "ShardChunks"


class _ShardChunksIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, plan: StreamPlan, states: dict[int, dict]):
        super().__init__(parent)
        self.plan = plan
        self.streams = [ShardStream(plan, int(s), states.get(int(s))) for s in parent]
        self.turn = 0

    def __next__(self) -> dict[str, Any]:
        stream = self.streams[self.turn]
        self.turn = (self.turn + 1) % len(self.streams)
        rows, comps = stream.next_chunk(self.plan.rows_per_shard)
        # The shard's state after this chunk travels with it: the consumer knows the state of
        # exactly what it consumed, however far workers and prefetching have read ahead.
        return {"shard": stream.shard, "rows": rows, "components": comps, "state": json.dumps(stream.get_state())}

    def get_state(self) -> dict[str, Any]:
        return {"turn": self.turn, "shards": {str(s.shard): s.get_state() for s in self.streams}}

    def set_state(self, state: dict[str, Any]) -> None:
        self.turn = int(state["turn"])
        for s in self.streams:
            s.set_state(state["shards"][str(s.shard)])
