"""Random token batches in the train step's input format, for benchmarks that time the step."""

from __future__ import annotations

import numpy as np


def random_batches(n: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """`n` batches of uniform random tokens (one document per row, every target counted)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        stream = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
        out.append({
            "inputs": stream[:, :-1].copy(),
            "targets": stream[:, 1:].copy(),
            "positions": np.broadcast_to(np.arange(seq, dtype=np.int32), (batch, seq)).copy(),
            "segment_ids": np.ones((batch, seq), np.int32),
            "target_mask": np.ones((batch, seq), np.float32),
        })  # fmt: skip
    return out
