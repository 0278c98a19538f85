"""Metrics: JSONL + TensorBoard round trip, crash/resume safety, and the run plot."""

import json
import math
import re
import warnings

import numpy as np
import pytest

from jaxllm.train.metrics import (
    MetricsWriter,
    _crc32c,
    read_metrics,
    read_tensorboard_scalars,
)
from jaxllm.train.plot import plot_run


def _train(step):
    return {"loss": 4.0 / (1 + step), "lr": 3e-4 * step, "grad_norm": 1.0 + 0.1 * step, "tokens_per_s": 1e5 + step}


def _val(step):
    return {"loss": 5.0 / (1 + step), "perplexity": math.exp(5.0 / (1 + step))}


def test_round_trip_jsonl_and_tensorboard(tmp_path):
    with MetricsWriter(tmp_path) as mw:
        for step in range(5):
            mw.write(step, "train", _train(step))
            if step in (2, 4):
                mw.write(step, "val", _val(step))

    records = read_metrics(tmp_path)
    assert [(r["step"], r["split"]) for r in records] == [
        (0, "train"), (1, "train"), (2, "train"), (2, "val"), (3, "train"), (4, "train"), (4, "val"),
    ]  # fmt: skip
    for r in records:
        expected = _train(r["step"]) if r["split"] == "train" else _val(r["step"])
        assert {k: r[k] for k in expected} == expected  # JSON keeps float64 exactly
        assert isinstance(r["time"], float) and set(r) == {"step", "split", "time", *expected}

    scalars = read_tensorboard_scalars(tmp_path / "tensorboard")
    assert set(scalars) == {f"train/{k}" for k in _train(0)} | {f"val/{k}" for k in _val(0)}
    for split, fn, steps in (("train", _train, range(5)), ("val", _val, (2, 4))):
        for name in fn(0):
            got = scalars[f"{split}/{name}"]
            assert [s for s, _ in got] == list(steps)
            np.testing.assert_array_equal([v for _, v in got], np.float32([fn(s)[name] for s in steps]))


def test_nonfinite_written_as_null(tmp_path):
    with MetricsWriter(tmp_path) as mw:
        mw.write(0, "train", {"loss": float("nan"), "grad_norm": float("inf"), "lr": np.float32(1e-3)})
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert "NaN" not in line and "Infinity" not in line
    rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert rec["loss"] is None and rec["grad_norm"] is None
    assert rec["lr"] == pytest.approx(1e-3)
    # TensorBoard gets the raw value: it shows NaN as a gap by itself.
    assert math.isnan(read_tensorboard_scalars(tmp_path / "tensorboard")["train/loss"][0][1])


def test_reopen_appends(tmp_path):
    with MetricsWriter(tmp_path) as mw:
        mw.write(0, "train", {"loss": 2.0})
    with MetricsWriter(tmp_path) as mw:  # same second: the TB event file must not be overwritten
        mw.write(1, "train", {"loss": 1.0})
    assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(0, 2.0), (1, 1.0)]
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 2
    assert read_tensorboard_scalars(tmp_path / "tensorboard")["train/loss"] == [(0, 2.0), (1, 1.0)]


def test_truncated_last_line_tolerated(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as mw:
        for step in range(3):
            mw.write(step, "train", {"loss": float(step)})
    path = tmp_path / "metrics.jsonl"
    path.write_text(path.read_text() + '{"step": 3, "split": "train", "ti')  # killed mid-write
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a truncated *last* line is expected, so no warning
        assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1, 2]

    # Resuming after such a crash starts a fresh line instead of gluing onto the fragment;
    # the fragment is now mid-file, so it is skipped with a warning rather than silently.
    with MetricsWriter(tmp_path, tensorboard=False) as mw:
        mw.write(3, "train", {"loss": 3.0})
    with pytest.warns(UserWarning, match=r"metrics.jsonl:4: skipping malformed line"):
        records = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in records] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)]


def test_duplicate_steps_keep_last(tmp_path):
    with MetricsWriter(tmp_path) as mw:  # first run: steps 0..4, checkpoint at 2, then a crash
        for step in range(5):
            mw.write(step, "train", {"loss": 10.0 + step})
        mw.write(4, "val", {"loss": 99.0})
    with MetricsWriter(tmp_path) as mw:  # resumed from step 2: re-does 3 and 4
        for step in range(3, 6):
            mw.write(step, "train", {"loss": 20.0 + step})
        mw.write(4, "val", {"loss": 50.0})
    records = read_metrics(tmp_path)
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
    assert train == [(0, 10.0), (1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0), (5, 25.0)]
    assert [(r["step"], r["loss"]) for r in records if r["split"] == "val"] == [(4, 50.0)]
    tb = read_tensorboard_scalars(tmp_path / "tensorboard")
    assert tb["train/loss"] == train and tb["val/loss"] == [(4, 50.0)]


def test_reserved_names_rejected(tmp_path):
    with MetricsWriter(tmp_path, tensorboard=False) as mw, pytest.raises(ValueError, match="reserved"):
        mw.write(0, "train", {"step": 1.0})


def test_crc32c_known_value():
    # The standard CRC-32C check value (RFC 3720 / iSCSI): crc32c(b"123456789") == 0xE3069283.
    assert _crc32c(b"123456789") == 0xE3069283


def _synthetic_run(run_dir, *, val=True, mfu=True):
    rng = np.random.default_rng(0)
    with MetricsWriter(run_dir, tensorboard=False) as mw:
        for step in range(0, 500, 5):
            loss = 2.5 + 8.0 * math.exp(-step / 80) + 0.15 * rng.standard_normal()
            values = {"loss": loss, "lr": 3e-4, "grad_norm": 1.0, "step_time_s": 0.3,
                      "tokens_per_s": 120_000 + 5_000 * rng.standard_normal()}  # fmt: skip
            if mfu:
                values["mfu"] = 0.42 + 0.02 * rng.standard_normal()
            mw.write(step, "train", values)
            if val and step % 100 == 0:
                mw.write(step, "val", {"loss": loss + 0.1, "perplexity": math.exp(loss + 0.1)})


@pytest.mark.parametrize("val,mfu", [(True, True), (False, False)])
def test_plot_run_writes_png(tmp_path, val, mfu):
    _synthetic_run(tmp_path, val=val, mfu=mfu)
    out = plot_run(tmp_path)
    assert out == tmp_path / "metrics.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000

    custom = plot_run(tmp_path, tmp_path / "sub" / "custom.png")
    assert custom.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_run_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"no metrics.jsonl in run dir {tmp_path}")):
        plot_run(tmp_path)
    with MetricsWriter(tmp_path, tensorboard=False) as mw:
        mw.write(0, "val", {"loss": 3.0})
    with pytest.raises(ValueError, match="no train points"):
        plot_run(tmp_path)
