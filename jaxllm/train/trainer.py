"""The training run behind `jaxllm train CONFIG [overrides]` (and SFT, DPO, reward models).

Build the mesh and the run's Layout once, place a fresh or restored state, then turn the
host loop (jaxllm/train/loop.py): per step read this process's rows, run the jitted
sharded step, and log. Metrics of step i are read after step i+1 has been dispatched, so
logging never stalls the device. Evaluation runs every `train.eval_every` steps,
checkpoints every `train.checkpoint_every` (asynchronously), and SIGTERM / SIGINT
(preemption, Ctrl-C) save a checkpoint before the process exits.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import jax

from jaxllm.config import Config, to_dict
from jaxllm.errors import DataError, JaxllmError
from jaxllm.model.pipelined import bubble_fraction
from jaxllm.model.summary import flops_per_token
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.mesh import make_mesh
from jaxllm.train.adapters import save_adapters
from jaxllm.train.checkpoint import Checkpointer, config_changes
from jaxllm.train.flops import peak_flops
from jaxllm.train.goodput import GOODPUT_SPLIT, Goodput
from jaxllm.train.loop import Hook, HostLoop, format_time, quiet, start_run, writer_for
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.run_folder import RunFolder, absolute_paths
from jaxllm.train.state import abstract_state, init_state
from jaxllm.train.step import make_eval_step, make_train_step, shard_batch
from jaxllm.train.task import Task, TrainResult, check_batch, check_vocab, evaluate, process_rows
from jaxllm.train.wandb_sink import import_wandb


class NonFiniteLoss(JaxllmError, RuntimeError):
    """The loss or gradient norm became NaN/inf (train.on_nonfinite=stop)."""


_STEP_KEYS = ("loss", "lr", "grad_norm", "tokens", "finite")


def train(
    cfg: Config,
    log: Callable[[str], None] = print,
    stop_after: int | None = None,
    task: Task | None = None,
    reset: bool = False,
    layout: Layout | None = None,
) -> TrainResult:
    """Train (or resume) the run in `cfg.train.out_dir`; `stop_after` ends early (tests).

    The run folder is locked for the run's life; `reset` first archives what it holds
    (`jaxllm train --reset`). See train/run_folder.py for what the folder guarantees.
    `layout`: the run's Layout when its entry point built it already (post-training
    builds it before its task reads the start run); else built here, once."""
    goodput = Goodput()  # the run's wall clock starts here: what comes before the first step is start-up
    start_run()
    if cfg.train.wandb:
        import_wandb()  # in every process, before the run folder is touched: a missing library stops all at once
    task = task or Task()
    cfg = absolute_paths(cfg)
    primary = jax.process_index() == 0  # process 0 alone writes logs, metrics and config; orbax saves collectively
    with RunFolder(cfg.train.out_dir, primary, log if primary else quiet) as folder:
        if reset:
            folder.reset()
        return _train(cfg, folder, log if primary else quiet, stop_after, task, layout, goodput)


def _train(
    cfg: Config, folder: RunFolder, log: Callable[[str], None], stop_after: int | None, task: Task,
    layout: Layout | None, goodput: Goodput,
) -> TrainResult:  # fmt: skip
    t = cfg.train
    has_val = task.has_val(cfg)
    tx = make_optimizer(cfg.optimizer, cfg.model)
    if layout is None:
        layout = Layout.build(cfg, make_mesh(cfg.mesh), tx)
    mesh = layout.mesh
    check_batch(cfg, mesh)
    ckpt = Checkpointer(folder.checkpoints, keep=t.keep_checkpoints, keep_every=t.keep_every)
    data_iter = task.train_iter(cfg)
    restored = ckpt.restore_latest(abstract_state(cfg, tx, layout.state), log=log, config=to_dict(cfg),
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
    else:  # e.g. instruction tuning from a pre-trained run: its weights, fresh AdamW moments
        state, step0 = init_state(cfg, layout, tx, task.initial_params(cfg, layout)), 0
    folder.write_config(cfg)  # only now: the config validated, the data checked, the checkpoint restored
    n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
    log(f"run {folder.path}: {n_params:,} params on mesh {dict(mesh.shape)} ({mesh.devices.size} devices, "
        f"{jax.devices()[0].device_kind}); {t.steps} steps of {t.batch_size} x {cfg.data.seq_len} tokens")  # fmt: skip
    if mesh.shape["pipeline"] > 1:
        S, R, M = mesh.shape["pipeline"], cfg.pipeline.repeats, t.microbatches
        log(f"pipeline: {S} stages x {R} repeats, {M} microbatches: bubble {bubble_fraction(S, M, R):.1%}")
    run = _Run(cfg, task, layout, tx, state, data_iter, ckpt, folder, log, step0, stop_after, has_val, goodput)
    return run.go()


class _Run:
    """A training run on the host loop: dispatch steps, read their metrics a step late,
    evaluate and checkpoint at their cadence, save and stop on an agreed signal."""

    def __init__(self, cfg: Config, task: Task, layout: Layout, tx, state, data_iter, ckpt: Checkpointer,
                 folder: RunFolder, log: Callable[[str], None], step0: int, stop_after: int | None,
                 has_val: bool, goodput: Goodput):  # fmt: skip
        t = cfg.train
        self.cfg, self.task, self.layout, self.state, self.data_iter = cfg, task, layout, state, data_iter
        self.ckpt, self.folder, self.log, self.has_val = ckpt, folder, log, has_val
        self.train_step = make_train_step(cfg, layout, tx, task.loss_fn)
        self.eval_step = make_eval_step(cfg, layout, tx, task.loss_fn)
        self.flops_token = flops_per_token(cfg, cfg.data.seq_len)
        peak = peak_flops(jax.devices()[0])
        self.peak_total = peak * layout.mesh.devices.size if peak else None
        self.writer = writer_for(folder.path, t.tensorboard, cfg, log)
        self.goodput = goodput
        self.result = TrainResult(folder.path, step0, {}, {})
        last_step = min(t.steps, stop_after) if stop_after is not None else t.steps
        self.loop = HostLoop(step0, last_step, record=self.record)
        self.window_tokens, self.window_steps, self.window_start = 0.0, 0, time.perf_counter()
        self.saved_at: int | None = None

    def go(self) -> TrainResult:
        t, loop = self.cfg.train, self.loop
        hooks = [Hook(t.eval_every, self.evaluate), Hook(t.checkpoint_every, self.save)]
        gp = self.goodput
        gp.add("startup", time.perf_counter() - gp.start)
        try:
            self.result.interrupted = loop.run(self.advance, hooks, self.stop)
            with gp.timed("checkpoint"):
                self.ckpt.wait()  # the last saves' writes: the run is not done before they are
            self.writer.write(loop.step, GOODPUT_SPLIT, gp.values())  # the run's totals (replaces the last step's)
        finally:
            self.ckpt.wait()
            self.writer.close()
        step = self.result.step = loop.step
        final = self.ckpt.steps()
        self.ckpt.close()
        if self.folder.primary and step > loop.first_step and (not final or final[-1] != step):
            newest = final[-1] if final else "none"
            raise DataError(f"the checkpoint of the final step {step} was not written in {self.ckpt.directory} "
                            f"(its newest is {newest}); rerun the same command to resume")  # fmt: skip
        if self.result.interrupted is None:
            self.log(f"done: step {step} in {format_time(loop.elapsed())}; checkpoints in {self.ckpt.directory}, "
                     f"metrics in {self.folder.path / 'metrics.jsonl'}")  # fmt: skip
        return self.result

    def advance(self, step: int) -> tuple[int, Any]:
        with self.goodput.timed("data_wait"):
            host = next(self.data_iter)
            batch = shard_batch(process_rows(host) if self.task.global_batches else host, self.layout)
        before, t0 = _programs(self.train_step), time.perf_counter()
        self.state, metrics = self.train_step(self.state, batch)  # returns once dispatched (or compiled)
        after = _programs(self.train_step)
        compiled = after > before if before is not None else step == self.loop.first_step
        self.goodput.add("compile" if compiled else "step", time.perf_counter() - t0)
        return step + 1, metrics

    def record(self, step: int, metrics: Any) -> None:
        """Host side of a finished step: fetch its metrics (one step late), check, log."""
        t = self.cfg.train
        with self.goodput.timed("step"):
            m = jax.device_get(metrics)  # waits for the step to finish on the device
        loss, tokens = float(m["loss"]), float(m["tokens"]) * self.task.tokens_per_count
        self.window_tokens += tokens
        self.window_steps += 1
        self.result.train_losses[step] = loss
        if not bool(m["finite"]):
            if t.on_nonfinite == "stop":
                raise NonFiniteLoss(
                    f"non-finite loss ({loss}), gradient norm ({float(m['grad_norm'])}) or updated weights at step "
                    f"{step}; the update was not applied. Lower optimizer.lr, check the data, or set "
                    "train.on_nonfinite=skip"
                )
            self.log(f"warning: non-finite loss, gradient or updated weights at step {step}; update skipped")
        if step % t.log_every == 0 or step == self.loop.last_step:
            self.log_step(step, loss, m)

    def log_step(self, step: int, loss: float, m: dict) -> None:
        dt = max(time.perf_counter() - self.window_start, 1e-9)
        tok_s = self.window_tokens / dt
        values = {"loss": loss, "lr": float(m["lr"]), "grad_norm": float(m["grad_norm"]),
                  "tokens_per_s": tok_s, "step_time_s": dt / self.window_steps}  # fmt: skip
        values |= {k: float(v) for k, v in m.items() if k not in _STEP_KEYS}  # a task's own metrics (DPO: accuracy)
        if self.peak_total:
            values["mfu"] = tok_s * self.flops_token / self.peak_total
        self.writer.write(step, "train", values)
        self.writer.write(step, GOODPUT_SPLIT, self.goodput.values())
        self.result.tokens_per_s = tok_s
        bar, eta = self.loop.progress(step)
        mfu = f" | MFU {values['mfu']:.1%}" if "mfu" in values else ""
        self.log(f"{bar} step {step}/{self.loop.last_step} | loss {loss:.4f} | lr {values['lr']:.2e} | "
                 f"gnorm {values['grad_norm']:.2f} | {tok_s:,.0f} tok/s | {values['step_time_s'] * 1e3:.0f} ms/step"
                 f"{mfu} | ETA {eta}")  # fmt: skip
        self.window_tokens, self.window_steps, self.window_start = 0.0, 0, time.perf_counter()

    def evaluate(self, step: int) -> None:
        eval_start = time.perf_counter()
        val = evaluate(self.cfg, self.eval_step, self.state["params"], self.layout, self.has_val,
                       self.task.val_batches(self.cfg), self.task.global_batches)  # fmt: skip
        self.goodput.add("eval", time.perf_counter() - eval_start)
        self.window_start += time.perf_counter() - eval_start  # throughput counts training time only
        if val is not None:
            self.result.val_losses[step] = val
            self.writer.write(step, "val", {"loss": val, "perplexity": math.exp(min(val, 50.0))})
            self.log(f"step {step}: val loss {val:.4f} (perplexity {math.exp(min(val, 50.0)):.2f})")

    def save(self, step: int, force: bool = False) -> None:
        with self.goodput.timed("checkpoint"):  # the blocking part: orbax copies the state, then writes behind
            self.ckpt.save(step, self.state, self.data_iter.get_state(), to_dict(self.cfg), force=force)
            if self.cfg.model.lora.rank:  # the adapters on their own too: MB where the checkpoint holds the base
                save_adapters(self.cfg, self.state["params"], self.folder.path, step, self.layout)
        self.saved_at = step

    def stop(self, step: int, received: int) -> None:
        if self.saved_at != step:  # a signal on a checkpoint step: that checkpoint is the one
            self.save(step, force=True)
        self.log(f"received signal {received} at step {step}: checkpoint saved, stopping")


def _programs(train_step: Callable) -> int | None:
    """How many programs the jitted train step holds, so a call that adds one is a (re)compile.
    jax's `_cache_size` is private, hence guarded: None without it (then the run's first call
    alone counts as a compile)."""
    size = getattr(getattr(train_step, "jitted", None), "_cache_size", None)
    return size() if callable(size) else None


def train_main(cfg: Config, reset: bool = False) -> int:
    """CLI wrapper: exit code 128 + signal when a signal stopped the run."""
    result = train(cfg, reset=reset)
    if result.interrupted is not None:
        sys.stdout.flush()
        return 128 + result.interrupted
    return 0


__all__ = ["NonFiniteLoss", "Task", "TrainResult", "check_batch", "check_vocab", "evaluate", "process_rows", "train",
           "train_main"]  # fmt: skip
