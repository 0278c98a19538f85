"""Test set-up: 8 virtual CPU devices for every sharding test and the tests' compile-speed
flag (tests/fixtures.py says why), both set before jax is imported; one persistent
compilation cache for the whole session; the shared session fixtures."""

import os
from pathlib import Path

import pytest

from tests.fixtures import TEST_XLA_FLAGS  # imports no jax: XLA_FLAGS is set before jax is

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), TEST_XLA_FLAGS, "--xla_force_host_platform_device_count=8"]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jaxllm.host import enable_compilation_cache  # noqa: E402
from tests import fixtures  # noqa: E402
from tests.fixtures import (  # noqa: E402
    grpo_sft,
    sft_run,
    shared_ppo_run,
    shared_reward_run,
    shared_sft_run,
    shared_tiny_run,
    tiny_config,
    tiny_dataset,
    tiny_run,
)

__all__ = ["grpo_sft", "shared_ppo_run", "shared_reward_run", "shared_sft_run", "shared_tiny_run", "sft_run",
           "tiny_config", "tiny_dataset", "tiny_run"]  # fmt: skip

# Where the session's compiled programs go when this is set (e.g. a folder a CI cache keeps
# between runs); by default a fresh folder of this session, removed with its other temporaries.
TEST_CACHE_ENV = "JAXLLM_TEST_COMPILATION_CACHE"


@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """One folder for the session's shared fixtures (tests/fixtures.py) and one persistent
    compilation cache: both xdist workers, the CLI commands the tests run in-process, and the
    `jaxllm`/`python -m jaxllm.cli` subprocesses they start (through JAXLLM_COMPILATION_CACHE,
    which `cli.main` reads) compile a program once.

    The controller (or the single process of `-n 0`) chooses both: its basetemp, which holds
    the workers' own; the workers get them from it. Nothing is written under ~/.cache, and
    nothing an earlier session left is read unless JAXLLM_TEST_COMPILATION_CACHE names a
    folder (a pytest started by a test, as the guide's chapter 3 does, inherits it and shares
    the cache). tests/test_host.py still tests the CLI's own choice: it sets the variable per
    subprocess."""
    if hasattr(config, "workerinput"):  # an xdist worker: the controller chose
        fixtures.SESSION_DIR = Path(config.workerinput["jaxllm_session_dir"])
    else:
        fixtures.SESSION_DIR = config._tmp_path_factory.getbasetemp()
        folder = os.environ.get(TEST_CACHE_ENV) or str(fixtures.SESSION_DIR / "xla-cache")
        os.environ[TEST_CACHE_ENV] = os.environ["JAXLLM_COMPILATION_CACHE"] = folder  # the workers inherit both
    # No size limit: with one, jax locks the folder and lists every entry on each write. Two
    # processes writing the same program at once is harmless: jax warns about an entry it
    # cannot read and compiles instead.
    enable_compilation_cache()  # in-process compiles too, with thresholds that keep small CPU programs


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """xdist (controller side): tell each worker where the session's shared fixtures go."""
    node.workerinput["jaxllm_session_dir"] = str(fixtures.SESSION_DIR)


# The slowest tests, started first and in this order (test-id prefixes). With `--dist load
# --maxschedchunk 1` (pyproject.toml) xdist gives each worker two tests to start with (worker
# A the first two, B the next two), then, each time a worker finishes one, the next test in
# this order, queued behind the one it is running. Longest first keeps both workers busy to
# the end instead of leaving one long test alone at the close. The guide's chapters are placed
# so that none waits for the runs of another, whichever worker finishes first (chapter 0's runs
# are read by 4, 6, 7, 8 and the quickstart test, 4's by 8, 1's by 2): A runs 00, 04, then 08
# (handed to A when 04 starts, so queued behind it); B runs 05 (libtpu's long compile, needing
# nothing), then 07 (00 is long done). What follows needs no chapter but 01 -> 02, kept apart.
# Seconds measured in a clean-clone CI run in the comments; "local" ones on 2 shared cores,
# with `-n 0` beside another test run or in a `-n 2` run of some files (tests added since
# that CI run, and the slowest of test_train.py and test_generate.py, which file order left
# at the end of the session).
SLOWEST_FIRST = [
    "tests/test_guide.py::test_the_guide_runs_as_written[00-",  # 40
    "tests/test_guide.py::test_the_guide_runs_as_written[04-",  # 74
    "tests/test_guide.py::test_the_guide_runs_as_written[05-",  # 215 (88 alone: one libtpu compile is 74)
    "tests/test_guide.py::test_the_guide_runs_as_written[07-",  # 164 before LoRA and GRPO; ~200 local with them
    "tests/test_guide.py::test_the_guide_runs_as_written[08-",  # 204 (98 alone; A, queued behind 04)
    "tests/test_multiprocess.py::test_ppo_on_two_processes_equals_one",  # 65 + 51 building the shared PPO run
    "tests/test_grpo_multiprocess.py::",  # 73 local (55 + 18 building its SFT run)
    "tests/test_multiprocess.py::test_two_processes_train_checkpoint_and_resume_like_one",  # 55
    "tests/test_train.py::test_sigterm_then_resume_reproduces_the_uninterrupted_run",  # 60 local, -n 2
    "tests/test_train.py::test_checkpoint_restores_onto_a_different_mesh",  # 55 local, -n 2
    "tests/test_kill_resume.py::",  # 49
    "tests/test_splash.py::test_the_tpu_step_compiles_ahead_of_time",  # 47 (two libtpu compiles)
    "tests/test_multiprocess.py::test_dpo_on_two_processes_equals_one",  # 38
    "tests/test_guide.py::test_the_guide_runs_as_written[03-",  # 37
    "tests/test_rlhf.py::",  # 32
    "tests/test_train.py::test_resume_across_pipeline_degrees_gives_the_same_next_step",  # 27 local, -n 2
    "tests/test_quickstart.py::test_quickstart_runs_the_whole_path",  # 26 (reads chapter 0's run)
    "tests/test_generate.py::test_greedy_generate_equals_greedy_recompute_on_a_ragged_batch[gpt2",  # 26 local
    "tests/test_guide.py::test_the_guide_runs_as_written[01-",  # 20
    "tests/test_multiprocess.py::test_instruction_tuning_on_two_processes_equals_one",  # 26
    "tests/test_multiprocess.py::test_lora_sft_on_two_processes_equals_one",  # 25 local
    "tests/test_multiprocess.py::test_a_signal_to_one_process_stops_both_at_the_same_checkpointed_step",  # 23
    "tests/test_lora.py::",  # 10-23 each, local (the first on each worker builds the module's LoRA runs)
    "tests/test_grpo.py::",  # 8-16 each, local
    "tests/test_guide.py::test_the_guide_runs_as_written[02-",  # 42 before it prepared 6 of the works; 3 local now
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """SLOWEST_FIRST first, in its order; every other test after them, in file order. Every
    xdist worker sorts alike, as xdist requires."""

    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(SLOWEST_FIRST) if item.nodeid.startswith(prefix)), len(SLOWEST_FIRST))

    items.sort(key=rank)  # stable: the rest keep their order
