"""Every `jaxllm ...` command written in the docs and the README parses with today's CLI.

tests/test_guide.py runs the guide's commands; the reference pages (docs/*.md) show many
more, often with placeholders (RUN_DIR), which cannot run but must still name real
verbs and flags. Synopsis lines that list optional flags in [brackets] are skipped.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from jaxllm.cli import OVERRIDE, build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]


def documented_commands() -> list[tuple[str, str]]:
    out = []
    for page in PAGES:
        for block in re.findall(r"```[a-z]*\n(.*?)```", page.read_text(), re.S):
            for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
                line = line.partition(" # ")[0].strip()
                line = re.sub(r"^(\w+=\S+\s+)+", "", line)  # leading VAR=value environment settings
                if line.startswith("jaxllm ") and "[--" not in line and "[same" not in line:
                    out.append((str(page.relative_to(ROOT)), line))
    return out


def test_the_docs_show_commands():
    pages = {page for page, _ in documented_commands()}
    assert "README.md" in pages and "docs/guide/05-scaling.md" in pages and len(documented_commands()) > 60


@pytest.mark.parametrize("page,line", documented_commands(), ids=lambda x: x if x.endswith(".md") else "")
def test_documented_command_parses(page, line):
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(shlex.split(line)[1:])
    except SystemExit:
        pytest.fail(f"{page}: `{line}` does not parse")
    extra = [x for x in extra if not (isinstance(getattr(args, "overrides", None), list) and OVERRIDE.match(x))]
    assert not extra or getattr(args, "passthrough", False), f"{page}: `{line}`: unknown arguments {extra}"
    if getattr(args, "beam", False):  # Beam's own flags after --beam: each must be a flag some runner knows
        from jaxllm.data.pipeline import check_runner_flags

        check_runner_flags(extra)
