"""The streaming training mixture (`data.mixture`): weighted components, read by reader shards,
assembled into global batches whose state resumes exactly, on any number of processes.

    data:
      mixture:
        - {path: data/books, weight: 3}              # a prepared dataset folder (its train split)
        - {path: "web/*.jsonl.zst", weight: 1}        # raw JSONL, tokenized on the fly
      stream_shards: 8                                # reader shards (0: one per process)

The stream is S reader shards (S = data.stream_shards, or the process count when 0). Shard s
reads documents s, s+S, s+2S, ... of every component, packs them into rows and draws each
row's component by weight (jaxllm/data/stream_rows.py). Global batch b is the concatenation,
over s = 0..S-1, of shard s's next B/S rows. Process p of P owns shards [p*S/P, (p+1)*S/P)
and yields their rows only: its local batch is exactly its slice of the global batch, the
rows its devices hold (as loader.py's ProcessRows), so processes read disjoint documents and
the global stream depends on S, never on P.

Resume: each shard's state is a few integers (the row it is at, and per component the
document and token its next row starts at). `get_state()` returns every shard's state on
every process (gathered with one all-gather when there are several processes; orbax writes
process 0's copy into the checkpoint) and `set_state()` takes this process's shards from it,
so a run can resume on another number of processes as long as S is the same.

Workers: with data.num_workers > 0 grain's `mp_prefetch` runs the reader shards in worker
processes, each a slice of this process's shards; every chunk carries its shard's state, so
the state is that of exactly what the trainer consumed however far the workers read ahead.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from jaxllm.config import Config
from jaxllm.data.manifest import MANIFEST
from jaxllm.data.ready import check_dataset
from jaxllm.data.stream_rows import KEYS, Component, ShardChunks, StreamPlan
from jaxllm.data.stream_sources import open_source
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.errors import DataError

STATE_VERSION = 1
Batch = dict[str, np.ndarray]


def reader_shards(cfg: Config, process_count: int) -> int:
    """S, checked: a multiple of the process count that divides train.batch_size."""
    S, B, P = cfg.data.stream_shards or process_count, cfg.train.batch_size, process_count
    if S % P:
        raise DataError(f"data.stream_shards={S} is not a multiple of the {P} processes: each process reads the same "
                        f"number of reader shards; set data.stream_shards to a multiple of {P}")  # fmt: skip
    if B % S:
        divisors = [d for d in range(P, B + 1, P) if B % d == 0]
        raise DataError(f"train.batch_size={B} is not divisible by data.stream_shards={S}: every reader shard gives "
                        f"B/S rows to each batch; set data.stream_shards to one of {divisors} or change the batch "
                        "size")  # fmt: skip
    return S


def stream_plan(cfg: Config, shards: int) -> StreamPlan:
    """Open every component (a prepared folder's tokenizer must be the run's) into a plan."""
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    components = []
    for i, m in enumerate(cfg.data.mixture):
        where = f"data.mixture[{i}]"
        source = open_source(m.path, m.field, where)
        bos, eos = tokenizer.bos_id, tokenizer.eos_id
        if source.tokenized:
            made = source.tokenizer
            if str(made["identity"]) != tokenizer.identity:
                raise DataError(f"{where}.path={m.path!r} was prepared with the tokenizer {made['path']!r}, not "
                                f"tokenizer.path={cfg.tokenizer.path!r}: its ids name other pieces; prepare it again "
                                "with this tokenizer, or stream its raw text files instead")  # fmt: skip
            bos, eos = made["bos_id"], made["eos_id"]
        components.append(Component(source, float(m.weight), bos, eos, f"{where} ({m.path!r})"))
    return StreamPlan(components, cfg.tokenizer.path, cfg.data.seq_len, cfg.data.seed, shards,
                      cfg.train.batch_size // shards)  # fmt: skip


def check_mixture(cfg: Config, log: Callable[[str], None] = print) -> None:
    """What training checks before it reads the mixture: the run's tokenizer fits the model,
    and each prepared component is what its manifest records (its tokenizer is the run's, its
    shards have their sha256; jaxllm/data/ready.py, remembered between starts)."""
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise DataError(f"model.vocab_size={cfg.model.vocab_size} is smaller than the tokenizer's "
                        f"{tokenizer.vocab_size} ids ({cfg.tokenizer.path}); set model.vocab_size="
                        f"{tokenizer.vocab_size} or more")  # fmt: skip
    for i, m in enumerate(cfg.data.mixture):
        folder = Path(m.path).expanduser()
        if (folder / MANIFEST).is_file():
            try:
                check_dataset(dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(folder), inputs=())),
                              log)  # fmt: skip
            except DataError as e:
                raise DataError(f"data.mixture[{i}]: {e}") from None


def make_stream(
    cfg: Config, split: str = "train", *, process_index: int | None = None, process_count: int | None = None
) -> Stream:
    """This process's local batches of the mixture (dicts of (B/P, T) int32 arrays), as an
    iterator with get_state() / set_state(). Only training streams: validation reads data.path."""
    if split != "train":
        raise DataError(f"the streaming mixture is a training stream (split={split!r}); validation reads data.path")
    if not cfg.data.mixture:
        raise DataError("data.mixture is empty; name its components, e.g. data.mixture=[{path: data/prepared}]")
    P = jax.process_count() if process_count is None else process_count
    p = jax.process_index() if process_index is None else process_index
    if not 0 <= p < P:
        raise DataError(f"process_index={p} is outside [0, {P})")
    plan = stream_plan(cfg, reader_shards(cfg, P))
    return Stream(plan, p, P, cfg.data.num_workers, cfg.data.prefetch)


def gather_states(local: dict[str, Any], allgather: Callable[[np.ndarray], Any] | None = None) -> dict[str, Any]:
    """Every process's shard states, merged, on every process (`local` alone with one process).

    JSON bytes travel in a buffer as long as the longest process's, after one all-gather of
    the lengths: jax's all-gather needs the same shape on every process."""
    if allgather is None:
        if jax.process_count() == 1:
            return dict(local)
        allgather = multihost_utils.process_allgather
    data = np.frombuffer(json.dumps(local).encode(), np.uint8)
    sizes = np.asarray(allgather(np.array([data.size], np.int32))).reshape(-1)
    buffer = np.zeros(int(sizes.max()), np.uint8)
    buffer[: data.size] = data
    merged: dict[str, Any] = {}
    for row, n in zip(np.asarray(allgather(buffer)).reshape(sizes.size, -1), sizes, strict=True):
        merged.update(json.loads(row[:n].tobytes()))
    return merged


class Stream:
    """This process's batches of the mixture; the trainer's data iterator."""

    def __init__(self, plan: StreamPlan, process_index: int, process_count: int, num_workers: int, prefetch: int,
                 gather: Callable[[dict[str, Any]], dict[str, Any]] = gather_states):  # fmt: skip
        self.plan, self.prefetch, self.gather = plan, prefetch, gather
        L = plan.shards // process_count
        self.shards = list(range(process_index * L, (process_index + 1) * L))  # this process's reader shards
        # grain's workers take slices of the shards and take turns, so they must split them evenly
        self.workers = max([w for w in range(1, L + 1) if L % w == 0 and w <= num_workers], default=0)
        if self.workers < num_workers:
            warnings.warn(f"data.num_workers={num_workers}: {self.workers} worker(s) read, since each reads whole "
                          f"reader shards and this process has {L}; set data.stream_shards to a multiple of "
                          f"{process_count * num_workers} to use them all", stacklevel=3)  # fmt: skip
        fresh = {"row": 0, "parts": [{"doc": 0, "offset": 0} for _ in plan.components]}
        self._states = {s: json.dumps(fresh) for s in self.shards}  # after the last batch handed out
        self._iterator: Any = None
        self.components: np.ndarray | None = None  # the component of each row of the last batch

    def _start(self) -> None:
        shard_ids = grain.MapDataset.range(self.shards[0], self.shards[-1] + 1).to_iter_dataset(
            grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
        )  # a sliceable parent: grain's workers each take a slice
        ds = ShardChunks(shard_ids, self.plan, {s: json.loads(self._states[s]) for s in self.shards})
        depth = max(self.prefetch, 1) * len(self.shards)  # chunks read ahead: data.prefetch batches
        if self.workers:
            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; a library caller never parsed them
                flags.FLAGS.mark_as_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.workers,
                                                             per_worker_buffer_size=depth // self.workers))  # fmt: skip
        elif self.prefetch:
            ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=depth)
        self._iterator = iter(ds)

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> Batch:
        if self._iterator is None:
            self._start()
        chunks = [next(self._iterator) for _ in self.shards]
        got = [int(c["shard"]) for c in chunks]
        if got != self.shards:
            raise RuntimeError(f"the readers returned shards {got} for one batch, not {self.shards}")
        for c in chunks:
            self._states[int(c["shard"])] = c["state"]
        self.components = np.concatenate([c["components"] for c in chunks])
        return {k: np.concatenate([c["rows"][k] for c in chunks]) for k in KEYS}

    def get_state(self) -> dict[str, Any]:
        """The state of every reader shard (gathered from all processes) after the last batch."""
        local = {str(s): json.loads(self._states[s]) for s in self.shards}
        return {"stream": STATE_VERSION, "stream_shards": self.plan.shards, "components": len(self.plan.components),
                "shards": self.gather(local)}  # fmt: skip

    def set_state(self, state: dict[str, Any]) -> None:
        """Continue after the batch `state` was saved at (this process's shards of it)."""
        if state.get("stream") != STATE_VERSION:
            raise DataError("the checkpoint's data state is not a streaming mixture's (it was saved by a run reading "
                            "data.path); resume with the settings it was saved with, or start a new run")  # fmt: skip
        if state["stream_shards"] != self.plan.shards or state["components"] != len(self.plan.components):
            raise DataError(f"the checkpoint's stream has {state['stream_shards']} reader shards and "
                            f"{state['components']} mixture components, this run {self.plan.shards} and "
                            f"{len(self.plan.components)}; set data.stream_shards={state['stream_shards']} and "
                            "the same components to resume")  # fmt: skip
        missing = [s for s in self.shards if str(s) not in state["shards"]]
        if missing:
            have = sorted(map(int, state["shards"]))
            raise DataError(f"the data state holds no state for reader shards {missing} (it has {have}); it was "
                            "not gathered from every process")  # fmt: skip
        self.close()  # the readers restart from the new states on the next batch
        self._states = {s: json.dumps(state["shards"][str(s)]) for s in self.shards}

    def close(self) -> None:
        """Stop the reader threads or worker processes (a new batch starts them again)."""
        if self._iterator is not None and hasattr(self._iterator, "close"):
            self._iterator.close()
        self._iterator = None
