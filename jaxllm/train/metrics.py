"""Where a training run's numbers go: one JSON line per log call, plus TensorBoard scalars.

Why two sinks: `metrics.jsonl` is the record of truth. It is plain text, greppable, needs
no extra library to read, and `read_metrics` turns it into a list of dicts for plots and
tests. TensorBoard is there for watching a run live; it is a view, not the archive.

Why the care about crashes and resumes: a long run dies (preemption, OOM, Ctrl-C) and is
resumed from its last checkpoint, which is usually some steps behind the last logged line.
So the writer:
  * flushes after every line, so a killed run loses at most the line being written;
  * appends to an existing file, never truncates it, so a resume keeps the history;
and the reader:
  * skips a truncated last line (the crash happened mid-write);
  * keeps the LAST record when a (split, step) pair appears twice (the resumed run re-did
    the steps between the checkpoint and the crash, and those are the ones that count).

Line format, one JSON object per line:
    {"step": 100, "split": "train", "time": 1718000000.12, "loss": 3.21, "lr": 0.0003, ...}
Non-finite values (NaN, +-inf) are written as `null`, because NaN is not valid JSON and
a strict reader (jq, JavaScript, most non-Python tools) would reject the whole file.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from jaxllm.errors import DataError

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
_RESERVED_KEYS = ("step", "split", "time")


class MetricsError(DataError):
    """A run's metrics.jsonl is missing or holds nothing usable; the message names the file."""


class MissingMetrics(MetricsError, FileNotFoundError):
    """No metrics.jsonl: a FileNotFoundError to library callers, one line (exit 2) to the CLI."""


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported lazily (only runs that write TensorBoard pay
    for it) and without torch.

    tensorboardX imports torch whenever it is installed, only so that its add_* calls accept
    torch tensors; jaxllm passes floats. With torch installed that import costs every run
    ~3.4 s at start (`python -c "import tensorboardX"`: 4.1 s, against 0.8 s with torch
    hidden). So, unless torch is already loaded, torch is hidden for this one import: a None
    entry in sys.modules makes `import torch` raise ImportError, which tensorboardX expects,
    and the entry is removed afterwards, so a later `import torch` works as usual."""
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter  # slow import: only for runs that write TensorBoard
    else:
        sys.modules["torch"] = None  # type: ignore[assignment]
        try:
            from tensorboardX import SummaryWriter  # slow import, here without torch
        finally:
            if "torch" in sys.modules and sys.modules["torch"] is None:
                del sys.modules["torch"]
    return SummaryWriter


class Sink(Protocol):
    """Another place a run's numbers go (jaxllm/train/wandb_sink.py): gets each write's floats."""

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


class MetricsWriter:
    """Appends metrics of one run to RUN_DIR/metrics.jsonl and (optionally) TensorBoard.

    Usage:
        with MetricsWriter(run_dir) as mw:
            mw.write(step, "train", {"loss": 3.2, "lr": 3e-4})

    Only the process that owns the run (process 0 in multi-host training) should create one;
    two writers on the same file would interleave lines. `sinks` (e.g. a WandbSink) get every
    write's values after the file and TensorBoard, and are closed with the writer.
    """

    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, sinks: Sequence[Sink] = ()) -> None:
        self.run_dir = Path(run_dir)
        self._sinks = list(sinks)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        # If the previous run died mid-line, the file ends without a newline; start our first
        # line on a fresh one so it is not glued onto the broken fragment (which the reader
        # then skips with a warning) instead of corrupting both.
        needs_newline = False
        if self.path.exists() and self.path.stat().st_size > 0:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                needs_newline = f.read(1) != b"\n"
        # Mode "a" appends and never truncates: a resumed run extends the same history.
        # buffering=1 is line buffering; we also flush explicitly after each line.
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")  # closed in close()
        if needs_newline:
            self._file.write("\n")
            self._file.flush()

        self._tb = None
        if tensorboard:
            writer_class = _summary_writer_class()

            # tensorboardX names event files by the current *second* and hostname, and opens
            # them with "wb": a second writer on the same dir within one second would
            # silently overwrite the first file. A unique suffix keeps every file.
            suffix = f".{os.getpid()}.{time.time_ns()}"
            self._tb = writer_class(str(self.run_dir / TENSORBOARD_DIR), filename_suffix=suffix)

    def write(self, step: int, split: str, values: Mapping[str, Any]) -> None:
        """Record `values` (name -> number) for `split` ("train", "val", ...) at `step`.

        Values may be Python floats/ints, numpy or 0-d jax scalars; they are stored as floats.
        """
        if self._file.closed:
            raise ValueError(f"MetricsWriter for {self.run_dir} is closed")
        clash = [k for k in values if k in _RESERVED_KEYS]
        if clash:
            raise ValueError(f"metric names {clash} are reserved for the record itself; rename them")
        now = time.time()
        floats = {name: float(v) for name, v in values.items()}
        record = {"step": int(step), "split": split, "time": now}
        record.update({name: (v if math.isfinite(v) else None) for name, v in floats.items()})
        # allow_nan=False guarantees we never emit the non-JSON tokens NaN/Infinity.
        self._file.write(json.dumps(record, allow_nan=False) + "\n")
        self._file.flush()

        if self._tb is not None:
            for name, v in floats.items():
                # TensorBoard handles NaN itself (it shows a gap), so it gets the raw value.
                self._tb.add_scalar(f"{split}/{name}", v, global_step=int(step), walltime=now)
            self._tb.flush()
        for sink in self._sinks:
            sink.write(int(step), split, floats)

    def flush(self) -> None:
        """Push everything buffered to disk (write() already does; this is for callers' peace of mind)."""
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close every sink. Safe to call twice."""
        if not self._file.closed:
            self.flush()
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        sinks, self._sinks = self._sinks, []
        for sink in sinks:
            sink.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of RUN_DIR/metrics.jsonl, sorted by step, one per (split, step).

    Non-finite values come back as None (they were written as null). A truncated last line
    is skipped silently: that is what a crash mid-write leaves. A broken line in the middle
    (a crash, then a resume that appended after it) is skipped with a warning naming the line.
    When a (split, step) pair repeats, the last record in the file wins: after a resume the
    re-done steps are the ones that belong to the run's real trajectory.

    Raises MissingMetrics (a FileNotFoundError) if the run has no metrics.jsonl, and
    MetricsError if lines other than the last are all malformed: that is not a crash
    mid-write but some other file (or garbage), and an empty plot would hide it.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise MissingMetrics(f"no {METRICS_FILE} in run dir {run_dir}; give a run directory written by jaxllm")
    # Undecodable bytes (a write cut inside a character, or garbage) make their line malformed.
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    # split("\n") leaves "" after a final newline; a non-empty last piece had no newline.
    latest: dict[tuple[str, int], tuple[int, dict[str, Any]]] = {}
    malformed = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            key = (str(record["split"]), int(record["step"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if i != len(lines) - 1:
                malformed.append(i + 1)
            continue
        latest[key] = (i, record)
    if malformed and not latest:
        raise MetricsError(f"{path}: no line is a metrics record (line {malformed[0]} is not one); "
                           "is this the metrics.jsonl of a jaxllm run?")  # fmt: skip
    for n in malformed:
        warnings.warn(f"{path}:{n}: skipping malformed line (crash mid-write?)", stacklevel=2)
    # Sort by step; ties (train and val at the same step) keep file order.
    return [rec for _, rec in sorted(latest.values(), key=lambda ir: (ir[1]["step"], ir[0]))]


# --------------------------------------------------------------------------- TensorBoard reader
# A small reader for the event files written above, so tests (and quick scripts) can check what
# TensorBoard will show without depending on the tensorboard package. Event files are TFRecord:
# each record is
#     uint64 length | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)
# little-endian, where data is a serialized `Event` protobuf.


def _make_crc32c_table() -> list[int]:
    poly = 0x82F63B78  # CRC-32C (Castagnoli), bit-reversed polynomial
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return table


_CRC32C_TABLE = _make_crc32c_table()


def _crc32c(data: bytes) -> int:
    """CRC-32C in pure Python. Slow (~MB/s), fine for metric event files of a few hundred kB."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc32c(data: bytes) -> int:
    """TFRecord's masking: rotate right by 15 and add a constant, so CRCs of CRCs stay well mixed."""
    crc = _crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _read_records(path: Path) -> list[bytes]:
    """The data payloads of a TFRecord file, crc-checked. A truncated tail (live writer) is ignored."""
    buf = path.read_bytes()
    records, pos = [], 0
    while pos + 12 <= len(buf):
        header = buf[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", buf[pos + 8 : pos + 12])
        if length_crc != _masked_crc32c(header):
            raise ValueError(f"{path}: corrupt record length at byte {pos}")
        end = pos + 12 + length + 4
        if end > len(buf):
            break  # record still being written
        data = buf[pos + 12 : pos + 12 + length]
        (data_crc,) = struct.unpack("<I", buf[end - 4 : end])
        if data_crc != _masked_crc32c(data):
            raise ValueError(f"{path}: corrupt record data at byte {pos}")
        records.append(data)
        pos = end
    return records


def read_tensorboard_scalars(path_to_event_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars in the TensorBoard event files of a directory: tag -> [(step, value), ...] by step.

    Accepts the event directory (RUN_DIR/tensorboard) or a single event file. Files are read in
    the order they were created; as in `read_metrics`, when a step repeats for a tag (a resumed
    run) the last value wins. Values are float32 as TensorBoard stores them.
    """
    from tensorboardX.proto import event_pb2  # slow import (protobuf), only for reading events back

    path = Path(path_to_event_dir)
    files = [path] if path.is_file() else sorted(path.glob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"no TensorBoard event files in {path}")

    parsed = []  # (first wall_time, file name, events)
    for f in files:
        events = []
        for data in _read_records(f):
            event = event_pb2.Event()
            event.ParseFromString(data)
            events.append(event)
        # File names only resolve to the second; the first event's wall_time orders files exactly.
        parsed.append((events[0].wall_time if events else 0.0, f.name, events))
    parsed.sort(key=lambda p: (p[0], p[1]))

    scalars: dict[str, dict[int, float]] = {}
    for _, _, events in parsed:
        for event in events:
            if not event.HasField("summary"):
                continue
            for value in event.summary.value:
                if value.WhichOneof("value") == "simple_value":
                    scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
    return {tag: sorted(by_step.items()) for tag, by_step in scalars.items()}
