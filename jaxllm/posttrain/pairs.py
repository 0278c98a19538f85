"""Preference pairs shared by DPO and the reward model: rows, batches, the batch
cycle, the common Task plumbing and held-out metrics."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config
from jaxllm.train.trainer import Task, TrainResult, train


def pair_rows(tokenizer, chat, record, where: str, seq_len: int):
    """(chosen (inputs, targets, weights), rejected (...)) of one preference record."""
    from jaxllm.posttrain.batches import example_pairs
    from jaxllm.posttrain.data import to_preference, tokenize_conversation

    prompt, chosen, rejected = to_preference(record, where)
    out = []
    for reply in (chosen, rejected):
        ex = tokenize_conversation(tokenizer, chat, [*prompt, {"role": "assistant", "content": reply}])
        out.append(example_pairs(ex, seq_len))
    return out


def pair_batches(pairs: list, batch_size: int, seq_len: int) -> list[dict[str, np.ndarray]]:
    """Fixed batches of pairs (the last padded with weight-0 pairs)."""
    pad = (-len(pairs)) % batch_size
    batches = []
    for i in range(0, len(pairs) + pad, batch_size):
        b = {f"{side}_{k}": np.zeros((batch_size, seq_len), dt) for side in ("chosen", "rejected")
             for k, dt in (("inputs", np.int32), ("targets", np.int32), ("mask", np.float32))}  # fmt: skip
        b["pair_weight"] = np.zeros((batch_size,), np.float32)
        b["chosen_length"] = np.zeros((batch_size,), np.int32)
        b["rejected_length"] = np.zeros((batch_size,), np.int32)
        for r, pair in enumerate(pairs[i : i + batch_size]):
            for side, (x, y, w) in zip(("chosen", "rejected"), pair, strict=True):
                b[f"{side}_inputs"][r, : len(x)] = x
                b[f"{side}_targets"][r, : len(y)] = y
                b[f"{side}_mask"][r, : len(w)] = w
                b[f"{side}_length"][r] = len(x)
            b["pair_weight"][r] = 1.0
        batches.append(b)
    return batches


class BatchCycle:
    """Endless shuffled pass over fixed batches; its state is (epoch, cursor)."""

    def __init__(self, batches: list, seed: int):
        self.batches, self.seed, self.epoch, self.cursor = batches, seed, 0, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.cursor == len(self.batches):
            self.epoch, self.cursor = self.epoch + 1, 0
        order = np.random.default_rng((self.seed, self.epoch)).permutation(len(self.batches))
        self.cursor += 1
        return self.batches[order[self.cursor - 1]]

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def set_state(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


class PairTask(Task):
    """A Task over fixed pair batches: `train_batches`, `val` and `start` set by the subclass."""

    train_batches: list
    val: list
    start = None
    global_batches = True  # every process builds the same pair batches and keeps its rows

    def train_iter(self, cfg: Config) -> BatchCycle:
        return BatchCycle(self.train_batches, cfg.train.seed)

    def has_val(self, cfg: Config) -> bool:
        return bool(self.val)

    def val_batches(self, cfg: Config):
        return self.val

    def initial_params(self, cfg: Config, mesh, shardings):
        return self.start


def mean_metrics(loss_fn: Callable, cfg: Config, params, batches: list) -> dict[str, float]:
    """Mean loss and mean of every metric of `loss_fn` over `batches`, pair-weighted."""
    fn = jax.jit(loss_fn, static_argnums=(0, 4))
    total: dict[str, float] = {}
    n = 0.0
    for b in batches:
        s, c, aux = fn(cfg, params, {k: jnp.asarray(v) for k, v in b.items()}, None, None)
        n += float(c)
        for k, v in {"loss": s, **aux}.items():
            total[k] = total.get(k, 0.0) + float(v)
    return {k: v / max(n, 1.0) for k, v in total.items()}


def train_and_measure(
    cfg: Config,
    task: PairTask,
    metrics: Callable,
    label: str,
    log: Callable[[str], None],
    stop_after: int | None,
    reset: bool = False,
) -> tuple[TrainResult, dict]:
    """Train on a pair task and measure `metrics(cfg, params, batches)` on its held-out
    pairs before (when it starts from a run) and after; the "after" figures also go to
    metrics.jsonl as split `val_preference`. Returns (run, {"before": ..., "after": ...})."""
    from jaxllm.train.load import load_run
    from jaxllm.train.metrics import MetricsWriter

    before = metrics(cfg, task.start, task.val) if task.val and task.start is not None else None
    result = train(cfg, log, stop_after, task=task, reset=reset)
    report: dict = {"before": before}
    if task.val:
        _, params, _ = load_run(result.run_dir)
        report["after"] = after = metrics(cfg, params, task.val)
        writer = MetricsWriter(result.run_dir, tensorboard=False)
        if before:  # the starting point of the held-out curve (`jaxllm plot` draws both)
            writer.write(0, "val_preference", before)
        writer.write(result.step, "val_preference", after)
        writer.close()
        if before:
            log(f"{label}: {before['accuracy']:.1%} -> {after['accuracy']:.1%}, "
                f"margin {before['margin']:.4f} -> {after['margin']:.4f}")  # fmt: skip
        else:
            log(f"{label}: {after['accuracy']:.1%}, margin {after['margin']:.4f}")
    return result, report
