"""Cloze multiple choice cut from held-out text: the true ending is one of the choices,
the others are other lines' endings, and `jaxllm eval mc` reads the records."""

from __future__ import annotations

import json

import pytest

from jaxllm.cli import main
from jaxllm.evaluate.cloze import candidate_lines, cut, make_cloze
from jaxllm.evaluate.multiple_choice import read_mc
from tests.data_paths import TINY


def test_every_record_hides_its_line_among_other_lines_endings():
    text = TINY.read_text(encoding="utf-8")[-50_000:]
    lines = set(candidate_lines(text))
    endings = {cut(line)[1] for line in lines}
    records = make_cloze(text, 200, choices=4, seed=3)
    assert len(records) == 200 and records == make_cloze(text, 200, choices=4, seed=3)
    assert len({r["context"] for r in records}) > 150  # distinct lines, not one repeated
    labels = [r["label"] for r in records]
    assert set(labels) == {0, 1, 2, 3}
    for r in records:
        assert len(r["choices"]) == 4 == len(set(r["choices"]))
        assert f"{r['context']} {r['choices'][r['label']]}" in lines
        assert all(choice in endings for choice in r["choices"])
        assert not r["context"].endswith(" ") and not any(c.startswith(" ") for c in r["choices"])


def test_too_little_text_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="usable lines"):
        make_cloze("a short line\nanother one\n", 5)
    small = tmp_path / "small.txt"
    small.write_text("Now is the winter of our discontent\n")
    assert main(["data", "synthetic", "cloze", "--file", str(small), "--n", "10", "--out", str(tmp_path / "x")]) == 2
    assert "usable lines" in capsys.readouterr().err
    assert main(["data", "synthetic", "cloze", "--file", str(TINY), "--tail", "0", "--n", "5", "--out",
                 str(tmp_path / "x")]) == 2  # fmt: skip
    assert "--tail 0.0: give the fraction of the file to use, in (0, 1]" in capsys.readouterr().err


def test_cli_writes_records_that_eval_mc_reads(tmp_path):
    out = tmp_path / "mc.jsonl"
    assert main(["data", "synthetic", "cloze", "--file", str(TINY), "--tail", "0.1", "--n", "50", "--seed", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    records = [json.loads(line) for line in out.read_text().splitlines()]
    tail = TINY.read_text(encoding="utf-8")
    tail_lines = set(candidate_lines(tail[int(len(tail) * 0.9) :]))
    assert all(f"{r['context']} {r['choices'][r['label']]}" in tail_lines for r in records)
    examples = read_mc(str(out))
    assert [e.label for e in examples] == [r["label"] for r in records]
    assert [list(e.choices) for e in examples] == [r["choices"] for r in records]


def test_shuffled_distractors_hold_the_same_words_in_another_order():
    text = TINY.read_text(encoding="utf-8")[-50_000:]
    lines = set(candidate_lines(text))
    records = make_cloze(text, 100, choices=4, seed=1, distractors="shuffled")
    for r in records:
        true = r["choices"][r["label"]]
        assert f"{r['context']} {true}" in lines and len(set(r["choices"])) == 4
        assert all(sorted(c.split()) == sorted(true.split()) for c in r["choices"])
    with pytest.raises(ValueError, match="distractors='words'"):
        make_cloze(text, 5, distractors="words")
