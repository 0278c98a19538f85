"""A crashed `jaxllm data prepare` resumes from its last checkpoint and writes the uninterrupted
run's shards byte for byte; a partial run with other settings is discarded, not resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import jaxllm
from jaxllm.data import shards as shards_mod
from jaxllm.data.prepare import load_manifest, prepare
from jaxllm.data.prepare_resume import RESUME

from .data_paths import TINY


def _config(out, *extra: str):
    corpus = out.parents[1] / "corpus.txt"  # a third of tinyshakespeare, its ~2,400 speeches the documents
    if not corpus.exists():
        corpus.write_text(TINY.read_text()[:350_000])
    return jaxllm.load_config("shakespeare-char", [
        f"data.inputs=[{corpus}]", f"data.path={out}", "tokenizer.path=byte", "data.documents=paragraph",
        "data.split=document", "data.shard_tokens=12000", *extra])  # fmt: skip


def _same_dataset(a, b) -> None:
    ma, mb = load_manifest(a), load_manifest(b)
    assert ma["splits"] == mb["splits"] and ma["documents"] == mb["documents"]
    assert [(s["sha256"], s["docs"]) for s in ma["sources"]] == [(s["sha256"], s["docs"]) for s in mb["sources"]]
    for split in ma["splits"].values():
        for entry in split["shards"]:
            assert (a / entry["file"]).read_bytes() == (b / entry["file"]).read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole") / "run" / "ds"
    prepare(_config(out), log=lambda _: None)
    assert len(load_manifest(out)["splits"]["train"]["shards"]) > 20
    return out


def test_a_crash_resumes_where_it_stopped(uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "run" / "ds"
    run = out.parent
    close, calls = shards_mod.ShardWriter.close, []

    def crash_at_the_twelfth_shard(self):
        calls.append(self.path.name)
        if len(calls) == 12:
            raise KeyboardInterrupt  # mid-run, with a half-written shard open
        return close(self)

    monkeypatch.setattr(shards_mod.ShardWriter, "close", crash_at_the_twelfth_shard)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        prepare(_config(out), log=lines.append, resume_every_s=0)
    monkeypatch.undo()
    partial = [p for p in run.iterdir() if (p / RESUME).is_file()]
    assert len(partial) == 1 and not out.exists()
    assert any("run the same command again to resume" in line for line in lines)

    lines.clear()
    prepare(_config(out), log=lines.append, resume_every_s=0)
    resumed = [line for line in lines if line.startswith("resuming the preparation")]
    assert resumed and int(resumed[0].rsplit(" ", 1)[1].replace(",", "")) > 500  # not from the start
    _same_dataset(out, uninterrupted)
    assert sorted(p.name for p in run.iterdir()) == ["ds"]  # the partial folder became the dataset
    assert not (out / RESUME).exists()


def test_a_partial_run_with_other_settings_is_discarded(uninterrupted, tmp_path, monkeypatch):
    out = tmp_path / "run" / "ds"
    run = out.parent
    monkeypatch.setattr(shards_mod.ShardWriter, "close", lambda self: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # no shard closed, so no checkpoint: nothing is kept
        prepare(_config(out), log=lambda _: None, resume_every_s=0)
    assert not run.exists() or sorted(p.name for p in run.iterdir()) == []
    monkeypatch.undo()

    close, calls = shards_mod.ShardWriter.close, []

    def crash_at_the_fifth_shard(self):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return close(self)

    monkeypatch.setattr(shards_mod.ShardWriter, "close", crash_at_the_fifth_shard)
    with pytest.raises(KeyboardInterrupt):
        prepare(_config(out, "data.seed=3"), log=lambda _: None, resume_every_s=0)
    monkeypatch.undo()
    lines: list[str] = []
    prepare(_config(out), log=lines.append, resume_every_s=0)  # seed 0 again: the seed-3 progress is stale
    assert any(line.startswith("removing a partial preparation") for line in lines)
    assert not any(line.startswith("resuming") for line in lines)
    _same_dataset(out, uninterrupted)


def test_kill_9_then_resume_from_the_cli(uninterrupted, tmp_path):
    """A real SIGKILL (no Python handler runs) in the middle of `jaxllm data prepare`."""
    out = tmp_path / "run" / "ds"
    run = out.parent
    cfg = _config(out)
    overrides = [f"data.inputs={list(cfg.data.inputs)}", f"data.path={out}", "tokenizer.path=byte",
                 "data.documents=paragraph", "data.split=document", "data.shard_tokens=12000"]  # fmt: skip
    cmd = [sys.executable, "-c", "import sys; from jaxllm.data.prepare import prepare; import jaxllm; "
           "prepare(jaxllm.load_config('shakespeare-char', sys.argv[1:]), resume_every_s=0, "
           "log=lambda m: (__import__('time').sleep(0.02), print(m, flush=True)))", *overrides]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (run.exists() and any((p / RESUME).is_file() for p in run.iterdir() if p.is_dir())):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    lines: list[str] = []
    prepare(cfg, log=lines.append, resume_every_s=0)
    assert any(line.startswith("resuming the preparation") for line in lines)
    _same_dataset(out, uninterrupted)
