"""The guide's commands run as written (docs/guide/*.md), at small sizes, on a fresh-clone layout.

Every line of every ```bash block is run in order, one test per chapter, each chapter in a
work directory of its own laid out like a fresh clone (tests/guide_runs.py runs them, once
per session, for these tests and for the tests that read a chapter's runs). Sizes shrink
only through $JAXLLM_OVERRIDES (applied by every config load), never by editing a command.
```console blocks are set-up (pip install) and are not run: CI has already installed the
package. `python -m benchmarks guide` runs the same commands at full size, in one directory,
and writes the logs and pictures the guide quotes.
"""

from __future__ import annotations

import os

import pytest

from benchmarks.guide import PICTURES, bash_argv, chapters, commands, plain_jaxllm, shown_images
from tests.guide_runs import BY_NUMBER, NEEDS, ran_chapter

PNG = b"\x89PNG\r\n\x1a\n"


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


@pytest.mark.parametrize("number", sorted(BY_NUMBER), ids=lambda n: BY_NUMBER[n].stem)
def test_the_guide_runs_as_written(number, tmp_path_factory):
    chapter = BY_NUMBER[number]
    main = ran_chapter(tmp_path_factory, number)
    for name in shown_images(chapter):
        png = main / PICTURES / name
        assert png.is_file(), f"{chapter.name} shows img/{name}, but its commands did not write {PICTURES}/{name}"
        assert png.read_bytes()[:8] == PNG, f"{png} is not a PNG"
