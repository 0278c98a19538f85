"""The guide's chapters run once per session, as tests/test_guide.py tests them, for every
test that reads what a chapter made (the quickstart's run, the chapter's log) instead of
making it again.

Every line of a chapter's ```bash blocks runs in order in a work directory of its own laid
out like a fresh clone with the project's shared corpora beside it (so nothing is fetched).
A chapter that reads an earlier chapter's runs (as a reader's later chapters do) starts from
a copy of that chapter's runs/ (NEEDS below); each chapter runs once per session, whichever
worker asks first. Sizes shrink only through $JAXLLM_OVERRIDES (applied by every config
load), never by editing a command.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from benchmarks.guide import PICTURES, chapters, make_workdir, run_chapter
from tests.data_paths import SHARED_DATA
from tests.fixtures import TEST_XLA_FLAGS, build_once

# Small runs: 8 steps, evaluated and checkpointed twice on 2 batches (the runs are for the
# commands, not for their losses); PPO's 8 steps are one rollout of 8-token replies with no
# critic warm-up rollout (not 4), evaluated on 8 held-out prompts (not 64): chapter 7's
# `jaxllm ppo` 27 s -> 18 s alone, cold (the warm-up rollout had programs of its own to
# compile). GRPO is evaluated on 16 (its reply length changes nothing measurable: 12 s either way).
SMALL = (
    "train.steps=8 train.eval_every=4 train.log_every=4 train.checkpoint_every=4 train.eval_batches=2 "
    "ppo.critic_warmup=0 ppo.max_new_tokens=8 ppo.eval_prompts=8 grpo.eval_prompts=16"
)
# A chapter's own shrinking, after SMALL (and after its commands' overrides, as all of
# $JAXLLM_OVERRIDES is): chapter 2 prepares six of the 42 works (0.6 M of 5 M characters),
# every one of its four `data prepare` commands reading the same files (dedup still finds
# exact and near duplicates). Measured: the chapter 47 s -> 3 s (its prepares ~10 s -> ~0.5 s).
# Chapter 7 trains on batches of 8 (not 12 or 24): the steps are what run more than compile
# there; alone, cold, `jaxllm reward` 14.6 s -> 13.6 s and `jaxllm dpo` 14.7 s -> 13.3 s, and
# the reward run 44 s -> 22 s under load.
CHAPTER_OVERRIDES = {
    "02": "data.inputs=[" + ",".join(f"../shared/data/shakespeare/{play}.txt" for play in (
        "macbeth", "tempest", "pericles", "sonnets", "comedy_of_errors", "two_gentlemen_of_verona")) + "]",
    "07": "train.batch_size=8",
}  # fmt: skip
# Chapters whose time goes to running programs more than to compiling them (perplexity and
# multiple choice over a tenth of tiny Shakespeare): they compile at XLA's default
# optimisation level, not the tests' fast-compile flags (tests/fixtures.py). Measured on 2
# workers: chapter 8 took 85 s at the default level and 184 s with the test flags. Chapter 7
# (8-step SFT, DPO, reward and PPO runs) is compile-bound: 158 s at the default level, 122 s
# with the test flags, run alone.
RUN_BOUND = {"08"}
# The earlier chapters whose runs a chapter's commands read: runs/quickstart (00), the
# tokenizers of 01 (02 prepares with runs/tokenizers/sp-4096.model), runs/llama-char (04).
NEEDS = {"02": ("01",), "04": ("00",), "06": ("00",), "07": ("00",), "08": ("00", "04")}
BY_NUMBER = {chapter.name[:2]: chapter for chapter in chapters()}


def guide_env(number: str) -> dict[str, str]:
    """The reader's machine: one CPU device, not the 8 that tests/conftest.py asks XLA for,
    SMALL and the chapter's CHAPTER_OVERRIDES, and XLA's default optimisation level for the
    RUN_BOUND chapters; the session's compilation cache (JAXLLM_COMPILATION_CACHE) is inherited."""
    dropped = ["device_count"] + (TEST_XLA_FLAGS.split() if number in RUN_BOUND else [])
    xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not any(d in f for d in dropped))
    overrides = " ".join([SMALL, CHAPTER_OVERRIDES.get(number, "")]).strip()
    return {**os.environ, "JAXLLM_OVERRIDES": overrides, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}


def ran_chapter(tmp_path_factory, number: str) -> Path:
    """The work directory (WORK/main) where chapter `number` ran, once per session."""
    chapter = BY_NUMBER[number]

    def build(work: Path) -> None:
        main = make_workdir(work, SHARED_DATA.parent)
        for need in NEEDS.get(number, ()):  # as a reader arrives: with the earlier chapters' runs
            runs = ran_chapter(tmp_path_factory, need) / "runs"
            shutil.copytree(runs, main / "runs", symlinks=True, dirs_exist_ok=True, ignore=not_theirs(runs))
        lines: list[str] = []
        start = time.perf_counter()
        try:
            run_chapter(chapter, main, guide_env(number), lines.append, one_process=True)
        except SystemExit as e:
            (work / "chapter.log").write_text("\n".join(lines) + "\n")
            hint = f" (its runs from earlier chapters: NEEDS[{number!r}] = {NEEDS.get(number, ())})"
            pytest.fail(f"{e}{hint}\n" + "\n".join(lines[-60:]))
        (work / "chapter.log").write_text("\n".join(lines) + f"\n# {time.perf_counter() - start:.0f} s\n")

    return build_once(tmp_path_factory, f"guide-{chapter.stem}", build) / "main"


def not_theirs(runs: Path):
    """What a chapter does not take from an earlier one: run folders' lock files, and the
    pictures (each chapter must draw the ones it shows itself)."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n == ".lock" or (Path(folder) / n == runs / PICTURES.name)]

    return ignore
