"""The host loop every training run turns on: pre-training, SFT, DPO, reward models and PPO.

A run supplies `advance(step) -> (step, metrics)`: whatever moves it forward by one or more
optimizer steps (one train step; or a PPO rollout and its minibatch updates). The loop owns
what is the same for every run:

- **cadence hooks**: after each advance, every `Hook` whose multiple of `every` was reached
  or passed (an advance may move several steps) runs, in order, and again after the last
  step (`at_end`): evaluation, then checkpoints, in the runs here;
- **one-step-late metrics**: `record(step, metrics)` sees step i's device metrics only after
  step i+1 was dispatched, so reading them never stalls the device; the loop reads the
  pending ones first whenever a hook is due, a signal stops the run, or the run ends;
- **signals agreed across processes**: SIGTERM/SIGINT set a flag; after every advance all
  processes share what they received, so they stop after the same step (a process that
  left alone would hang the others in the next collective), and `stop(step)` saves;
- **process-0 writes**: `writer_for` gives process 0 the metrics writer and the others a
  stand-in; `quiet` is the log of processes other than 0 (one voice per run);
- the progress line (`progress`): a bar, the step and an ETA from the run's own pace;
- `start_run`, called first by every run: the host's malloc settings (jaxllm/host.py).
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxllm import host
from jaxllm.config import Config, to_dict
from jaxllm.train.metrics import MetricsWriter
from jaxllm.train.wandb_sink import WandbSink


def start_run() -> None:
    """What every run does first, before anything allocates: the host's malloc settings for
    the train step (jaxllm/host.py; JAXLLM_MALLOC_TUNING=0 leaves malloc alone)."""
    host.tune_malloc()


class Signals:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each advance."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Signals:
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
        stop at the same step, so the processes share what they received each step."""
        if jax.process_count() == 1:
            return self.received
        every = multihost_utils.process_allgather(np.int32(self.received or 0))
        return int(np.max(every)) or None

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def quiet(_: str) -> None:
    """The log of processes other than 0: one voice per run."""


class NoMetrics:
    """Stands in for MetricsWriter in processes other than 0."""

    def write(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass


def writer_for(
    run_dir: Path, tensorboard: bool, cfg: Config | None = None, log: Callable[[str], None] = quiet
) -> MetricsWriter | NoMetrics:
    """Process 0 writes metrics.jsonl (and TensorBoard events, and W&B when `cfg.train.wandb`
    names a project; `log` says where that W&B run lives); the others write nothing."""
    if jax.process_index() != 0:
        return NoMetrics()
    sinks = []
    if cfg is not None and cfg.train.wandb:
        sinks.append(WandbSink(run_dir, cfg.train, to_dict(cfg)))
        log(sinks[-1].describe())
    return MetricsWriter(run_dir, tensorboard=tensorboard, sinks=sinks)


def format_time(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


@dataclasses.dataclass
class Hook:
    """`fn(step)` after each advance that reaches or passes a multiple of `every`, and after
    the last step when `at_end`."""

    every: int
    fn: Callable[[int], Any]
    at_end: bool = True

    def due(self, before: int, after: int, last: int) -> bool:
        return after // self.every > before // self.every or (self.at_end and after >= last)


class HostLoop:
    """Steps `first_step` -> `last_step`: advance, read metrics a step late, fire due
    hooks, stop together on a signal. `run` returns the agreed signal (None: it finished)."""

    def __init__(self, first_step: int, last_step: int, record: Callable[[int, Any], None] | None = None):
        self.first_step = self.step = first_step
        self.last_step = last_step
        self.record = record
        self.pending: tuple[int, Any] | None = None
        self.start = time.perf_counter()

    def flush(self) -> None:
        """Read the metrics still pending (before a hook, a stop, or the end)."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            self.record(*pending)

    def run(
        self, advance: Callable[[int], tuple[int, Any]], hooks: list[Hook], stop: Callable[[int, int], None]
    ) -> int | None:
        with Signals() as signals:
            while self.step < self.last_step:
                before = self.step
                self.step, metrics = advance(before)
                if self.record is not None:
                    self.flush()  # step i-1's metrics, read while step i runs on the device
                    self.pending = (self.step, metrics)
                due = [h for h in hooks if h.due(before, self.step, self.last_step)]
                if due:
                    self.flush()
                for hook in due:
                    hook.fn(self.step)
                received = signals.agreed()
                if received is not None:
                    self.flush()
                    stop(self.step, received)
                    return received
            self.flush()
        return None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def progress(self, step: int) -> tuple[str, str]:
        """(a 20-character bar of the run's progress, the ETA at the pace since this run started)."""
        frac = step / self.last_step
        bar = "#" * int(20 * frac) + "-" * (20 - int(20 * frac))
        eta = self.elapsed() / max(step - self.first_step, 1) * (self.last_step - step)
        return f"[{bar}]", format_time(eta)


__all__ = ["Hook", "HostLoop", "NoMetrics", "Signals", "format_time", "quiet", "start_run", "writer_for"]
