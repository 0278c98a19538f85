"""Tokenized conversations -> the trainer's batches (the same dict pre-training uses).

Each example becomes next-token pairs: inputs ids[:-1], targets ids[1:], target weight
= the weight of the target token (1 on reply tokens). Rows are `seq_len` long, either
one example per row, right-padded (packing off), or several examples per row, each its
own segment with positions restarting at 0 (packing on: no attention crosses examples,
jaxllm/model/attention.py). Padding is segment 0 with weight 0. Longer examples are cut
at seq_len (counted, and reported by the caller).

The iterator is a deterministic function of (seed, epoch, cursor), which is all its
checkpointed state: a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxllm.posttrain.data import Example


def example_pairs(ex: Example, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, weights) of one example, at most seq_len long."""
    return ex.ids[:-1][:seq_len], ex.ids[1:][:seq_len], ex.weights[1:][:seq_len]


class SFTBatches:
    """Endless, shuffled, resumable batches of SFT rows."""

    def __init__(self, examples: Sequence[Example], batch_size: int, seq_len: int, packing: bool, seed: int):
        if not examples:
            raise ValueError("no examples to batch")
        self.examples = list(examples)
        self.batch_size, self.seq_len, self.packing, self.seed = batch_size, seq_len, packing, seed
        self.epoch, self.cursor = 0, 0
        self._order = self._shuffle(0)
        self.truncated = sum(len(e.ids) - 1 > seq_len for e in self.examples)

    def _shuffle(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.examples))

    def _next_example(self) -> Example:
        if self.cursor == len(self._order):
            self.epoch, self.cursor = self.epoch + 1, 0
            self._order = self._shuffle(self.epoch)
        ex = self.examples[self._order[self.cursor]]
        self.cursor += 1
        return ex

    def _peek(self) -> Example:
        if self.cursor == len(self._order):
            return self.examples[self._shuffle(self.epoch + 1)[0]]
        return self.examples[self._order[self.cursor]]

    def __iter__(self) -> SFTBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        B, T = self.batch_size, self.seq_len
        batch = {
            "inputs": np.zeros((B, T), np.int32),
            "targets": np.zeros((B, T), np.int32),
            "target_mask": np.zeros((B, T), np.float32),
            "positions": np.zeros((B, T), np.int32),
            "segment_ids": np.zeros((B, T), np.int32),
        }
        for b in range(B):
            used, segment = 0, 0
            while True:
                n = min(len(self._peek().ids) - 1, T)
                if segment and (not self.packing or used + n > T):
                    break
                x, y, w = example_pairs(self._next_example(), T)
                segment += 1
                sl = slice(used, used + len(x))
                batch["inputs"][b, sl], batch["targets"][b, sl], batch["target_mask"][b, sl] = x, y, w
                batch["positions"][b, sl] = np.arange(len(x))
                batch["segment_ids"][b, sl] = segment
                used += len(x)
                if used >= T:
                    break
        return batch

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def set_state(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self._order = self._shuffle(self.epoch)


def eval_batches(examples: Sequence[Example], batch_size: int, seq_len: int) -> list[dict[str, np.ndarray]]:
    """Every example once, one per row, the last batch padded with empty rows (weight 0)."""
    it = SFTBatches(examples, 1, seq_len, packing=False, seed=0)
    it._order = np.arange(len(examples))
    rows = [next(it) for _ in range(len(examples))]
    empty = {k: np.zeros_like(v) for k, v in rows[0].items()}
    rows += [empty] * (-len(rows) % batch_size)
    return [
        {k: np.concatenate([r[k] for r in rows[i : i + batch_size]]) for k in rows[0]}
        for i in range(0, len(rows), batch_size)
    ]
