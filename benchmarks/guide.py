"""Run the guide (docs/guide/*.md) at full size: its logs and pictures are the guide's figures.

Every figure the guide quotes is read from a log this script writes, and every picture it
shows is a PNG that the chapter's own commands drew. The script:

1. makes a work directory laid out like a fresh clone: WORK/main holds a link to every
   tracked top-level entry of this checkout, WORK/shared links the shared corpora (where
   the quickstart and the chapters find them, `../shared/data`);
2. runs every line of every ```bash block of the chosen chapters, in order, in WORK/main,
   as written (no size overrides), chapter after chapter in the same directory, since
   later chapters use earlier chapters' runs (as a reader following the guide does);
3. writes each chapter's commands, their output and their wall times to
   docs/guide/logs/NN-name.log, headed by the machine, the versions and the git revision;
4. copies the chapter's pictures (`runs/guide/*.png`, where the chapters' commands write
   them) to docs/guide/img/, after checking that every `img/NAME.png` the chapter shows
   was written by its commands.

    python -m benchmarks guide                     # all chapters (~20 min on 2 cores)
    python -m benchmarks guide --chapters 03 06    # some, in the same work directory

tests/test_guide.py runs the same commands at small sizes on every CI run, with the same
`commands` and `shown_images` below, so the guide cannot drift from the code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "guide"
PICTURES = Path("runs") / "guide"  # where chapters' commands write PNGs, relative to the checkout


def chapters() -> list[Path]:
    return sorted(GUIDE.glob("[0-9][0-9]-*.md"))


def commands(chapter: Path) -> list[tuple[str, int]]:
    """The chapter's ```bash lines, in order, with the exit code each must give.

    Continuation lines are joined and comments dropped; a comment `# exits N` says the
    command must exit N (e.g. `jaxllm plan` exits 3 when the model does not fit), else 0."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", chapter.read_text(), re.S):
        for line in re.sub(r"\s*\\\n\s*", " ", block).splitlines():
            line, _, comment = line.partition(" # ")
            line = line.strip()
            if line and not line.startswith("#"):
                code = re.match(r"exits (\d+)", comment.strip())
                out.append((line, int(code.group(1)) if code else 0))
    return out


def shown_images(chapter: Path) -> list[str]:
    """File names of the pictures the chapter shows (`![...](img/NAME.png)`)."""
    return re.findall(r"\]\(img/([\w.-]+\.png)\)", chapter.read_text())


def make_workdir(work: Path, shared: Path | None) -> Path:
    """WORK/main: links to the checkout's tracked top-level entries (a fresh clone's files)."""
    main = work / "main"
    main.mkdir(parents=True, exist_ok=True)
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name in sorted({line.split("/")[0] for line in tracked.splitlines() if line}):
        link = main / name
        if not link.exists() and not link.is_symlink() and (REPO / name).exists():
            link.symlink_to(REPO / name)
    if shared is not None and shared.is_dir() and not (work / "shared").exists():
        (work / "shared").symlink_to(shared.resolve())
    return main


def machine() -> str:
    """One line naming the CPU, its cores, and the versions that produced the figures."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import jax

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    return (
        f"{cpu}, {os.cpu_count()} cores; Python {platform.python_version()}, jax {jax.__version__} "
        f"({jax.default_backend()}); git {rev.strip() or 'unknown'}; {time.strftime('%Y-%m-%d')}"
    )


def run_chapter(chapter: Path, main: Path, env: dict[str, str], log, one_process: bool = False) -> float:
    """Run one chapter's commands in `main`, streaming their output to stdout and `log`.

    With `one_process`, the plain `jaxllm ...` lines (no pipe, redirection or variable
    assignment) run in one Python process for the whole chapter (benchmarks/guide_session.py
    says why and how); every other line, and every line without it, runs in bash as typed."""
    jaxllm = Path(sys.executable).parent / "jaxllm"
    if jaxllm.exists():  # the jaxllm (and python) of this interpreter, whatever PATH says
        env = {**env, "PATH": f"{jaxllm.parent}{os.pathsep}{env.get('PATH', '')}"}
    session: subprocess.Popen | None = None
    total = time.perf_counter()
    try:
        for line, expected in commands(chapter):
            log(f"$ {line}")
            start = time.perf_counter()
            if one_process and plain_jaxllm(line):
                session = session or start_session(main, env)
                code = session_run(session, bash_argv(line, main, env)[1:], log)
            else:
                code = shell_run(line, main, env, log)
            log(f"[{time.perf_counter() - start:.1f} s, exit {code}]\n")
            if code != expected:
                raise SystemExit(f"{chapter.name}: `{line}` exited {code}, not {expected}; see the log")
    finally:
        if session is not None:  # end of input ends the session; one that died has nothing to read
            with contextlib.suppress(BrokenPipeError):
                session.stdin.close()
            session.wait()
    return time.perf_counter() - total


def shell_run(line: str, main: Path, env: dict[str, str], log) -> int:
    """`bash -c LINE` in `main`; its exit code."""
    proc = subprocess.Popen(["bash", "-c", line], cwd=main, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip
    assert proc.stdout is not None
    for out in proc.stdout:
        log(out.rstrip("\n"))
    return proc.wait()


def plain_jaxllm(line: str) -> bool:
    """True for a simple `jaxllm ...` command: no operator, redirection or `VAR=value` prefix."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    try:
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes: let bash say so
        return False
    return bool(tokens) and tokens[0] == "jaxllm" and not any(set(t) <= set("();<>|&") for t in tokens)


def bash_argv(line: str, main: Path, env: dict[str, str]) -> list[str]:
    """The argv bash would give the command `line` (quotes, globs and variables expanded)."""
    out = subprocess.run(["bash", "-c", "printf '%s\\0' " + line], cwd=main, env=env, capture_output=True, check=True)
    return out.stdout.decode().split("\0")[:-1]


def start_session(main: Path, env: dict[str, str]) -> subprocess.Popen:
    """A benchmarks/guide_session.py process in `main` with `env`."""
    command = [sys.executable, "-m", "benchmarks.guide_session"]
    env = {**env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}
    return subprocess.Popen(command, cwd=main, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


def session_run(session: subprocess.Popen, argv: list[str], log) -> int:
    """`jaxllm ARGV` in the session; its exit code."""
    from benchmarks.guide_session import DONE_MARK

    assert session.stdin is not None and session.stdout is not None
    session.stdin.write(json.dumps(argv) + "\n")
    session.stdin.flush()
    for out in session.stdout:
        if out.startswith(DONE_MARK):
            return int(out[len(DONE_MARK) :])
        log(out.rstrip("\n"))
    raise SystemExit(f"the guide session process died (exit {session.wait()}) running `jaxllm {shlex.join(argv)}`")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", nargs="*", default=[], help="chapter numbers, e.g. 01 03 (default: all)")
    parser.add_argument("--work", default="/tmp/jaxllm-guide", help="work directory, kept between runs")
    parser.add_argument("--fresh", action="store_true", help="remove the work directory first")
    parser.add_argument("--no-write", action="store_true", help="do not write docs/guide/logs and img")
    args = parser.parse_args()

    chosen = [c for c in chapters() if not args.chapters or c.name[:2] in args.chapters]
    if not chosen:
        raise SystemExit(f"no chapter matches {args.chapters}; chapters: {[c.name[:2] for c in chapters()]}")
    work = Path(args.work)
    if args.fresh and work.exists():
        shutil.rmtree(work)
    main_dir = make_workdir(work, REPO.parent / "shared")
    env = {**os.environ}
    env.pop("JAXLLM_OVERRIDES", None)  # full size: the commands exactly as written
    header = machine()
    for chapter in chosen:
        lines: list[str] = []

        def log(text: str, lines: list[str] = lines) -> None:
            print(text, flush=True)
            lines.append(text)

        log(f"# {chapter.name}, run by `python -m benchmarks guide` in a fresh-clone layout\n# {header}\n")
        seconds = run_chapter(chapter, main_dir, env, log)
        log(f"# {chapter.name}: {seconds:.0f} s in all")
        made = main_dir / PICTURES
        missing = [name for name in shown_images(chapter) if not (made / name).is_file()]
        if missing:
            raise SystemExit(f"{chapter.name} shows {missing}, which its commands did not write to {PICTURES}/")
        if not args.no_write:
            (GUIDE / "logs").mkdir(exist_ok=True)
            (GUIDE / "logs" / f"{chapter.stem}.log").write_text("\n".join(lines) + "\n")
            (GUIDE / "img").mkdir(exist_ok=True)
            for name in shown_images(chapter):
                shutil.copyfile(made / name, GUIDE / "img" / name)
            print(f"wrote docs/guide/logs/{chapter.stem}.log and {len(shown_images(chapter))} pictures", flush=True)


if __name__ == "__main__":
    main()
