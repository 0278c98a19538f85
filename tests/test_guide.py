"""The guide's commands run as written (docs/guide/*.md), at small sizes, on a fresh-clone layout.

Every line of every ```bash block is run in order, one test per chapter, each chapter in a
work directory of its own laid out like a fresh clone with the project's shared corpora
beside it (so nothing is fetched). A chapter that reads an earlier chapter's runs (as a
reader's later chapters do) starts from a copy of that chapter's runs/ (NEEDS below); each
chapter runs once per session, whichever worker asks first, so its tests and the chapters
after it share it. Sizes shrink only through $JAXLLM_OVERRIDES (applied by every config
load), never by editing a command. ```console blocks are set-up (pip install) and are not
run: CI has already installed the package. `python -m benchmarks guide` runs the same
commands at full size, in one directory, and writes the logs and pictures the guide quotes.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from benchmarks.guide import (
    PICTURES,
    bash_argv,
    chapters,
    commands,
    make_workdir,
    plain_jaxllm,
    run_chapter,
    shown_images,
)
from tests.data_paths import SHARED_DATA
from tests.fixtures import TEST_XLA_FLAGS, build_once

# Small runs: 8 steps, evaluated and checkpointed twice on 2 batches (the runs are for the
# commands, not for their losses); PPO's 8 steps are one rollout, after one critic warm-up
# rollout (not 4), evaluated on 16 held-out prompts (not 64).
SMALL = ("train.steps=8 train.eval_every=4 train.log_every=4 train.checkpoint_every=4 train.eval_batches=2 "
         "ppo.critic_warmup=1 ppo.eval_prompts=16")
# Chapters whose time goes to running programs more than to compiling them (SFT, reward and
# PPO over thousands of examples, exact-match generation; perplexity and multiple choice over
# a tenth of tiny Shakespeare): they compile at XLA's default optimisation level, not the
# tests' fast-compile flags (tests/fixtures.py). Measured on 2 workers: chapter 8 took 85 s at
# the default level and 184 s with the test flags; chapter 7 about the same either way.
RUN_BOUND = {"07", "08"}
PNG = b"\x89PNG\r\n\x1a\n"
# The earlier chapters whose runs a chapter's commands read: runs/quickstart (00), the
# tokenizers of 01 (02 prepares with runs/tokenizers/sp-4096.model), runs/llama-char (04).
NEEDS = {"02": ("01",), "04": ("00",), "06": ("00",), "07": ("00",), "08": ("00", "04")}
BY_NUMBER = {chapter.name[:2]: chapter for chapter in chapters()}


def test_every_chapter_has_commands_and_its_pictures_exist():
    assert chapters(), "docs/guide/ has no chapters"
    for chapter in chapters():
        assert commands(chapter), f"{chapter.name} has no ```bash commands to test"
        for name in shown_images(chapter):  # written by `python -m benchmarks guide` from the chapter's commands
            path = chapter.parent / "img" / name
            assert path.is_file() and path.read_bytes()[:8] == PNG, f"{chapter.name} shows {name}, not in img/"
    assert set(NEEDS) | {n for needs in NEEDS.values() for n in needs} <= set(BY_NUMBER), "NEEDS names no chapter"
    assert all(need < number for number, needs in NEEDS.items() for need in needs), "a chapter needs a later one"


def test_commands_are_read_with_their_expected_exit_codes(tmp_path):
    page = tmp_path / "01-x.md"
    page.write_text("```console\npip install x\n```\n```bash\n# a comment\njaxllm a \\\n    --b c  # why\n"
                    "jaxllm plan big  # exits 3: it does not fit\n```\ntext\n```bash\necho ok\n```\n")
    assert commands(page) == [("jaxllm a --b c", 0), ("jaxllm plan big", 3), ("echo ok", 0)]


def test_plain_jaxllm_lines_get_the_argv_bash_gives_them(tmp_path):
    """Which lines the one-process runner takes (benchmarks/guide_session.py), and their argv:
    quotes, globs and variables expanded by bash itself."""
    assert plain_jaxllm('jaxllm data prepare "data.inputs=[../x/*.txt]" a.b=1')
    for line in ("HF_DATASETS_OFFLINE=1 jaxllm eval harness", "jaxllm a | tail", "jaxllm a > f", "tail -n 1 f",
                 "jaxllm a; rm f", "jaxllm 'unclosed"):  # fmt: skip
        assert not plain_jaxllm(line), line
    (tmp_path / "a.txt").write_text("")
    line = """jaxllm sft r 'chat.user="Q: {content}\\n"' "data.inputs=[*.txt]" *.txt $HOME"""
    assert bash_argv(line, tmp_path, {"HOME": "/h", "PATH": os.environ["PATH"]}) == [
        "jaxllm", "sft", "r", 'chat.user="Q: {content}\\n"', "data.inputs=[*.txt]", "a.txt", "/h"]  # fmt: skip


def guide_env(number: str) -> dict[str, str]:
    """The reader's machine: one CPU device, not the 8 that tests/conftest.py asks XLA for,
    and XLA's default optimisation level for the RUN_BOUND chapters; the session's
    compilation cache (JAXLLM_COMPILATION_CACHE) is inherited."""
    dropped = ["device_count"] + (TEST_XLA_FLAGS.split() if number in RUN_BOUND else [])
    xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if not any(d in f for d in dropped))
    return {**os.environ, "JAXLLM_OVERRIDES": SMALL, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}


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


@pytest.mark.parametrize("number", sorted(BY_NUMBER), ids=lambda n: BY_NUMBER[n].stem)
def test_the_guide_runs_as_written(number, tmp_path_factory):
    chapter = BY_NUMBER[number]
    main = ran_chapter(tmp_path_factory, number)
    for name in shown_images(chapter):
        png = main / PICTURES / name
        assert png.is_file(), f"{chapter.name} shows img/{name}, but its commands did not write {PICTURES}/{name}"
        assert png.read_bytes()[:8] == PNG, f"{png} is not a PNG"
