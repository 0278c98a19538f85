"""Evaluation: rolling-window perplexity, multiple choice, and the CLI verbs, each checked
against a direct computation with the model's forward pass."""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest

from jaxllm.cli import main
from jaxllm.config import load_config
from jaxllm.data.tokenizer import ByteTokenizer
from jaxllm.errors import DataError
from jaxllm.evaluate import encode_pair, evaluate_mc, perplexity, read_mc, read_texts, rolling_rows
from jaxllm.evaluate.multiple_choice import MCExample
from jaxllm.model.api import forward, init_params
from jaxllm.train.load import write_run

MAX_LEN = 32


def tiny_config(**extra):
    overrides = {
        "model.vocab_size": 256, "model.max_seq_len": MAX_LEN, "model.d_model": 32, "model.num_layers": 2,
        "model.num_heads": 2, "model.dropout": 0.0, "model.init_std": 0.2, "data.seq_len": MAX_LEN,
        "tokenizer.path": "byte", **extra,
    }  # fmt: skip
    return load_config("shakespeare-char-cpu", [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory with random (but far from uniform) weights and the byte tokenizer."""
    cfg = tiny_config()
    params = init_params(cfg, jax.random.key(1))
    run_dir = write_run(cfg, params, tmp_path_factory.mktemp("eval") / "run")
    return cfg, params, run_dir


def direct_logprob(cfg, params, ids: list[int], first_scored: int) -> float:
    """log p(ids[first_scored:] | ids[:first_scored]) from one forward pass over the
    sequence, padded at the end to the full context (one compiled shape for every call;
    tests/test_model.py proves trailing padding leaves earlier logits alone)."""
    x = np.zeros((1, MAX_LEN), np.int32)
    x[0, : len(ids) - 1] = ids[:-1]
    logp = jax.nn.log_softmax(forward(cfg, params, x), axis=-1)[0]
    return float(sum(logp[t - 1, ids[t]] for t in range(first_scored, len(ids))))


@pytest.mark.parametrize("n", [1, 5, 31, 32, 33, 100])
@pytest.mark.parametrize("stride", [None, 8, 1])
def test_rolling_rows_score_every_token_once_with_context(n, stride):
    tokens = list(range(10, 10 + n))
    rows = rolling_rows(tokens, 0, MAX_LEN, stride)
    scored = np.concatenate([r.targets[r.mask] for r in rows])
    assert scored.tolist() == tokens  # each token once, in order
    seq = [0, *tokens]
    for k, r in enumerate(rows):
        assert 1 <= len(r.inputs) <= MAX_LEN
        begin = seq.index(int(r.inputs[0])) if r.inputs[0] != 0 else 0
        assert r.inputs.tolist() == seq[begin : begin + len(r.inputs)]
        assert r.targets.tolist() == seq[begin + 1 : begin + 1 + len(r.inputs)]
        if k > 0:  # later windows read a full context and score only their last `stride` targets
            assert len(r.inputs) == MAX_LEN
            assert int(np.argmax(r.mask)) >= MAX_LEN - (stride or MAX_LEN)


def test_rolling_stride_is_checked():
    with pytest.raises(ValueError, match="stride=40"):
        rolling_rows([1, 2, 3], 0, MAX_LEN, 40)


def test_perplexity_equals_full_context_when_text_fits(run):
    cfg, params, _ = run
    tok = ByteTokenizer()
    text = "To be, or not to be: that is"  # 28 bytes < 32
    ids = [tok.eos_id, *tok.encode(text).tolist()]
    want = -direct_logprob(cfg, params, ids, 1)
    for stride in (None, 4):  # the first window covers it all whatever the stride
        got = perplexity(cfg, params, tok, [text], stride=stride, batch_size=4)
        assert got.windows == 1 and got.tokens == len(text)
        np.testing.assert_allclose(got.nll, want, rtol=1e-5)
    assert got.perplexity == pytest.approx(math.exp(want / len(text)))
    assert got.bits_per_byte == pytest.approx(want / math.log(2) / len(text))


def test_long_documents_roll_and_bits_per_byte_counts_utf8(run):
    cfg, params, _ = run
    tok = ByteTokenizer()
    texts = ["Now is the winter of our discontent made glorious summer " * 3, "naïve café — ünïcödé"]
    disjoint = perplexity(cfg, params, tok, texts, batch_size=4)
    overlapping = perplexity(cfg, params, tok, texts, stride=8, batch_size=4)
    n_bytes = sum(len(t.encode()) for t in texts)
    assert disjoint.tokens == overlapping.tokens == n_bytes and disjoint.bytes == n_bytes
    assert overlapping.windows > disjoint.windows > 2
    # the last window of a document is the max_len tokens ending at its end, scored one by one
    doc = [tok.eos_id, *tok.encode(texts[0]).tolist()]
    rows = rolling_rows(doc[1:], tok.eos_id, MAX_LEN, None)
    want = sum(direct_logprob(cfg, params, [*r.inputs.tolist(), int(r.targets[-1])], int(np.argmax(r.mask)) + 1)
               for r in rows)  # fmt: skip
    np.testing.assert_allclose(disjoint.doc_logprobs[0], want, rtol=1e-5)
    assert disjoint.bits_per_byte == pytest.approx(disjoint.nll / math.log(2) / n_bytes)


def test_encode_pair_moves_trailing_space_and_adds_start():
    tok = ByteTokenizer()
    ctx, cont = encode_pair(tok, "Q: x ", "y")
    assert ctx == [tok.eos_id, *b"Q: x"] and cont == list(b" y")
    assert encode_pair(tok, "", "abc") == ([tok.eos_id], list(b"abc"))


def test_multiple_choice_scores_equal_direct_computation(run):
    cfg, params, _ = run
    tok = ByteTokenizer()
    examples = [
        MCExample("The cat sat on the", ("mat", "moon rising", "a"), 0),
        MCExample("One, two,", ("three", "seventeen"), 1),
        MCExample("ROMEO:", ("But soft", "What light", "Hark", "Ay me"), 2),
    ]
    result = evaluate_mc(cfg, params, tok, examples, batch_size=4)
    acc = acc_norm = 0
    for ex, lps in zip(examples, result.logprobs, strict=True):
        direct = []
        for choice in ex.choices:
            ctx = [tok.eos_id, *tok.encode(ex.context).tolist()]
            direct.append(direct_logprob(cfg, params, ctx + tok.encode(" " + choice).tolist(), len(ctx)))
        np.testing.assert_allclose(lps, direct, rtol=1e-5)
        acc += int(np.argmax(direct) == ex.label)
        acc_norm += int(np.argmax(np.array(direct) / [len(c) for c in ex.choices]) == ex.label)
    assert result.acc == acc / 3 and result.acc_norm == acc_norm / 3 and result.n == 3


def test_read_mc_hellaswag_and_generic_records(tmp_path):
    hs = {"activity_label": "Baking cookies", "ctx_a": "A woman mixes flour.", "ctx_b": "she",
          "endings": ["adds eggs [title] Step two.", "jumps", "sleeps", "sings"], "label": "0"}  # fmt: skip
    path = tmp_path / "mc.jsonl"
    path.write_text(json.dumps(hs) + "\n" + json.dumps({"context": "2+2=", "choices": ["4", "5"], "label": 0}) + "\n")
    a, b = read_mc(path)
    assert a.context == "Baking cookies: A woman mixes flour. She" and a.label == 0
    assert a.choices[0] == "adds eggs. Step two."
    assert b.context == "2+2=" and b.choices == ("4", "5")
    path.write_text(json.dumps({"context": "x", "choices": ["a", "b"], "label": 2}) + "\n")
    with pytest.raises(DataError, match="record 0: label 2"):
        read_mc(path)


def test_read_texts_formats(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n')
    assert read_texts(tmp_path / "a.txt") == ["alpha"]
    assert read_texts(tmp_path / "b.jsonl") == ["one", "two"]
    with pytest.raises(DataError, match="no string field 'body'"):
        read_texts(tmp_path / "b.jsonl", field="body")


def test_eval_cli_prints_and_writes_the_library_figures(run, tmp_path, capsys):
    cfg, params, run_dir = run
    text = tmp_path / "doc.txt"
    text.write_text("Now is the winter of our discontent, made glorious summer by this sun of York.")
    out = tmp_path / "ppl.json"
    assert main(["eval", "perplexity", str(run_dir), "--data", str(text), "--stride", "16", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    want = perplexity(cfg, params, ByteTokenizer(), [text.read_text()], stride=16)
    assert figures["bits_per_byte"] == pytest.approx(want.bits_per_byte, rel=1e-6)
    assert "perplexity" in capsys.readouterr().out
    mc = tmp_path / "mc.jsonl"
    mc.write_text(json.dumps({"context": "One, two,", "choices": ["three", "four"], "label": 0}) + "\n")
    out = tmp_path / "mc.json"
    assert main(["eval", "mc", str(run_dir), "--data", str(mc), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["n"] == 1
    assert main(["eval", "mc", str(run_dir), "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
