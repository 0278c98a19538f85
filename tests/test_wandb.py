"""Weights & Biases logging (jaxllm/train/wandb_sink.py): an offline W&B run holds the same
numbers as metrics.jsonl, and asking for W&B without the library fails clearly, up front.

The offline run is read back from its `.wandb` file, the record log W&B's `wandb sync`
uploads: LevelDB's log format (32 KiB blocks of CRC-checked, possibly fragmented records,
after a 7-byte ":W&B" header), each record a `wandb.proto.wandb_internal_pb2.Record`.
wandb no longer ships a Python reader for it (0.31 moved that into its Go core), so the
few lines below read it; the CRC checks make a format change fail loudly, not quietly."""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
import sys
import zlib
from pathlib import Path

import pytest

import jaxllm
from jaxllm.train.metrics import read_metrics
from jaxllm.train.trainer import train
from jaxllm.train.wandb_sink import RUN_ID_FILE, WANDB_DIR, WandbMissing
from tests.fixtures import QUIET, tiny_overrides

_BLOCK, _HEADER = 32768, 7  # LevelDB log: block size; a record's header (crc32, length, type)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list[bytes]:
    """The records of a `.wandb` file, fragments joined, each CRC-checked."""
    buf = path.read_bytes()
    assert buf[:4] == b":W&B", f"{path} is not a W&B record log"
    records, partial, pos = [], b"", _HEADER  # the file header is as long as a record header
    while pos + _HEADER <= len(buf):
        if _BLOCK - pos % _BLOCK < _HEADER:  # a block's tail too short for a header is padding
            pos += _BLOCK - pos % _BLOCK
            continue
        crc, length, kind = struct.unpack("<IHB", buf[pos : pos + _HEADER])
        data = buf[pos + _HEADER : pos + _HEADER + length]
        if kind == 0:  # zero padding at the end of the last block
            break
        assert zlib.crc32(data, zlib.crc32(bytes([kind]))) == crc, f"{path}: bad record at byte {pos}"
        pos += _HEADER + length
        if kind == _FULL:
            records.append(data)
        elif kind == _FIRST:
            partial = data
        elif kind == _MIDDLE:
            partial += data
        elif kind == _LAST:
            records.append(partial + data)
    return records


def wandb_history(run_folder: Path) -> dict[int, dict[str, float]]:
    """step -> {key: value} of the run's offline W&B history (W&B's own `_step`, `_runtime`
    and `_timestamp` left out); a step logged in several rows is merged, the later wins."""
    from wandb.proto import wandb_internal_pb2

    files = list((run_folder / WANDB_DIR).glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    history: dict[int, dict[str, float]] = {}
    for data in wandb_records(files[0]):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") != "history":
            continue
        row = history.setdefault(record.history.step.num, {})
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            if not key.startswith("_"):
                row[key] = json.loads(item.value_json)  # W&B writes NaN as NaN, which json reads
    return history


@pytest.fixture
def offline_wandb(monkeypatch, tmp_path):
    """W&B with no network and nothing written outside the test's folder."""
    pytest.importorskip("wandb")
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def test_offline_wandb_run_logs_what_metrics_jsonl_holds(tiny_dataset, tmp_path, offline_wandb):
    run = tmp_path / "run"
    cfg = jaxllm.load_config("shakespeare-char", tiny_overrides(
        tiny_dataset, run, "train.steps=4", "train.eval_every=2", "train.wandb=jaxllm-tests",
        "train.wandb_mode=offline", "train.wandb_name=tiny"))  # fmt: skip
    lines: list[str] = []
    train(cfg, log=lines.append)
    assert any(line.startswith("W&B: offline run in") and str(run / WANDB_DIR) in line for line in lines), lines

    records = read_metrics(run)
    expected: dict[int, dict[str, float | None]] = {}
    for r in records:
        values = {f"{r['split']}/{k}": v for k, v in r.items() if k not in ("step", "split", "time")}
        expected.setdefault(r["step"], {}).update(values)
    assert {r["split"] for r in records} == {"train", "val", "goodput"}
    history = wandb_history(run)
    assert sorted(history) == sorted(expected) == [1, 2, 3, 4]
    for step, values in expected.items():
        logged = history[step]
        assert logged.keys() == values.keys(), step
        for key, value in values.items():  # the same float, exactly: both are Python floats' repr
            if value is None:  # written as null in metrics.jsonl: NaN or inf in W&B
                assert not math.isfinite(logged[key]), (step, key)
            else:
                assert logged[key] == value, (step, key, logged[key], value)
    # The run's id is kept in the run folder, so a resume would continue this W&B run.
    run_id = (run / WANDB_DIR / RUN_ID_FILE).read_text().strip()
    assert list((run / WANDB_DIR).glob(f"offline-run-*-{run_id}"))


def test_wandb_asked_for_but_missing_stops_before_the_run_starts(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` now raises ImportError
    run = tmp_path / "run"
    cfg = jaxllm.load_config("shakespeare-char", tiny_overrides(tiny_dataset, run, "train.steps=2",
                                                                "train.wandb=my-project"))  # fmt: skip
    with pytest.raises(WandbMissing, match=r"train\.wandb is set.*pip install 'jaxllm\[wandb\]'"):
        train(cfg, **QUIET)
    assert not run.exists()  # nothing was written: the check comes before the run folder
    # The CLI says it in one line and exits 2, as for any config error.
    from jaxllm.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["train", "shakespeare-char", *tiny_overrides(tiny_dataset, run, "train.wandb=my-project")])
    assert code == 2 and "pip install 'jaxllm[wandb]'" in err.getvalue(), err.getvalue()
    assert isinstance(WandbMissing("x"), jaxllm.config.ConfigError)
