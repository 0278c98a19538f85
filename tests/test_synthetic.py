"""The checkable synthetic tasks behind the post-training benchmarks: right answers,
wrong answers that are really wrong, and preference pairs from a policy's own samples."""

from __future__ import annotations

import json

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


def test_data_synthetic_cli_writes_records_and_keeps_held_out_prompts_out(tmp_path, capsys):
    from jaxllm.cli import main

    held = tmp_path / "held.jsonl"
    assert main(["data", "synthetic", "instructions", "--n", "60", "--seed", "2", "--out", str(held)]) == 0
    held_records = [json.loads(line) for line in held.read_text().splitlines()]
    assert held_records == make_records(60, seed=2)
    train = tmp_path / "train.jsonl"
    assert main(["data", "synthetic", "preferences", "--n", "500", "--seed", "2", "--off-task", "0.3",
                 "--exclude", str(held), "--out", str(train)]) == 0  # fmt: skip
    records = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(records) == 500 and all(r["chosen"] == r["output"] != r["rejected"] for r in records)
    prompts = {(r["instruction"], r["input"]) for r in records}
    assert not prompts & {(r["instruction"], r["input"]) for r in held_records}
    assert "wrote 500 preferences records" in capsys.readouterr().out
    assert main(["data", "synthetic", "instructions", "--n", "5", "--kinds", "divide", "--out", str(train)]) == 2
    assert "--kinds divide: unknown; choose from reverse, add, upper" in capsys.readouterr().err


def test_eval_exact_match_cli_grades_greedy_replies(tmp_path, capsys):
    from jaxllm.cli import main
    from jaxllm.posttrain.synthetic import exact_match
    from jaxllm.train.load import load_run

    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_records(48, seed=0)))
    run = tmp_path / "sft"
    small = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "data.seq_len=64", "train.batch_size=8",
             "train.steps=2", "train.eval_every=2", "train.tensorboard=false", f"posttrain.data={data}",
             f"data.path={tmp_path}/none", f"train.out_dir={run}", "tokenizer.path=byte", "model.vocab_size=256"]
    assert main(["sft", "shakespeare-char", *small]) == 0
    capsys.readouterr()
    assert main(["eval", "exact-match", str(run), "--data", str(data), "--limit", "12", "--out",
                 str(tmp_path / "em.json")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    cfg, params, _ = load_run(run)
    direct = exact_match(cfg, params, load_tokenizer("byte"), make_records(12, seed=0))
    figures = json.loads((tmp_path / "em.json").read_text())
    assert figures["records"] == 12 and {k: figures[k] for k in direct} == direct
    assert f"# exact-match of {run}" in printed
    alpaca = tmp_path / "no-output.jsonl"
    alpaca.write_text(json.dumps({"instruction": "hi", "input": ""}) + "\n")
    assert main(["eval", "exact-match", str(run), "--data", str(alpaca)]) == 2
    assert "record 0 has no string 'output'" in capsys.readouterr().err
