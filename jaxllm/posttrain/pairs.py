"""Preference pairs shared by DPO and the reward model: rows, batches, the batch
cycle, the common Task plumbing and held-out metrics."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config
from jaxllm.parallel import distributed
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.mesh import make_mesh
from jaxllm.posttrain.batches import example_pairs
from jaxllm.posttrain.data import to_preference, tokenize_conversation
from jaxllm.train.load import load_run
from jaxllm.train.loop import quiet, writer_for
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.trainer import Task, TrainResult, train


def pair_rows(tokenizer, chat, record, where: str, seq_len: int):
    """(chosen (inputs, targets, weights), rejected (...)) of one preference record."""
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
    """Endless shuffled pass over fixed batches; its state is (epoch, cursor).

    A batch given as None was not prepared (see `read_by`): reading it is an error."""

    def __init__(self, batches: list, seed: int):
        self.batches, self.seed, self.epoch, self.cursor = batches, seed, 0, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.cursor == len(self.batches):
            self.epoch, self.cursor = self.epoch + 1, 0
        self.cursor += 1
        index = _order(len(self.batches), self.seed, self.epoch)[self.cursor - 1]
        if self.batches[index] is None:
            raise RuntimeError(f"batch {index} (epoch {self.epoch}, read {self.cursor}) was not prepared: only "
                               "the batches of the run's train.steps reads are; rebuild the task for more steps")
        return self.batches[index]

    @staticmethod
    def read_by(reads: int, num_batches: int, seed: int) -> set[int]:
        """The indices of the batches that the first `reads` reads of a fresh cycle return:
        the reads of a run of `reads` steps, resumed or not (a resumed cycle continues the
        same sequence). Lets a task prepare only those (DPO's reference log-probs)."""
        out: set[int] = set()
        for epoch in range(-(-reads // max(num_batches, 1))):
            out.update(int(i) for i in _order(num_batches, seed, epoch)[: reads - epoch * num_batches])
            if len(out) == num_batches:
                break
        return out

    def get_state(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def set_state(self, state: dict) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])


def _order(num_batches: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` of a BatchCycle reads its batches."""
    return np.random.default_rng((seed, epoch)).permutation(num_batches)


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

    def initial_params(self, cfg: Config, layout: Layout):
        return self.start


def batch_function(fn: Callable, layout: Layout | None) -> Callable:
    """`fn(params, batch)` jitted, called with a host batch, answering host arrays. With the
    run's `layout` the batch (whole in every process) is split over the batch axes, the
    activations follow the run's rules and every process gets the whole answer, so the
    same code serves one process or many; without, one process's plain jit."""
    if layout is None:
        plain = jax.jit(fn)
        return lambda params, batch: jax.device_get(plain(params, {k: jnp.asarray(v) for k, v in batch.items()}))

    def traced(params, batch):
        with layout.activations():
            return fn(params, batch)

    jitted = jax.jit(traced, out_shardings=layout.replicated)

    def call(params, batch):
        with jax.set_mesh(layout.mesh):
            return jax.device_get(jitted(params, layout.put(batch)))

    return call


def mean_metrics(loss_fn: Callable, cfg: Config, params, batches: list, layout: Layout | None = None) -> dict:
    """Mean loss and mean of every metric of `loss_fn` over `batches`, pair-weighted."""
    fn = batch_function(lambda p, b: loss_fn(cfg, p, b, None, None), layout)
    total: dict[str, float] = {}
    n = 0.0
    for b in batches:
        s, c, aux = fn(params, b)
        n += float(c)
        for k, v in {"loss": s, **aux}.items():
            total[k] = total.get(k, 0.0) + float(v)
    return {k: v / max(n, 1.0) for k, v in total.items()}


def run_layout(cfg: Config) -> Layout:
    """The Layout of a post-training run, built at its entry point: before the task reads
    its start run (straight into the run's shardings) and measures the held-out pairs."""
    return Layout.build(cfg, make_mesh(cfg.mesh), make_optimizer(cfg.optimizer, cfg.model))


def train_and_measure(
    cfg: Config,
    make_task: Callable[[Layout, Callable[[str], None]], PairTask],
    metrics: Callable,
    label: str,
    log: Callable[[str], None],
    stop_after: int | None,
    reset: bool = False,
) -> tuple[TrainResult, dict]:
    """Train on a pair task and measure `metrics(cfg, params, batches, layout)` on its
    held-out pairs before (when it starts from a run) and after; the "after" figures also go
    to metrics.jsonl as split `val_preference`. Returns (run, {"before": ..., "after": ...}).
    Joins the multi-process run the environment describes (jaxllm/parallel/distributed.py)."""
    with distributed.joined():
        log = log if jax.process_index() == 0 else quiet  # one voice per run
        layout = run_layout(cfg)
        task = make_task(layout, log)
        before = metrics(cfg, task.start, task.val, layout) if task.val and task.start is not None else None
        result = train(cfg, log, stop_after, task=task, reset=reset, layout=layout)
        report: dict = {"before": before}
        if task.val:
            _, params, _ = load_run(result.run_dir, layout=layout)
            report["after"] = after = metrics(cfg, params, task.val, layout)
            writer = writer_for(result.run_dir, tensorboard=False)
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
