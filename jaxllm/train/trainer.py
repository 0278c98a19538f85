"""The training loop behind `jaxllm train CONFIG [overrides]`.

One loop for every mesh: build the mesh, place a fresh or restored state, then per step
read this process's rows, run the jitted sharded step, and log. Metrics of step i are
fetched to the host after step i+1 has been dispatched, so logging never stalls the
device. Evaluation runs every `train.eval_every` steps, checkpoints every
`train.checkpoint_every` (asynchronously), and SIGTERM / SIGINT (preemption, Ctrl-C)
save a checkpoint before the process exits.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxllm.config import Config, ConfigError, to_dict
from jaxllm.data.loader import make_dataset
from jaxllm.data.ready import check_dataset
from jaxllm.errors import DataError, JaxllmError
from jaxllm.model.pipelined import bubble_fraction
from jaxllm.model.summary import flops_per_token
from jaxllm.parallel.mesh import make_mesh
from jaxllm.train.checkpoint import Checkpointer, config_changes
from jaxllm.train.flops import peak_flops
from jaxllm.train.metrics import MetricsWriter
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.run_folder import RunFolder, absolute_paths
from jaxllm.train.state import abstract_state, init_state, state_shardings
from jaxllm.train.step import make_eval_step, make_train_step, shard_batch


class NonFiniteLoss(JaxllmError, RuntimeError):
    """The loss or gradient norm became NaN/inf (train.on_nonfinite=stop)."""


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_losses: dict[int, float]
    val_losses: dict[int, float]
    interrupted: int | None = None  # the signal number, if a signal ended the run
    tokens_per_s: float = 0.0


class _Signals:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum: int, frame) -> None:
        self.received = signum

    def agreed(self) -> int | None:
        """The signal that stops the run, the same in every process.

        With several processes a signal may reach only some of them; they must still
        stop at the same step (a process that leaves early would hang the others in the
        next collective), so the processes share what they received each step."""
        if jax.process_count() == 1:
            return self.received
        from jax.experimental import multihost_utils

        every = multihost_utils.process_allgather(np.int32(self.received or 0))
        return int(np.max(every)) or None

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _quiet(_: str) -> None:
    """The log of processes other than 0: one voice per run."""


class _NoMetrics:
    """Stands in for MetricsWriter in processes other than 0."""

    def write(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


_STEP_KEYS = ("loss", "lr", "grad_norm", "tokens", "finite")


def _format_time(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def check_vocab(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """The prepared dataset's manifest, after checking the data is what the config names
    (its inputs, tokenizer and shard bytes: jaxllm/data/ready.py) and that its tokenizer
    fits the model."""
    manifest = check_dataset(cfg, log)
    vocab = manifest["tokenizer"]["vocab_size"]
    if vocab > cfg.model.vocab_size:
        raise DataError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the dataset's tokenizer ({vocab} ids, "
            f"{manifest['tokenizer']['path']}); set model.vocab_size={vocab} or more"
        )
    return manifest


def check_batch(cfg: Config, mesh) -> None:
    """Each microbatch must split evenly over the data-parallel devices (data x fsdp)."""
    shards = mesh.shape["data"] * mesh.shape["fsdp"]
    per_micro = cfg.train.batch_size // cfg.train.microbatches
    if per_micro % shards:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} / train.microbatches={cfg.train.microbatches} = {per_micro} rows "
            f"do not split over mesh data x fsdp = {shards} devices; use a batch size that is a multiple of "
            f"{shards * cfg.train.microbatches}"
        )


def process_rows(batch: dict) -> dict:
    """This process's rows of a global batch that every process built alike (instruction
    and preference batches): process i takes the i-th block of rows, the rows its devices
    hold on the mesh, as the pre-training pipeline's per-process slices do."""
    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return batch
    rows = len(next(iter(batch.values())))
    if rows % n:
        raise ConfigError(f"train.batch_size={rows} is not divisible by the {n} processes; use a multiple of {n}")
    k = rows // n
    return {key: value[i * k : (i + 1) * k] for key, value in batch.items()}


def evaluate(
    cfg: Config, eval_step, params, mesh, has_val: bool = True, batches=None, global_batches: bool = False
) -> float | None:
    """Mean token loss over `train.eval_batches` validation batches (None without a val split).

    `batches`: the validation batches to use (a task's; `global_batches` when every
    process built the whole batch); default: the prepared dataset's, already per process."""
    if not has_val:
        return None
    if batches is None:
        try:
            batches = make_dataset(cfg, "val", epochs=1)
        except DataError:  # a validation split shorter than one batch row
            return None
    total = count = 0.0
    for i, batch in enumerate(batches):
        if i >= cfg.train.eval_batches:
            break
        s, c = jax.device_get(eval_step(params, shard_batch(process_rows(batch) if global_batches else batch, mesh)))
        total, count = total + float(s), count + float(c)
    return total / count if count else None


class Task:
    """What a training run learns from; the loop, sharding, checkpoints and metrics are
    the same for every task. The default is pre-training on the prepared dataset;
    instruction tuning (jaxllm/posttrain/sft.py) supplies its own batches and starting
    parameters."""

    name = "pretrain"
    loss_fn = None  # the train step's loss (None: next-token cross-entropy); see make_train_step
    tokens_per_count = 1.0  # tokens the model reads per unit of the loss's count (a DPO pair: 2 x seq_len)
    global_batches = False  # True: every process builds the whole global batch and keeps its own rows

    def train_iter(self, cfg: Config):
        """Batches with get_state/set_state (saved with each checkpoint)."""
        return iter(make_dataset(cfg, "train"))

    def has_val(self, cfg: Config) -> bool:
        return bool(check_vocab(cfg, _quiet)["splits"]["val"]["docs"])  # `jaxllm train` checked it aloud first

    def val_batches(self, cfg: Config):
        """Validation batches, or None for the prepared dataset's val split."""
        return None

    def initial_params(self, cfg: Config, mesh, shardings):
        """Parameters to start a fresh run from (None: random initialisation)."""
        return None


def train(
    cfg: Config,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    task: Task | None = None,
    reset: bool = False,
) -> TrainResult:
    """Train (or resume) the run in `cfg.train.out_dir`; `stop_after` ends early (tests).

    The run folder is locked for the run's life; `reset` first archives what it holds
    (`jaxllm train --reset`). See train/run_folder.py for what the folder guarantees."""
    task = task or Task()
    cfg = absolute_paths(cfg)
    primary = jax.process_index() == 0  # process 0 alone writes logs, metrics and config; orbax saves collectively
    with RunFolder(cfg.train.out_dir, primary, log if primary else _quiet) as folder:
        if reset:
            folder.reset()
        return _train(cfg, folder, log if primary else _quiet, stop_after, task)


def _train(
    cfg: Config, folder: RunFolder, log: Callable[[str], None], stop_after: int | None, task: Task
) -> TrainResult:
    t = cfg.train
    run_dir = folder.path
    primary = folder.primary
    has_val = task.has_val(cfg)

    mesh = make_mesh(cfg.mesh)
    check_batch(cfg, mesh)
    tx = make_optimizer(cfg.optimizer)
    shardings = state_shardings(cfg, mesh, tx)
    ckpt = Checkpointer(folder.checkpoints, keep=t.keep_checkpoints, keep_every=t.keep_every)
    data_iter = task.train_iter(cfg)
    restored = ckpt.restore_latest(abstract_state(cfg, tx, shardings), log=log, config=to_dict(cfg),
                                   quarantine=folder.quarantine)  # fmt: skip
    if restored is not None:
        step0, state, data_state, saved_config = restored
        if data_state:
            data_iter.set_state(data_state)
        else:  # a weights-only checkpoint (jaxllm convert from-hf, write_run): the data starts at its beginning
            log("the checkpoint holds no data-iterator state: reading the data from its start")
        log(f"resumed from {ckpt.directory}/{step0} (step {step0})")
        changes = config_changes(saved_config, to_dict(cfg))
        if changes:
            log(f"resuming with changed settings: {'; '.join(changes)}")
    else:
        state = init_state(cfg, mesh, tx)
        start = task.initial_params(cfg, mesh, shardings)
        if start is not None:  # e.g. instruction tuning from a pre-trained run: its weights, fresh AdamW moments
            params = jax.device_put(start, shardings["params"])
            opt_state = jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)
            state = {**state, "params": params, "opt_state": opt_state}
        step0 = 0
    folder.write_config(cfg)  # only now: the config validated, the data checked, the checkpoint restored
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    log(f"run {run_dir}: {n_params:,} params on mesh {dict(mesh.shape)} ({mesh.devices.size} devices, "
        f"{jax.devices()[0].device_kind}); {t.steps} steps of {t.batch_size} x {cfg.data.seq_len} tokens")  # fmt: skip

    if mesh.shape["pipeline"] > 1:
        S, R, M = mesh.shape["pipeline"], cfg.pipeline.repeats, t.microbatches
        log(f"pipeline: {S} stages x {R} repeats, {M} microbatches: bubble {bubble_fraction(S, M, R):.1%}")
    train_step = make_train_step(cfg, mesh, tx, task.loss_fn)
    eval_step = make_eval_step(cfg, mesh, tx, task.loss_fn)
    flops_token = flops_per_token(cfg, cfg.data.seq_len)
    peak = peak_flops(jax.devices()[0])
    peak_total = peak * mesh.devices.size if peak else None
    writer = MetricsWriter(run_dir, tensorboard=t.tensorboard) if primary else _NoMetrics()
    result = TrainResult(run_dir, step0, {}, {})
    last_step = min(t.steps, stop_after) if stop_after is not None else t.steps

    window_tokens, window_steps, window_start = 0.0, 0, time.perf_counter()
    run_start = time.perf_counter()
    pending: tuple[int, Any] | None = None

    def finish(step: int, metrics: Any) -> None:
        """Host side of a finished step: fetch its metrics (one step late), log, check."""
        nonlocal window_tokens, window_steps, window_start
        m = jax.device_get(metrics)
        loss, tokens = float(m["loss"]), float(m["tokens"]) * task.tokens_per_count
        window_tokens += tokens
        window_steps += 1
        result.train_losses[step] = loss
        if not bool(m["finite"]):
            if t.on_nonfinite == "stop":
                raise NonFiniteLoss(
                    f"non-finite loss ({loss}), gradient norm ({float(m['grad_norm'])}) or updated weights at step "
                    f"{step}; the update "
                    "was not applied. Lower optimizer.lr, check the data, or set train.on_nonfinite=skip"
                )
            log(f"warning: non-finite loss, gradient or updated weights at step {step}; update skipped")
        if step % t.log_every == 0 or step == last_step:
            now = time.perf_counter()
            dt = max(now - window_start, 1e-9)
            tok_s = window_tokens / dt
            values = {"loss": loss, "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
                      "tokens_per_s": tok_s, "step_time_s": dt / window_steps}  # fmt: skip
            values |= {k: float(v) for k, v in m.items() if k not in _STEP_KEYS}  # a task's own metrics (DPO: accuracy)
            if peak_total:
                values["mfu"] = tok_s * flops_token / peak_total
            writer.write(step, "train", values)
            result.tokens_per_s = tok_s
            done = step - step0
            eta = (time.perf_counter() - run_start) / max(done, 1) * (last_step - step)
            frac = step / last_step
            bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
            mfu = f" | MFU {values['mfu']:.1%}" if "mfu" in values else ""
            log(f"[{bar}] step {step}/{last_step} | loss {loss:.4f} | lr {values['lr']:.2e} | "
                f"gnorm {values['grad_norm']:.2f} | {tok_s:,.0f} tok/s | {values['step_time_s'] * 1e3:.0f} ms/step"
                f"{mfu} | ETA {_format_time(eta)}")  # fmt: skip
            window_tokens, window_steps, window_start = 0.0, 0, time.perf_counter()

    def save(step: int, force: bool = False) -> None:
        ckpt.save(step, state, data_iter.get_state(), to_dict(cfg), force=force)

    with _Signals() as signals:
        step = step0
        try:
            while step < last_step:
                host = next(data_iter)
                batch = shard_batch(process_rows(host) if task.global_batches else host, mesh)
                state, metrics = train_step(state, batch)
                step += 1
                if pending is not None:
                    finish(*pending)
                pending = (step, metrics)
                if step % t.eval_every == 0 or step == last_step:
                    finish(*pending)
                    pending = None
                    eval_start = time.perf_counter()
                    val = evaluate(cfg, eval_step, state["params"], mesh, has_val, task.val_batches(cfg),
                                   task.global_batches)  # fmt: skip
                    window_start += time.perf_counter() - eval_start  # throughput counts training time only
                    if val is not None:
                        result.val_losses[step] = val
                        writer.write(step, "val", {"loss": val, "perplexity": math.exp(min(val, 50.0))})
                        log(f"step {step}: val loss {val:.4f} (perplexity {math.exp(min(val, 50.0)):.2f})")
                saved = step % t.checkpoint_every == 0 or step == last_step
                if saved:
                    save(step)
                received = signals.agreed()
                if received is not None:
                    if pending is not None:
                        finish(*pending)
                        pending = None
                    if not saved:  # a signal on a checkpoint step: that checkpoint is the one
                        save(step, force=True)
                    result.interrupted = received
                    log(f"received signal {received} at step {step}: checkpoint saved, stopping")
                    break
            if pending is not None:
                finish(*pending)
        finally:
            ckpt.wait()
            writer.close()
    result.step = step
    final = ckpt.steps()
    ckpt.close()
    if primary and step > step0 and (not final or final[-1] != step):
        newest = final[-1] if final else "none"
        raise DataError(f"the checkpoint of the final step {step} was not written in {ckpt.directory} "
                        f"(its newest is {newest}); rerun the same command to resume")  # fmt: skip
    if result.interrupted is None:
        log(f"done: step {step} in {_format_time(time.perf_counter() - run_start)}; "
            f"checkpoints in {ckpt.directory}, metrics in {run_dir / 'metrics.jsonl'}")  # fmt: skip
    return result


def train_main(cfg: Config, reset: bool = False) -> int:
    """CLI wrapper: exit code 128 + signal when a signal stopped the run."""
    result = train(cfg, reset=reset)
    if result.interrupted is not None:
        sys.stdout.flush()
        return 128 + result.interrupted
    return 0


__all__ = ["NonFiniteLoss", "Task", "TrainResult", "evaluate", "train", "train_main"]
