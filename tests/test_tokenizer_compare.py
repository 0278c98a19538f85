"""`jaxllm tokenizer compare`: scratch BPE vs sentencepiece BPE on real text, the table, the files, bad input."""

import json

import pytest

from jaxllm.cli import main
from jaxllm.data.bpe import BPEModel, train_bpe
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.data.tokenizer_compare import BASELINE, compare, format_table, split_text
from jaxllm.errors import DataError
from tests.data_paths import TINY

SIZES = (512, 1024)


@pytest.fixture(scope="module")
def text() -> str:
    """The first 80 KB of tinyshakespeare: enough text for 768 merges, trained in well under a second."""
    return TINY.read_text(encoding="utf-8")[:80_000]


@pytest.fixture(scope="module")
def saved(tmp_path_factory, text):
    out_dir = tmp_path_factory.mktemp("tokenizers")
    return compare(text, SIZES, heldout=0.1, out_dir=out_dir), out_dir


@pytest.fixture(scope="module")
def rows(saved):
    return saved[0]


def _by_impl(rows, impl):
    return sorted((row for row in rows if row.impl == impl), key=lambda row: row.vocab_size)


def test_split_holds_out_the_end(text):
    train, held = split_text(text, 0.1)
    assert train + held == text
    assert len(held) == len(text) - round(len(text) * 0.9)


def test_one_row_per_impl_and_size_after_the_byte_baseline(rows):
    assert [(row.impl, row.vocab_size) for row in rows] == [
        (BASELINE, 256),
        ("scratch", 512),
        ("sentencepiece", 512),
        ("scratch", 1024),
        ("sentencepiece", 1024),
    ]


def test_byte_baseline_is_one_byte_per_token(rows, text):
    baseline = rows[0]
    _, held = split_text(text, 0.1)
    assert baseline.heldout_bytes_per_token == baseline.train_bytes_per_token == 1.0
    assert baseline.heldout_tokens == len(held.encode("utf-8"))
    assert baseline.round_trip_ok


@pytest.mark.parametrize("impl", ["scratch", "sentencepiece"])
def test_compression_beats_bytes_and_grows_with_vocab_size(rows, text, impl):
    _, held = split_text(text, 0.1)
    measured = _by_impl(rows, impl)
    assert [row.vocab_size for row in measured] == list(SIZES)
    for row in measured:
        assert row.heldout_bytes_per_token > 1.0
        assert row.train_bytes_per_token > 1.0
        assert row.heldout_bytes_per_token == pytest.approx(len(held.encode("utf-8")) / row.heldout_tokens)
    for smaller, larger in zip(measured, measured[1:], strict=False):
        assert larger.heldout_bytes_per_token > smaller.heldout_bytes_per_token
        assert larger.train_bytes_per_token > smaller.train_bytes_per_token
        assert larger.learned > smaller.learned


def test_every_tokenizer_round_trips_the_held_out_text(rows):
    assert all(row.round_trip_ok for row in rows)
    assert all(row.encode_mb_per_s > 0 for row in rows)


def test_scratch_token_count_matches_train_bpe_directly(rows, text):
    train, held = split_text(text, 0.1)
    for row in _by_impl(rows, "scratch"):
        model = train_bpe(train, row.vocab_size - 256)
        assert row.heldout_tokens == len(model.encode(held))
        assert row.learned == len(model.merges) == row.vocab_size - 256


def test_sentencepiece_vocab_counts_bytes_specials_and_characters(rows, text):
    train, _ = split_text(text, 0.1)
    for row in _by_impl(rows, "sentencepiece"):
        assert row.actual_vocab_size == row.vocab_size
        assert (row.byte_pieces, row.special_pieces, row.char_pieces) == (256, 8, len(set(train) - {"\n"}))
        assert row.learned == row.vocab_size - 256 - 8 - row.char_pieces
    table = format_table(rows)
    assert "sentencepiece's vocab counts 256 byte-fallback pieces, 8 special pieces" in table


def test_out_dir_holds_loadable_tokenizers(saved, text):
    rows, out_dir = saved
    _, held = split_text(text, 0.1)
    for size in SIZES:
        sp = load_tokenizer(str(out_dir / f"sp-{size}.model"))  # what `viz tokens --tokenizer` calls
        assert sp.vocab_size == size
        sp_row = next(row for row in rows if row.impl == "sentencepiece" and row.vocab_size == size)
        assert len(sp.encode(held)) == sp_row.heldout_tokens
        assert sp_row.model_path == str(out_dir / f"sp-{size}.model")
        scratch = BPEModel.load(out_dir / f"scratch-{size}.json")
        assert scratch.vocab_size == size
        assert scratch.decode(scratch.encode(held)) == held
        as_tokenizer = load_tokenizer(str(out_dir / f"scratch-{size}.json"))  # a tokenizer.path, like sp-V.model
        assert type(as_tokenizer).__name__ == "ScratchBPETokenizer" and as_tokenizer.vocab_size == size
        assert as_tokenizer.encode(held).tolist() == scratch.encode(held) and as_tokenizer.decode(
            as_tokenizer.encode(held)) == held  # fmt: skip
        assert as_tokenizer.eos_id == 0 and as_tokenizer.identity.startswith("jaxllm-bpe:")


def test_a_json_that_is_not_a_scratch_bpe_still_goes_to_the_hf_loader(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"version": "1.0", "model": {}}')
    with pytest.raises(Exception, match="Hugging Face"):
        load_tokenizer(str(bad))
    broken = tmp_path / "scratch.json"
    broken.write_text('{"type": "jaxllm-bpe", "merges": [[1, 999]]}')
    with pytest.raises(DataError, match="only ids 0..255 exist"):
        load_tokenizer(str(broken))


def test_scratch_only_needs_no_sentencepiece_minimum(text):
    rows = compare(text[:20_000], [300], impls=["scratch"], heldout=0.2)
    assert [(row.impl, row.actual_vocab_size) for row in rows] == [(BASELINE, 256), ("scratch", 300)]


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_table_and_writes_json_and_models(capsys, tmp_path, text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text[:40_000], encoding="utf-8")
    out_dir, out_json = tmp_path / "toks", tmp_path / "rows.json"
    code, out, err = _run(capsys, "tokenizer", "compare", "--file", str(corpus), "--vocab-sizes", "1024", "512",
                          "--heldout", "0.25", "--out-dir", str(out_dir), "--json", str(out_json))  # fmt: skip
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == (
        "corpus.txt: 40,000 bytes; trained on the first 75% (30,000 bytes), measured on the last 25% (10,000 bytes)"
    )
    assert lines[2].startswith("| impl | vocab | learned | train s | train B/tok | held-out B/tok |")
    table_rows = [line for line in lines if line.startswith("| ")][1:]
    assert [line.split(" | ")[0:2] for line in table_rows] == [
        ["| bytes", "256"],
        ["| scratch", "512"],
        ["| sentencepiece", "512"],
        ["| scratch", "1024"],
        ["| sentencepiece", "1024"],
    ]
    assert all(line.endswith("| ok |") for line in table_rows)
    assert "training scratch BPE, vocab 512" in err  # progress goes to stderr
    saved = json.loads(out_json.read_text())
    assert [(row["impl"], row["vocab_size"]) for row in saved] == [(BASELINE, 256), ("scratch", 512),
                                                                   ("sentencepiece", 512), ("scratch", 1024),
                                                                   ("sentencepiece", 1024)]  # fmt: skip
    assert all(row["round_trip_ok"] for row in saved)
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "scratch-1024.json",
        "scratch-512.json",
        "sp-1024.model",
        "sp-512.model",
    ]


def test_cli_impl_selects_one_implementation(capsys, tmp_path, text):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text[:20_000], encoding="utf-8")
    code, out, _ = _run(capsys, "tokenizer", "compare", "--file", str(corpus), "--vocab-sizes", "400",
                        "--impl", "sentencepiece")  # fmt: skip
    assert code == 0
    assert "| sentencepiece | 400 |" in out
    assert "| scratch |" not in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--file", "{missing}", "--vocab-sizes", "512"], "no such file"),
        (["--file", "{empty}", "--vocab-sizes", "512"], "the file is empty"),
        (
            ["--file", "{corpus}", "--vocab-sizes", "512", "256"],
            "--vocab-sizes 256: a byte-level BPE needs at least 257",
        ),
        (["--file", "{corpus}", "--vocab-sizes", "300"], "--vocab-sizes 300: sentencepiece needs more than"),
        (["--file", "{corpus}", "--vocab-sizes", "512", "--heldout", "0"], "--heldout 0.0: must be a fraction"),
        (["--file", "{corpus}", "--vocab-sizes", "512", "--heldout", "1.5"], "--heldout 1.5: must be a fraction"),
        (["--file", "{corpus}", "--vocab-sizes", "512", "--out-dir", "{corpus}"], "is not a directory"),
    ],
)
def test_cli_bad_input_exits_2_naming_the_value(capsys, tmp_path, text, argv, message):
    corpus, empty = tmp_path / "corpus.txt", tmp_path / "empty.txt"
    corpus.write_text(text[:5_000], encoding="utf-8")
    empty.write_text("", encoding="utf-8")
    paths = {"missing": tmp_path / "nope.txt", "empty": empty, "corpus": corpus}
    code, out, err = _run(capsys, "tokenizer", "compare", *(arg.format(**paths) for arg in argv))
    assert code == 2
    assert err.startswith("jaxllm: error: ") and message in err
    assert len(err.strip().splitlines()) == 1
    assert out == ""


def test_sentencepiece_minimum_names_the_size_to_use(text):
    train, _ = split_text(text, 0.1)
    needed = 256 + 8 + len(set(train) - {"\n"})
    with pytest.raises(DataError, match=f"give at least {needed + 1}, or leave it out with --impl scratch"):
        compare(text, [needed], heldout=0.1)
    rows = compare(text, [needed + 1], impls=["sentencepiece"], heldout=0.1)  # the smallest size it accepts
    assert rows[-1].learned == 1


def test_library_rejects_empty_text_and_unknown_impls():
    with pytest.raises(DataError, match="the text is empty"):
        compare("", [512])
    with pytest.raises(DataError, match="--impl wordpiece: choose from scratch, sentencepiece"):
        compare("some text " * 100, [512], impls=["wordpiece"])
    with pytest.raises(DataError, match="--vocab-sizes is empty"):
        compare("some text " * 100, [])
