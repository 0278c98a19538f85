"""The guide's commands run as written (docs/guide/*.md), at small sizes.

Every line of every ```bash block is run in order, one chapter per test, in a scratch
directory that has the project's shared corpora beside it (so nothing is fetched).
Sizes shrink only through $JAXLLM_OVERRIDES (applied by every config load), never by
editing a command. ```console blocks are set-up (pip install) and are not run: CI has
already installed the package.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.data_paths import SHARED_DATA

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guide"
CHAPTERS = sorted(GUIDE.glob("*.md"))
SMALL = "train.steps=20 train.eval_every=10 train.log_every=10 train.checkpoint_every=10"


def commands(chapter: Path) -> list[str]:
    """The chapter's ```bash lines, continuation lines joined, comments dropped."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", chapter.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


def test_every_chapter_has_commands():
    assert CHAPTERS, "docs/guide/ has no chapters"
    for chapter in CHAPTERS:
        assert commands(chapter), f"{chapter.name} has no ```bash commands to test"


@pytest.mark.parametrize("chapter", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_commands_run(chapter, tmp_path):
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent)  # where the quickstart looks for the corpus
    env = {**os.environ, "JAXLLM_OVERRIDES": SMALL, "JAX_PLATFORMS": "cpu"}
    jaxllm = Path(sys.executable).parent / "jaxllm"
    for line in commands(chapter):
        argv = shlex.split(line)
        if argv[0] == "jaxllm" and jaxllm.exists():
            argv[0] = str(jaxllm)
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"{chapter.name}: `{line}` failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    if chapter.stem == "00-quickstart":
        run = tmp_path / "runs" / "quickstart" / "run"
        for png in ("metrics.png", "attention.png"):
            assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png
