"""Goodput accounting (jaxllm/train/goodput.py): the "goodput" records of metrics.jsonl say
where a run's wall time went, and their fields add up to the wall time since it started."""

from __future__ import annotations

import time

import pytest

import jaxllm
from jaxllm.train.goodput import CATEGORIES, GOODPUT_SPLIT, Goodput
from jaxllm.train.metrics import read_metrics
from jaxllm.train.trainer import train
from tests.fixtures import QUIET, tiny_overrides

FIELDS = [f"{c}_s" for c in CATEGORIES] + ["other_s"]


def test_goodput_adds_up_to_the_wall_time_of_a_run_with_a_checkpoint_and_an_eval(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    cfg = jaxllm.load_config("shakespeare-char", tiny_overrides(
        tiny_dataset, run, "train.steps=6", "train.eval_every=3", "train.checkpoint_every=3"))  # fmt: skip
    started = time.time()
    train(cfg, **QUIET)
    finished = time.time()
    records = [r for r in read_metrics(run) if r["split"] == GOODPUT_SPLIT]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]  # one per train record (log_every=1)
    final = records[-1]

    # The wall time is the run's, by a clock outside it: from the call to the last record.
    assert final["wall_s"] == pytest.approx(final["time"] - started, rel=0.05)
    assert final["time"] <= finished
    # The categories add up to it within 5%, and the rest (other_s) is a small share: the
    # phases of the loop are all timed, not left to the remainder.
    assert sum(final[f] for f in FIELDS) == pytest.approx(final["wall_s"], rel=0.05)
    assert 0 <= final["other_s"] < 0.2 * final["wall_s"], final
    # Each phase of this run happened, so each category holds time; the compile is the first
    # step's (one program: no recompiles), far longer than a tiny step.
    for field in FIELDS:
        assert final[field] > 0, (field, final)
    assert final["compile_s"] > final["step_s"] / 6
    assert final["goodput"] == pytest.approx(final["step_s"] / final["wall_s"])
    # Cumulative: no category ever shrinks, and the checkpoint at step 3 (saved after step 3's
    # record) and the eval at step 3 show up from step 4's record on.
    for field in [*FIELDS[:-1], "wall_s"]:
        values = [r[field] for r in records]
        assert values == sorted(values), field
    by_step = {r["step"]: r for r in records}
    assert by_step[3]["checkpoint_s"] == 0 and by_step[4]["checkpoint_s"] > 0
    assert by_step[3]["eval_s"] == 0 and by_step[4]["eval_s"] > 0
    # The final record (written after the last checkpoint's writes finished) replaced step 6's.
    assert final["checkpoint_s"] > by_step[5]["checkpoint_s"]


def test_goodput_clock_counts_what_it_is_given():
    gp = Goodput(start=time.perf_counter() - 10.0)  # a run that started 10 s ago
    gp.add("step", 6.0)
    gp.add("compile", 1.5)
    with gp.timed("eval"):
        time.sleep(0.05)
    values = gp.values()
    assert values["wall_s"] == pytest.approx(10.05, abs=0.05)
    assert values["eval_s"] == pytest.approx(0.05, abs=0.03)
    assert values["goodput"] == pytest.approx(6.0 / values["wall_s"])
    assert values["other_s"] == pytest.approx(values["wall_s"] - 7.5 - values["eval_s"])
    with pytest.raises(KeyError):
        gp.add("lunch", 1.0)  # a misspelt category fails loudly instead of vanishing into other_s
