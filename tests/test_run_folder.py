"""The run folder keeps its promises (train/run_folder.py, train/checkpoint.py): a resume
that does not fit stops and touches nothing, unreadable checkpoints are quarantined and
their steps saved again, config.yaml changes only after a good start, one run at a time,
no checkpoint holds a non-finite weight, and --reset archives instead of deleting."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxllm
from jaxllm.cli import main
from jaxllm.config import ConfigError
from jaxllm.train.checkpoint import Checkpointer, IncompatibleCheckpoint, UnreadableCheckpoints
from jaxllm.train.load import load_run
from jaxllm.train.run_folder import RunLocked
from jaxllm.train.trainer import NonFiniteLoss, train
from tests.data_paths import TINY

REPO = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda _: None}
TINY_MODEL = ["model.vocab_size=256", "model.max_seq_len=32", "model.d_model=32", "model.num_layers=2",
              "model.num_heads=4", "model.d_ff=64", "model.dropout=0.0", "data.seq_len=32"]  # fmt: skip


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run_folder")
    (root / "text.txt").write_text(TINY.read_text(encoding="utf-8")[:60_000])
    from jaxllm.data.prepare import prepare

    prepare(jaxllm.load_config("shakespeare-char", [f"data.inputs=[{root}/text.txt]", f"data.path={root}/data"]),
            **QUIET)  # fmt: skip
    return root / "text.txt"


def overrides(text: Path, out: Path, *extra: str) -> list[str]:
    return [*TINY_MODEL, f"data.path={text.parent}/data", f"data.inputs=[{text}]", f"train.out_dir={out}",
            "train.batch_size=8", "train.log_every=1", "train.eval_every=1000", "train.eval_batches=1",
            "optimizer.warmup_steps=1", "train.tensorboard=false", "train.checkpoint_every=2", *extra]  # fmt: skip


def config(text: Path, out: Path, *extra: str):
    return jaxllm.load_config("shakespeare-char", overrides(text, out, *extra))


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path (the lock file aside)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}  # fmt: skip


@pytest.fixture(scope="module")
def finished(text, tmp_path_factory) -> Path:
    """A 4-step run with checkpoints at 2 and 4 (copied by tests that change it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(config(text, run, "train.steps=4"), **QUIET)
    return run


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


@pytest.mark.parametrize(
    ("change", "named"),
    [("model.num_layers=1", "model.num_layers: 2 -> 1"), ("optimizer.grad_clip=0", "optimizer.grad_clip: 1.0 -> 0.0")],
)
def test_an_incompatible_resume_stops_naming_the_keys_and_changes_nothing(text, finished, tmp_path, change, named):
    run = copy_run(finished, tmp_path / "run")
    before = digest(run)
    code = main(["train", "shakespeare-char", *overrides(text, run, "train.steps=6", change)])
    assert code == 2
    assert digest(run) == before, "every checkpoint and the config must stay as they were"
    with pytest.raises(IncompatibleCheckpoint, match=named.replace(".", r"\.")):
        train(config(text, run, "train.steps=6", change), **QUIET)
    assert digest(run) == before


def _corrupt(step_dir: Path) -> None:
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 100:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])


def test_when_no_checkpoint_is_readable_the_run_stops_instead_of_starting_over(text, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    for step in (2, 4):
        _corrupt(run / "checkpoints" / str(step))
    before = digest(run)
    with pytest.raises(UnreadableCheckpoints, match="none is readable"):
        train(config(text, run, "train.steps=6"), **QUIET)
    assert digest(run) == before and not (run / "quarantine").exists()


def test_a_corrupt_newest_checkpoint_is_quarantined_and_its_step_saved_again(text, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    _corrupt(run / "checkpoints" / "4")
    messages: list[str] = []
    result = train(config(text, run, "train.steps=4"), log=messages.append)
    assert any("quarantine" in m for m in messages), messages
    (quarantined,) = (run / "quarantine").iterdir()
    assert quarantined.name.startswith("step-4-")
    assert result.step == 4 and result.train_losses.keys() == {3, 4}, "resumed from step 2, trained 3 and 4"
    assert Checkpointer(run / "checkpoints").steps() == [2, 4]
    _, params, step = load_run(run)
    assert step == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
    straight = load_run(finished)[1]  # the same 4 steps, never interrupted: the re-done step 4 is bit-identical
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(straight), strict=True))


@pytest.mark.parametrize("change", ["train.batch_size=12", "model.vocab_size=512"])
def test_a_failing_command_leaves_the_run_and_its_config_untouched(text, finished, tmp_path, change):
    """Both pass config validation and fail later: 12 rows do not split over 8 devices;
    a 512-id embedding does not fit the run's checkpoint."""
    run = copy_run(finished, tmp_path / "run")
    before = digest(run)
    assert main(["train", "shakespeare-char", *overrides(text, run, "train.steps=6", change)]) == 2
    assert digest(run) == before
    cfg, _, step = load_run(run)
    assert step == 4 and cfg.model.vocab_size == 256


def test_a_second_training_into_a_held_run_folder_stops_at_once(text, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    first = subprocess.Popen(
        [sys.executable, "-m", "jaxllm.cli", "train", "shakespeare-char",
         *overrides(text, run, "train.steps=400", "train.checkpoint_every=1000", "train.seed=1")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        for line in first.stdout:
            if "step 2/400" in line:
                break
        else:
            pytest.fail(f"the first run did not start: {first.wait()}")
        started = time.perf_counter()
        with pytest.raises(RunLocked, match=rf"in use by pid {first.pid} on host"):
            train(config(text, run, "train.steps=4", "train.seed=2"), **QUIET)
        assert time.perf_counter() - started < 10, "the second run must stop at once, before compiling"
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 128 + signal.SIGTERM
    finally:
        first.kill()
    assert jaxllm.load_config(run / "config.yaml").train.seed == 1, "config.yaml is the first run's"
    steps = Checkpointer(run / "checkpoints").steps()
    assert steps and steps[-1] >= 2
    # The lock went with its holder: the same folder resumes (the first run's seed, its checkpoint).
    resumed = train(config(text, run, f"train.steps={steps[-1] + 1}", "train.seed=1"), **QUIET)
    assert resumed.step == steps[-1] + 1


def test_a_lock_left_by_a_killed_process_is_recovered(text, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys; from jaxllm.train.run_folder import RunLock; "
         "from pathlib import Path; RunLock(Path(sys.argv[1])).acquire(); os.kill(os.getpid(), signal.SIGKILL)",
         str(run)], cwd=REPO,
    )  # fmt: skip
    assert holder.returncode == -signal.SIGKILL
    assert json.loads((run / ".lock").read_text())["pid"] > 0, "the dead holder's record is still there"
    messages: list[str] = []
    train(config(text, run, "train.steps=2"), log=messages.append)
    assert any("recovered the lock" in m for m in messages), messages
    assert (run / ".lock").read_text() == "", "released at the end"


def test_no_checkpoint_ever_holds_a_non_finite_weight(text, tmp_path):
    run = tmp_path / "run"
    # 1e39 is a finite float in the config but inf in float32: finite gradients, infinite weights.
    cfg = config(text, run, "train.steps=3", "train.checkpoint_every=1", "train.on_nonfinite=skip",
                 "optimizer.warmup_steps=0", "optimizer.lr=1e39")  # fmt: skip
    train(cfg, **QUIET)
    ckpt = Checkpointer(run / "checkpoints")
    assert ckpt.steps() == [1, 2, 3]
    for step in ckpt.steps():
        _, params, _ = load_run(run, step)
        assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params)), step
    with pytest.raises(NonFiniteLoss, match="updated weights at step 1"):
        train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, on_nonfinite="stop",
                                                                 out_dir=str(tmp_path / "stop"))), **QUIET)  # fmt: skip


def test_reset_archives_the_old_run_and_a_file_is_no_run_folder(text, finished, tmp_path):
    run = copy_run(finished, tmp_path / "run")
    before = digest(run)
    assert main(["train", "shakespeare-char", *overrides(text, run, "train.steps=2", "model.num_layers=1"),
                 "--reset"]) == 0  # fmt: skip
    (archived,) = (run / "archive").iterdir()
    assert digest(archived) == before, "the old run moved into archive/, byte for byte"
    assert Checkpointer(run / "checkpoints").steps() == [2]
    assert load_run(run)[0].model.num_layers == 1
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    with pytest.raises(ConfigError, match="is a file"):
        train(config(text, a_file, "train.steps=2"), **QUIET)
    assert a_file.read_text() == "mine"


def test_a_run_folder_works_from_another_directory(text, tmp_path, monkeypatch):
    """Trained with relative paths (its tokenizer, data and folder), used from elsewhere and moved."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(work)
    relative = [*TINY_MODEL, "model.vocab_size=384", "tokenizer.path=tok/char.model", f"data.inputs=[{text}]",
                "data.path=data", "train.out_dir=run", "train.steps=2", "train.batch_size=8",
                "train.tensorboard=false"]  # fmt: skip
    assert main(["train", "shakespeare-char-cpu", *relative]) == 0
    saved = jaxllm.load_config(work / "run" / "config.yaml")
    assert Path(saved.data.path).is_absolute() and Path(saved.tokenizer.path).is_absolute()
    monkeypatch.chdir(elsewhere)
    sample = ["--max-new-tokens", "4", "--prompt", "To", "--temperature", "0"]
    assert main(["sample", "../work/run", *sample]) == 0
    moved = copy_run(work / "run", elsewhere / "moved")
    cfg, _, step = load_run("moved")
    assert step == 2 and cfg.train.out_dir == str(moved)
    assert main(["sample", "moved", *sample]) == 0


@pytest.mark.parametrize("verb", ["train", "sft", "dpo", "reward", "ppo"])
def test_every_training_verb_takes_reset(verb):
    from jaxllm.cli import build_parser

    assert build_parser().parse_args([verb, "source", "--reset"]).reset is True
    assert build_parser().parse_args([verb, "source"]).reset is False
