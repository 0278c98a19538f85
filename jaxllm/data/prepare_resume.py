"""Resuming a crashed single-process preparation where its last checkpoint left it.

A preparation of a large corpus runs for hours; a crash (an OOM kill, a preempted VM, Ctrl-C)
must not cost them. prepare writes into a temporary folder beside data.path; after a shard is
closed (at most every `every_s` seconds) it also writes `.resume.pkl` there: the position of
the next document, the dedup indexes, the counts, the report so far and the documents of the
shards still open. The next `jaxllm data prepare` with the same settings and unchanged input
files finds that folder, loads the state and reads on from that document, so the result is
the uninterrupted run's, byte for byte (tests/test_prepare_resume.py kills one to check).

What must match to resume (the fingerprint): the data settings that decide what is written,
the tokenizer's identity, and every input file's path, size and mtime. A partial folder whose
fingerprint differs is stale: prepare says so and removes it (only folders named as prepare
names its own, holding its resume file). A failure that leaves no checkpoint removes the
temporary folder as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxllm.config import Config
from jaxllm.data.sources import ReadReport, expand_inputs

RESUME = ".resume.pkl"
PREFIX = ".{name}.tmp-"  # prepare's temporary folders: tempfile.mkdtemp(prefix=PREFIX, dir=data.path's parent)


def fingerprint(cfg: Config, tokenizer_identity: str) -> str:
    """A hash of everything that decides the output: data settings, tokenizer, input files' sizes and mtimes."""
    d = cfg.data
    files = []
    for path in expand_inputs(d.inputs, ReadReport()):
        try:
            st = path.stat()
            files.append((str(path), st.st_size, st.st_mtime_ns))
        except OSError:
            files.append((str(path), -1, -1))
    settings = {
        "inputs": list(d.inputs), "jsonl_field": d.jsonl_field, "documents": d.documents, "split": d.split,
        "val_fraction": d.val_fraction, "seed": d.seed, "shard_tokens": d.shard_tokens,
        "shard_format": d.shard_format, "filters": repr(d.filters), "dedup": repr(d.dedup),
        "tokenizer": tokenizer_identity, "files": files,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def save(tmp: Path, state: dict[str, Any]) -> None:
    """Write the checkpoint atomically: a crash while writing leaves the previous one."""
    part = tmp / f"{RESUME}.part"
    with part.open("wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, tmp / RESUME)


def find(out: Path, print_: str, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
    """(folder, state) of a partial preparation of `out` with this fingerprint; stale ones are removed."""
    found = None
    candidates = sorted(out.parent.glob(PREFIX.format(name=out.name) + "*"), key=lambda p: p.stat().st_mtime)
    for folder in reversed(candidates):
        if not (folder / RESUME).is_file() or folder.is_symlink():
            continue
        try:
            with (folder / RESUME).open("rb") as f:
                state = pickle.load(f)
        except Exception:  # a damaged checkpoint is only lost time
            state = None
        if found is None and state is not None and state.get("fingerprint") == print_:
            found = folder, state
        else:
            log(f"removing a partial preparation of {out} with other settings or inputs: {folder}")
            shutil.rmtree(folder, ignore_errors=True)
    return found
