"""Session fixtures shared by the test files: one tiny config, one prepared dataset, one
trained tiny run and one SFT run, each built once per test session, whichever of the
pytest-xdist workers asks first.

Why: before these, six files trained their own SFT run and a dozen rolled their own tiny
model, so the suite paid for the same data preparation, training and compiles again and
again. What is built here sits under the session's shared temporary folder (the parent of
each worker's basetemp), behind a file lock, so the two workers share one copy; a fixture
that a test may write into hands it its own copy (`copy_run`), so tests stay independent.

tests/conftest.py imports the fixtures from here; test files import the constants.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import traceback
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

from tests.data_paths import SHARED_DATA, TINY

INSTRUCTIONS = SHARED_DATA / "instructions" / "instruction-data.json"
PREFS = SHARED_DATA / "instructions" / "instruction-data-with-preference.json"

# The tiny model most tests train or load: 2 layers of 32 dims over the 256 byte ids, context 32.
TINY_MODEL = ["model.vocab_size=256", "model.max_seq_len=32", "model.d_model=32", "model.num_layers=2",
              "model.num_heads=4", "model.d_ff=64", "model.dropout=0.0", "data.seq_len=32"]  # fmt: skip
# How a tiny run trains: small batches, a metrics line per step, no evaluation unless asked.
TINY_TRAIN = ["train.batch_size=8", "train.log_every=1", "train.eval_every=1000", "train.eval_batches=2",
              "optimizer.warmup_steps=2", "train.tensorboard=false"]  # fmt: skip
TINY_TEXT_CHARS = 150_000  # far more than any test's steps x batch x tokens
TINY_RUN_STEPS = 4  # the shared trained run: checkpoints at 2 and 4
# The SFT run the post-training tests start from: 1 layer of 32 dims on the preference data's
# chosen replies, 2 steps (what test_dpo.py and test_rlhf.py each trained for themselves).
SFT_SMALL = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.dropout=0.0", "data.seq_len=128",
             "train.batch_size=8", "train.steps=2", "train.eval_every=100", "train.tensorboard=false",
             f"posttrain.data={PREFS}", "posttrain.val_fraction=0.02"]  # fmt: skip
# The shared reward model: 4 steps at lr 1e-3 from the shared SFT run, enough for scores
# that tell replies apart.
REWARD_SMALL = ["train.steps=4", "train.log_every=1", "optimizer.lr=1e-3", "optimizer.warmup_steps=0"]
# The shared PPO run (one process, 8 devices; train.steps=8): two rollouts of 16 prompts, each
# 2 epochs of 2 minibatches = 4 policy updates, evaluated at 0, 4 and 8 on 8 held-out prompts.
PPO_SMALL = [f"posttrain.data={SHARED_DATA / 'instructions' / 'instruction-data.json'}", "posttrain.val_fraction=0.01",
             "ppo.rollout_batch=16", "ppo.epochs=2", "ppo.max_new_tokens=6", "ppo.eval_prompts=8",
             "ppo.adaptive_kl=true", "train.eval_every=4", "train.checkpoint_every=4"]  # fmt: skip
QUIET = {"log": lambda _: None}
# XLA flags of every test process and of every jaxllm process a test starts (tests/conftest.py
# puts them in XLA_FLAGS, which child processes inherit; tests that set XLA_FLAGS for a child
# add them). Compiling, not running, is what the tests spend their time on: hundreds of tiny
# programs, each run a few steps. LLVM's optimisation of the compiled CPU code is more than
# half of each compile and buys nothing at these sizes, so tests compile at level 0; and at
# level 0, XLA's older CPU loop emitters compile faster than its fusion emitters. Measured by
# `python -m benchmarks xla_flags` (BENCHMARKS.md): the shakespeare-char-cpu train step's
# compile 4.5 s at the default level, 3.0 s at level 0, 1.4 s at level 0 without the fusion
# emitters; tests/test_train.py and test_pipeline_parallel.py: 145 s -> 101 s on 2 workers
# (the last two flag sets). Neither changes what is computed (the equality tests pass
# unchanged), only how the CPU code is generated; a forward pass runs about 2x slower, so
# chapters of the guide that run more than they compile use the default level
# (tests/test_guide.py). benchmarks/ and the CLI compile at the default level.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"


# The folder every worker of this session sees, set by tests/conftest.py: the controller's
# basetemp (under pytest-xdist, each worker's basetemp is a folder inside it).
SESSION_DIR: Path | None = None


def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SESSION_DIR, or this process's basetemp when conftest did not set it."""
    return SESSION_DIR or tmp_path_factory.getbasetemp()


def build_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """`shared_root/shared/name`, made by `build(folder)` once per session across workers.

    The first worker to ask builds it under a file lock; the other waits and reuses it. The
    folder is built in place (runs and manifests record absolute paths, so it cannot be
    renamed afterwards); a `.done` marker says it is complete. A build that failed is not
    retried by the other worker: its tests fail at once with the first traceback."""
    root = shared_root(tmp_path_factory) / "shared"
    root.mkdir(exist_ok=True)
    folder, done, failed = root / name, root / f"{name}.done", root / f"{name}.failed"
    with FileLock(str(root / f"{name}.lock")):
        if failed.exists():
            pytest.fail(f"building the shared {name} failed in another test:\n{failed.read_text()}")
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            try:
                build(folder)
            except BaseException:
                failed.write_text(traceback.format_exc())
                raise
            done.write_text("")
    return folder


def copy_run(run: Path, to: Path) -> Path:
    """A test's own copy of a shared run (its lock file left behind): runs are relocatable."""
    shutil.copytree(run, to, ignore=shutil.ignore_patterns(".lock"))
    return to


def tiny_overrides(dataset: Path, out: Path | str, *extra: str) -> list[str]:
    """TINY_MODEL trained as TINY_TRAIN on the shared dataset, into `out`."""
    return [*TINY_MODEL, f"data.path={dataset / 'data'}", f"data.inputs=[{dataset / 'text.txt'}]",
            f"train.out_dir={out}", *TINY_TRAIN, *extra]  # fmt: skip


@pytest.fixture(scope="session")
def tiny_config():
    """The tiny model's config (no dataset, no run folder): for tests that init and call the model."""
    import jaxllm

    return jaxllm.load_config("shakespeare-char", TINY_MODEL)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A folder holding text.txt (the first 150k characters of tiny Shakespeare) and data/,
    that text prepared at the byte level (last 10% held out) and verified once, so a run's
    start hashes nothing. Read-only: a test that changes a dataset prepares its own."""

    def build(folder: Path) -> None:
        import jaxllm
        from jaxllm.data.prepare import prepare
        from jaxllm.data.ready import check_dataset

        (folder / "text.txt").write_text(TINY.read_text(encoding="utf-8")[:TINY_TEXT_CHARS], encoding="utf-8")
        cfg = jaxllm.load_config("shakespeare-char", tiny_overrides(folder, folder / "unused"))
        prepare(cfg, **QUIET)
        check_dataset(cfg, **QUIET)

    return build_once(tmp_path_factory, "tiny_dataset", build)


@pytest.fixture(scope="session")
def shared_tiny_run(tmp_path_factory, tiny_dataset) -> Path:
    """A tiny run trained for TINY_RUN_STEPS steps on the shared dataset (checkpoints at 2 and 4).
    Read-only: tests use `tiny_run`, their own copy."""

    def build(folder: Path) -> None:
        import jaxllm
        from jaxllm.train.trainer import train

        overrides = tiny_overrides(tiny_dataset, folder / "run", f"train.steps={TINY_RUN_STEPS}",
                                   "train.checkpoint_every=2")  # fmt: skip
        train(jaxllm.load_config("shakespeare-char", overrides), **QUIET)

    return build_once(tmp_path_factory, "tiny_run", build) / "run"


@pytest.fixture
def tiny_run(shared_tiny_run, tmp_path) -> Path:
    """This test's own copy of the shared tiny run."""
    return copy_run(shared_tiny_run, tmp_path / "tiny_run")


@pytest.fixture(scope="session")
def shared_sft_run(tmp_path_factory) -> Path:
    """`jaxllm sft` of the tiny SFT_SMALL model from random weights: the start (and the
    reference) of the DPO, reward and PPO tests. Read-only: tests use `sft_run`."""

    def build(folder: Path) -> None:
        from jaxllm.cli import main

        argv = ["sft", "shakespeare-char", *SFT_SMALL, f"data.path={folder}/none", f"train.out_dir={folder}/run"]
        assert main(argv) == 0, "the shared SFT run failed"

    return build_once(tmp_path_factory, "sft_run", build) / "run"


@pytest.fixture
def sft_run(shared_sft_run, tmp_path) -> Path:
    """This test's own copy of the shared SFT run."""
    return copy_run(shared_sft_run, tmp_path / "sft")


def cli_run(argv: list[str], folder: Path) -> None:
    """`jaxllm ARGV` in this process, its standard output kept in folder/stdout.txt for the
    tests that read what the verb said."""
    from jaxllm.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    (folder / "stdout.txt").write_text(out.getvalue())
    assert code == 0, f"jaxllm {' '.join(argv[:2])} exited {code}:\n{out.getvalue()[-3000:]}"


@pytest.fixture(scope="session")
def shared_reward_run(tmp_path_factory, shared_sft_run) -> Path:
    """`jaxllm reward` (REWARD_SMALL) from the shared SFT run: the reward model of the PPO
    tests; what it printed is in ../stdout.txt. Read-only."""

    def build(folder: Path) -> None:
        cli_run(["reward", str(shared_sft_run), *REWARD_SMALL, f"train.out_dir={folder}/run"], folder)

    return build_once(tmp_path_factory, "reward_run", build) / "run"


@pytest.fixture(scope="session")
def shared_ppo_run(tmp_path_factory, shared_sft_run, shared_reward_run) -> Path:
    """`jaxllm ppo` (PPO_SMALL, 8 steps) of the shared SFT run against the shared reward
    model, in one process on the session's 8 devices; what it printed is in ../stdout.txt.
    Read-only: a test that resumes it works on a copy."""

    def build(folder: Path) -> None:
        argv = ["ppo", str(shared_sft_run), f"ppo.reward_from={shared_reward_run}", *PPO_SMALL, "train.steps=8",
                f"train.out_dir={folder}/run"]  # fmt: skip
        cli_run(argv, folder)

    return build_once(tmp_path_factory, "ppo_run", build) / "run"


def build_grpo_sft(root: Path) -> None:
    """A 1-layer byte-level model SFT-trained for 40 steps on synthetic "upper" records:
    root/sft (the run) and root/tasks.jsonl (its data), GRPO's start in tests/test_grpo*.py."""
    import json

    from jaxllm.cli import main
    from jaxllm.posttrain.synthetic import make_records

    data = root / "tasks.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_records(64, seed=0, kinds=("upper",))))
    args = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "model.dropout=0.1", "data.seq_len=128",
            "model.max_seq_len=128", "train.batch_size=8", "train.steps=40", "train.eval_every=100",
            "train.tensorboard=false", "optimizer.lr=3e-3", "tokenizer.path=byte", "model.vocab_size=256",
            f"posttrain.data={data}", f"data.path={root}/none", f"train.out_dir={root}/sft"]  # fmt: skip
    assert main(["sft", "shakespeare-char", *args]) == 0, "the shared GRPO start run failed"


@pytest.fixture(scope="session")
def grpo_sft(tmp_path_factory) -> tuple[Path, Path]:
    """(run, data) of build_grpo_sft, built once per session. Read-only."""
    folder = build_once(tmp_path_factory, "grpo_sft", build_grpo_sft)
    return folder / "sft", folder / "tasks.jsonl"

