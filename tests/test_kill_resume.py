"""Crash recovery: a training run SIGKILLed twice, once in the middle of a checkpoint write,
then resumed to the end, finishes with parameters and AdamW state bit-identical to a run
that never stopped.

SIGTERM is the polite stop (test_train.py: the trainer saves and exits). SIGKILL runs no
handler: the asynchronous orbax write is cut off wherever it is and the metrics file may end
mid-line. What makes the resume right anyway is that an unfinished checkpoint never looks
finished (orbax writes `<step>.orbax-checkpoint-tmp` and renames it when complete), that a
stale unfinished one does not stop the same step being saved again, and that each checkpoint
carries the data iterator's position and the PRNG key, so the resumed steps see the same
batches. Exact equality is the bar, not a tolerance: on CPU the same steps on the same mesh
give the same bits, so any difference is a resume that did something other than continue.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxllm
from jaxllm.parallel.mesh import make_mesh
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.metrics import read_metrics
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.state import abstract_state, state_shardings
from tests.fixtures import TINY_MODEL

REPO = Path(__file__).resolve().parents[1]
STEPS, EVERY = 30, 3  # checkpoints at 3, 6, ..., 30: the second kill (near step 9) leaves ~1 s of work
WAIT_S = 240  # the most any one run may take to reach its next mark (a cold compile under -n 2 is ~20 s)
KILL_TRIES = 5  # starts allowed for the mid-write kill (one usually does: a write lasts ~0.2 s here)
TMP_NAME = re.compile(r"^(\d+)\.orbax-checkpoint-tmp")


@pytest.fixture
def corpus(tiny_dataset):
    """The session's byte-level dataset (text.txt, data/): 150k characters, far more than 30 steps x 8 x 32 tokens."""
    return tiny_dataset


def overrides(corpus: Path, run: Path) -> list[str]:
    """The tiny run (tests/fixtures.py: 2 layers of 32 dims on the byte tokenizer), its text and dataset under
    `corpus`, a checkpoint every EVERY steps."""
    return [*TINY_MODEL, f"data.inputs=[{corpus}/text.txt]", f"data.path={corpus}/data", f"train.out_dir={run}",
            "train.batch_size=8", "train.log_every=1", "train.eval_every=1000", "optimizer.warmup_steps=2",
            "train.tensorboard=false", f"train.steps={STEPS}", f"train.checkpoint_every={EVERY}"]  # fmt: skip


def checkpoint_dirs(run: Path) -> tuple[set[int], dict[int, Path]]:
    """(finished steps, {step: temporary directory} of checkpoints being written), from names.

    Names only: watching must not build an orbax CheckpointManager, which may tidy up the
    very temporary directories under test."""
    finished, writing = set(), {}
    try:
        entries = list(os.scandir(run / "checkpoints"))
    except FileNotFoundError:
        return finished, writing
    for entry in entries:
        if entry.name.isdigit():
            finished.add(int(entry.name))
        elif m := TMP_NAME.match(entry.name):
            writing[int(m.group(1))] = Path(entry.path)
    return finished, writing


def state_bytes(tmp: Path) -> int:
    """Bytes of the train state (params, AdamW moments) already in a checkpoint being written."""
    try:
        return sum(f.stat().st_size for item in tmp.glob("state*") for f in item.rglob("*") if f.is_file())
    except OSError:  # the writer renamed or removed something while we looked
        return 0


class Run:
    """One `python -m jaxllm.cli train` child on `run`, its output in a log file (a pipe
    could fill and stall the child while the test is busy polling the directory)."""

    def __init__(self, corpus: Path, run: Path, env: dict[str, str], name: str):
        self.run, self.log = run, run.parent / f"{name}.log"
        self.metrics_start = metrics_lines(run)  # this child's metrics records begin at this line
        command = [sys.executable, "-m", "jaxllm.cli", "train", "shakespeare-char", *overrides(corpus, run)]
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)

    def output(self) -> str:
        return f"--- {self.log.name} ---\n{self.log.read_text(errors='replace')[-4000:]}"

    def kill_when(self, mark: Callable[[], int | None], what: str) -> int:
        """SIGKILL the child as soon as `mark()` (polled every millisecond) returns a step; that step."""
        deadline = time.monotonic() + WAIT_S
        while (step := mark()) is None:
            if self.proc.poll() is not None:
                pytest.fail(f"the run exited ({self.proc.returncode}) before {what}\n{self.output()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"no {what} within {WAIT_S} s\n{self.output()}")
            time.sleep(0.001)
        os.kill(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait(timeout=60)
        assert code == -signal.SIGKILL, f"the kill at {what} did not end the run (exit {code})\n{self.output()}"
        return step

    def finish(self) -> None:
        try:
            code = self.proc.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the run did not finish within {WAIT_S} s\n{self.output()}")
        assert code == 0, self.output()
        assert max(checkpoint_dirs(self.run)[0], default=0) == STEPS, self.output()

    def logged_steps(self) -> list[int]:
        """The train steps this child logged, in order: from 1 when fresh, from k+1 when resumed from k."""
        steps = []
        for line in (self.run / "metrics.jsonl").read_text().splitlines()[self.metrics_start :]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the line a kill cut short
                continue
            if record.get("split") == "train":
                steps.append(record["step"])
        assert steps, f"{self.log.name} logged no train step\n{self.output()}"
        return steps


def metrics_lines(run: Path) -> int:
    """Lines in the run's metrics file; a resumed run starts a fresh line after a cut one."""
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def final_state(run: Path) -> tuple[dict, dict]:
    """(train state, data iterator state) of the run's checkpoint at STEPS, on this process's 8 devices."""
    cfg = jaxllm.load_config(run / "config.yaml")
    tx = make_optimizer(cfg.optimizer)
    ckpt = Checkpointer(run / "checkpoints")
    try:
        abstract = abstract_state(cfg, tx, state_shardings(cfg, make_mesh(cfg.mesh), tx))
        _, state, data_state, _ = ckpt.restore(STEPS, abstract)
    finally:
        ckpt.close()
    return jax.device_get(state), data_state


def test_sigkill_twice_once_mid_checkpoint_then_resume_is_bit_identical(corpus, tmp_path):
    # Every child compiles the same programs; the session's persistent compilation cache
    # (JAXLLM_COMPILATION_CACHE, set by tests/conftest.py) turns the later compiles into loads
    # (~8 s less per child). The device count and platform come from conftest's
    # XLA_FLAGS/JAX_PLATFORMS in os.environ.
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    straight = Run(corpus, tmp_path / "straight", env, "straight")
    straight.finish()

    run = tmp_path / "killed"

    def state_being_written() -> int | None:
        """The step of a checkpoint that already holds some train-state bytes but is not finished,
        while an older one is finished (so the resume has something to restore)."""
        finished, writing = checkpoint_dirs(run)
        for step, tmp in sorted(writing.items()):
            if finished and step > max(finished) and state_bytes(tmp):
                return step
        return None

    # Kill 1: the moment a checkpoint write has put some of the state on disk, not the moment
    # its (then empty) temporary directory appears: a half-written state is the harder case
    # to resume past. The temporary directory still being there, with state bytes, after the
    # child is dead proves the kill landed inside the write (nothing can rename it any more);
    # if the write won the race, start over.
    for tries in range(1, KILL_TRIES + 1):
        shutil.rmtree(run, ignore_errors=True)
        first = Run(corpus, run, env, f"kill1-try{tries}")
        cut = first.kill_when(state_being_written, "a checkpoint write with state on disk")
        finished, writing = checkpoint_dirs(run)
        if cut in writing and cut not in finished:
            break
    else:
        pytest.fail(f"in {KILL_TRIES} tries the SIGKILL never landed inside a checkpoint write\n{first.output()}")
    written = state_bytes(writing[cut])
    print(f"SIGKILL inside the write of checkpoint {cut} ({written} state bytes on disk) on try {tries}")
    restored1 = max(finished)
    assert restored1 < cut < STEPS, f"finished {sorted(finished)}, writing {sorted(writing)}"
    assert first.logged_steps()[0] == 1

    # Kill 2: the resumed run must first get past the cut write: a finished checkpoint
    # beyond the step whose write was killed (saving that step again over its stale
    # temporary directory is part of what is tested).
    second = Run(corpus, run, env, "kill2")
    second.kill_when(lambda: next((s for s in checkpoint_dirs(run)[0] if s > cut), None), f"a checkpoint past {cut}")
    finished, _ = checkpoint_dirs(run)
    restored2 = max(finished)
    logged = second.logged_steps()
    assert logged[0] == restored1 + 1, f"the first resume did not continue from step {restored1}: {logged}"
    assert cut < restored2 < STEPS and max(logged) < STEPS, f"the second kill came too late: {sorted(finished)}"

    third = Run(corpus, run, env, "final")
    third.finish()
    logged = third.logged_steps()
    assert logged[0] == restored2 + 1, f"the second resume did not continue from step {restored2}: {logged}"

    want, want_data = final_state(tmp_path / "straight")
    got, got_data = final_state(run)
    assert int(got["step"]) == int(want["step"]) == STEPS
    assert got_data == want_data, "the data iterator ends at a different position"
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(want)]
    assert any(p.startswith("['opt_state']") for p in paths) and any(p.startswith("['params']") for p in paths)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for path, a, b in zip(paths, jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{path} differs from the uninterrupted run"
    # The steps re-done after each kill logged the same losses (the reader keeps the last record of a step).
    losses = {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train"}
    assert losses == {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight") if r["split"] == "train"}
    assert sorted(losses) == list(range(1, STEPS + 1))
