"""The guide's commands run as written (docs/guide/*.md), at small sizes, on a fresh-clone layout.

Every line of every ```bash block is run in order, chapter after chapter in one work
directory (later chapters use earlier chapters' runs, as a reader's do), laid out like a
fresh clone with the project's shared corpora beside it (so nothing is fetched). Sizes
shrink only through $JAXLLM_OVERRIDES (applied by every config load), never by editing a
command. ```console blocks are set-up (pip install) and are not run: CI has already
installed the package. `python -m benchmarks guide` runs the same commands at full size
and writes the logs and pictures the guide quotes.
"""

from __future__ import annotations

import os
import time

import pytest

from benchmarks.guide import PICTURES, chapters, commands, make_workdir, run_chapter, shown_images
from tests.data_paths import SHARED_DATA

SMALL = "train.steps=20 train.eval_every=10 train.log_every=10 train.checkpoint_every=10"
PNG = b"\x89PNG\r\n\x1a\n"


def test_every_chapter_has_commands_and_its_pictures_exist():
    assert chapters(), "docs/guide/ has no chapters"
    for chapter in chapters():
        assert commands(chapter), f"{chapter.name} has no ```bash commands to test"
        for name in shown_images(chapter):  # written by `python -m benchmarks guide` from the chapter's commands
            path = chapter.parent / "img" / name
            assert path.is_file() and path.read_bytes()[:8] == PNG, f"{chapter.name} shows {name}, not in img/"


def test_commands_are_read_with_their_expected_exit_codes(tmp_path):
    page = tmp_path / "01-x.md"
    page.write_text("```console\npip install x\n```\n```bash\n# a comment\njaxllm a \\\n    --b c  # why\n"
                    "jaxllm plan big  # exits 3: it does not fit\n```\ntext\n```bash\necho ok\n```\n")
    assert commands(page) == [("jaxllm a --b c", 0), ("jaxllm plan big", 3), ("echo ok", 0)]


def test_the_guide_runs_as_written(tmp_path):
    main = make_workdir(tmp_path, SHARED_DATA.parent)
    # The reader's machine: one CPU device, not the 8 that tests/conftest.py asks XLA for.
    xla_flags = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split() if "device_count" not in f)
    env = {**os.environ, "JAXLLM_OVERRIDES": SMALL, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags}
    for chapter in chapters():
        lines: list[str] = []
        start = time.perf_counter()
        try:
            run_chapter(chapter, main, env, lines.append)
        except SystemExit as e:
            pytest.fail(f"{e}\n" + "\n".join(lines[-60:]))
        print(f"{chapter.name}: {time.perf_counter() - start:.0f} s")
        for name in shown_images(chapter):
            png = main / PICTURES / name
            assert png.is_file(), f"{chapter.name} shows img/{name}, but its commands did not write {PICTURES}/{name}"
            assert png.read_bytes()[:8] == PNG, f"{png} is not a PNG"
