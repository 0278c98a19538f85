"""What PPO and GRPO runs share: joining the run (processes, one voice, the locked run
folder) and the host loop around their rollouts (evaluate the start, cadence hooks,
save on an agreed signal, finish the checkpoint writes).

Why a base here and not in jaxllm/train/loop.py: the host loop is every run's; these are
the parts only the rollout-based verbs have in common (a start evaluation, checkpoints
saved with the rollout state, several checkpointers for PPO's policy and critic).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from jaxllm.config import Config
from jaxllm.parallel import distributed
from jaxllm.train.loop import Hook, format_time, quiet
from jaxllm.train.run_folder import RunFolder
from jaxllm.train.task import TrainResult

Log = Callable[[str], None]


def joined_run(cfg: Config, log: Log, reset: bool, body: Callable[[RunFolder, Log], TrainResult]) -> TrainResult:
    """`body(folder, log)` inside the multi-process run the environment describes
    (jaxllm/parallel/distributed.py), with process 0 alone speaking and the run folder locked
    for the run's life (`reset`: archived first, as `--reset` asks)."""
    with distributed.joined():
        primary = jax.process_index() == 0
        log = log if primary else quiet  # one voice per run
        with RunFolder(cfg.train.out_dir, primary, log) as folder:
            if reset:
                folder.reset()
            return body(folder, log)


class RolloutRun:
    """The loop around `advance` (one rollout and its updates) for a run that has `cfg`,
    `loop`, `result`, `writer`, `log`, `saved_at`, `save(step)`, `evaluate(step)` and
    `advance(step)`; subclasses name their checkpointers and what a fresh run does first."""

    cfg: Config
    saved_at: int | None

    def checkpointers(self) -> list:
        """The run's Checkpointers (waited for and closed at the end)."""
        raise NotImplementedError

    def first(self) -> None:
        """What a fresh run does before its first rollout: evaluate the start."""
        self.evaluate(0)

    def finished(self) -> str:
        """Where the run's files are, for the last log line."""
        return f"checkpoints in {self.checkpointers()[0].directory}, metrics in {self.folder.path / 'metrics.jsonl'}"

    def stop(self, step: int, received: int) -> None:
        if self.saved_at != step:
            self.save(step)
        self.log(f"received signal {received} at step {step}: checkpoint saved, stopping")

    def go(self) -> TrainResult:
        """The first steps of a fresh run, then the loop; the checkpoint writes finished."""
        t = self.cfg.train
        ckpts = self.checkpointers()
        try:
            if self.loop.step == 0:
                self.first()
            hooks = [Hook(t.eval_every, self.evaluate), Hook(t.checkpoint_every, self.save)]
            self.result.interrupted = self.loop.run(self.advance, hooks, self.stop)
        finally:
            for c in ckpts:
                c.wait()
            self.writer.close()
        for c in ckpts:
            c.close()
        step = self.result.step = self.loop.step
        if self.result.interrupted is None:
            self.log(f"done: step {step} in {format_time(self.loop.elapsed())}; {self.finished()}")
        return self.result
