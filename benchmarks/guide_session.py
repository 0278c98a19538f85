"""One Python process that runs a guide chapter's `jaxllm ...` commands one after another.

tests/test_guide.py replays every command of the guide on each CI run. Started one by
one, each `jaxllm` command pays for a fresh interpreter, `import jax` and the loading of
its compiled programs from the persistent cache before it does any work: about 3 s on a
2-core machine, over 60 commands. Here the chapter's commands go, in order, through
`jaxllm.cli.main`, the function the `jaxllm` console script calls, with the argv bash
would have given it (benchmarks/guide.py expands each line with bash itself), in one
process started in the chapter's directory with the chapter's environment.

Protocol (stdin/stdout, for benchmarks/guide.py): each input line is a JSON list, the
argv after `jaxllm`; the command's output (stdout and stderr, which the parent merges)
follows, then one line `DONE_MARK <exit code>`.

    python -m benchmarks.guide_session   # then write JSON argv lists to its stdin
"""

from __future__ import annotations

import json
import sys

DONE_MARK = "\x1ejaxllm-guide-session exit"


def run(argv: list[str]) -> int:
    """`jaxllm ARGV`'s exit code, as the console script would exit."""
    from jaxllm.cli import main  # slow import: once, in the session process

    try:
        return main(argv)
    except SystemExit as e:  # argparse's usage errors (exit 2) and --help (exit 0)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)


def serve() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        code = run(json.loads(line))
        sys.stderr.flush()
        print(f"{DONE_MARK} {code}", flush=True)


if __name__ == "__main__":
    serve()
