"""Write one benchmark's section into BENCHMARKS.md, keeping the other sections."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\nEach section is written by the script it names (`python -m benchmarks NAME`; "
    "`python -m benchmarks all` runs the\nperformance suite); rerun it to refresh. "
    "docs/performance.md explains the figures.\n"
)


def write_section(name: str, body: str) -> None:
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else HEADER
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    BENCHMARKS.write_text(text)


def git_revision() -> str:
    """Short commit of the measured code, "+dirty" if tracked files differ from it."""
    try:
        cwd = BENCHMARKS.parent
        run = {"cwd": cwd, "capture_output": True, "text": True}
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=True, **run)
        # BENCHMARKS.md itself does not count: the suite's earlier sections have just written it.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!BENCHMARKS.md"],
                               **run)  # fmt: skip
        return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
