"""The checkable synthetic tasks behind the post-training benchmarks: right answers,
wrong answers that are really wrong, and preference pairs from a policy's own samples."""

from __future__ import annotations

import jax
import numpy as np

import jaxllm
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.posttrain.synthetic import (
    make_preference_records,
    make_records,
    off_task_answer,
    policy_preference_records,
    wrong_answer,
)


def test_records_have_the_right_answers_and_wrong_ones_are_wrong():
    records = make_records(300, seed=0)
    assert {r["kind"] for r in records} == {"reverse", "add", "upper"}
    for r in records:
        a = r["input"]
        expected = {"reverse": a[::-1], "upper": a.upper()}.get(r["kind"]) or str(sum(map(int, a.split("+"))))
        assert r["output"] == expected
    rng = np.random.default_rng(0)
    for r in records:
        assert wrong_answer(r, rng) != r["output"]
        assert wrong_answer(r, rng, off_task=1.0) != r["output"]
    assert off_task_answer({"kind": "reverse", "input": "abc", "output": "cba"}) == "ABC"
    prefs = make_preference_records(300, seed=0, off_task=0.5)
    off = sum(p["rejected"] == off_task_answer(p) for p in prefs)
    assert 100 < off < 200 and all(p["chosen"] == p["output"] != p["rejected"] for p in prefs)


def test_policy_preference_pairs_reject_the_policys_own_wrong_samples():
    cfg = jaxllm.load_config("gpt2-124m", ["model.num_layers=1", "model.d_model=32", "model.num_heads=2",
                                           "model.max_seq_len=64", "data.seq_len=64"])  # fmt: skip
    params = jaxllm.init_params(cfg, jax.random.key(0))  # random: every sample is wrong
    records = make_records(6, seed=1)
    pairs = policy_preference_records(cfg, params, load_tokenizer("byte"), records, samples=2, seed=0, batch=4)
    assert len(pairs) == 6
    for p, r in zip(pairs, records, strict=True):
        assert p["chosen"] == r["output"] and p["rejected"] != r["output"] and p["input"] == r["input"]
