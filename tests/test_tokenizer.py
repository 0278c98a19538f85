"""Tokenizers: exact round trips, byte fallback, special ids, and the complete works."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import jaxllm
from jaxllm.cli import main
from jaxllm.config import TokenizerConfig
from jaxllm.data.clean import clean_text
from jaxllm.data.loader import DocumentStore
from jaxllm.data.prepare import prepare
from jaxllm.data.tokenizer import (
    ByteTokenizer,
    SentencePieceTokenizer,
    TokenizerError,
    load_tokenizer,
    train_sentencepiece,
)
from tests.data_paths import TINY, WORKS

QUIET = {"log": lambda _: None}

UNICODE = "naïve café — 日本語 🙂\ttabs  two spaces\n\nblank line\r\n"


@pytest.fixture(scope="module")
def works_bpe(tmp_path_factory):
    """A BPE tokenizer trained on the complete works (42 files, ~5 MB)."""
    out = tmp_path_factory.mktemp("tok") / "works-bpe.model"
    docs = (clean_text(p.read_text(encoding="utf-8")) for p in WORKS)
    return train_sentencepiece(
        docs, TokenizerConfig(path=str(out), kind="bpe", vocab_size=4000), out, log=lambda _: None
    )


def test_complete_works_prepared_and_every_file_round_trips(works_bpe, tmp_path):
    assert len(WORKS) == 42
    assert works_bpe.vocab_size == 4000
    for path in WORKS:  # the raw files, exactly
        text = path.read_text(encoding="utf-8")
        ids = works_bpe.encode(text)
        assert len(ids) < len(text) / 2.5, "BPE should compress English well below bytes"
        assert works_bpe.decode(ids) == text, path.name
    # ...and the prepared shards hold exactly the cleaned documents.
    cfg = jaxllm.load_config(
        "shakespeare-char",
        [f"tokenizer.path={works_bpe.path}", f"data.inputs=[{WORKS[0].parent}/*.txt]", f"data.path={tmp_path}/works",
         "data.val_fraction=0.1", "data.split=document", "model.vocab_size=4000"],
    )  # fmt: skip
    prepare(cfg, log=lambda _: None)
    decoded = set()
    for split in ("train", "val"):
        store = DocumentStore(cfg.data.path, split, verify=True)
        decoded |= {works_bpe.decode(store.tokens(d, 0, int(store.lengths[d]))) for d in range(len(store))}
    assert decoded == {clean_text(p.read_text(encoding="utf-8")) for p in WORKS}


def _assert_chat_markers_are_single_pieces(tok):
    text = "<|user|>\nadd 2+2<|end|>\n<|assistant|>\n4<|end|>\n"
    ids = tok.encode(text).tolist()
    markers = [tok.encode(m).tolist() for m in TokenizerConfig().special_tokens]
    assert all(len(m) == 1 for m in markers), markers
    assert ids.count(markers[1][0]) == 1 and ids.count(markers[3][0]) == 2
    assert tok.decode(ids) == text


def test_special_ids_and_byte_fallback(works_bpe):
    _assert_chat_markers_are_single_pieces(works_bpe)
    assert (works_bpe.bos_id, works_bpe.eos_id, works_bpe.pad_id) == (1, 2, 3)
    ids = works_bpe.encode("日本語 🙂 Ω")  # characters Shakespeare never wrote
    assert 0 not in ids.tolist(), "byte fallback: nothing maps to <unk> (id 0)"
    assert works_bpe.decode(ids) == "日本語 🙂 Ω"
    assert works_bpe.decode(works_bpe.encode(UNICODE)) == UNICODE


@pytest.mark.parametrize("kind,vocab", [("unigram", 800), ("char", 400)])
def test_unigram_and_char_models_round_trip(kind, vocab, tmp_path):
    text = TINY.read_text(encoding="utf-8")[:200_000]
    out = tmp_path / f"{kind}.model"
    tok = train_sentencepiece([text], TokenizerConfig(kind=kind, vocab_size=vocab), out, log=lambda _: None)
    if kind == "char":  # one piece per character seen (+ 256 byte pieces + 4 specials + 4 chat markers), not 400
        assert tok.vocab_size == 264 + len(set(text) - {"\n"})
    assert tok.decode(tok.encode(text)) == text
    _assert_chat_markers_are_single_pieces(tok)
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    assert load_tokenizer(str(out)).identity == tok.identity


def test_byte_tokenizer():
    tok = load_tokenizer("byte")
    assert isinstance(tok, ByteTokenizer) and tok.vocab_size == 256 and tok.eos_id == 0 and tok.bos_id is None
    ids = tok.encode(UNICODE)
    assert ids.max() < 256 and len(ids) == len(UNICODE.encode("utf-8"))
    assert tok.decode(ids) == UNICODE


def test_vocab_too_small_for_byte_fallback_is_a_config_error():
    with pytest.raises(jaxllm.ConfigError, match="tokenizer.vocab_size=200"):
        jaxllm.load_config("shakespeare-char", ["tokenizer.vocab_size=200"])


def test_bad_tokenizer_files_are_clear_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.model"))
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"not a model")
    with pytest.raises(TokenizerError, match="not a sentencepiece model"):
        SentencePieceTokenizer(junk)
    with pytest.raises(TokenizerError, match="no text"):
        train_sentencepiece([""], TokenizerConfig(), tmp_path / "x.model", log=lambda _: None)
    assert not (tmp_path / "x.model").exists()


def test_cli_train_encode_decode(tmp_path, capsys):
    model = tmp_path / "cli.model"
    args = ["tokenizer", "train", "shakespeare-char", f"tokenizer.path={model}", "tokenizer.vocab_size=500",
            f"data.inputs=[{TINY}]"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    assert main(["tokenizer", "encode", "--tokenizer", str(model), "To be, or not to be"]) == 0
    ids = capsys.readouterr().out.split()
    assert all(i.isdigit() for i in ids) and 0 < len(ids) < 19
    assert main(["tokenizer", "decode", "--tokenizer", str(model), *ids]) == 0
    assert capsys.readouterr().out == "To be, or not to be"
    assert main(["tokenizer", "train", "shakespeare-char"]) == 2  # tokenizer.path=byte: nothing to train
    assert "needs no training" in capsys.readouterr().err


def test_vocab_size_is_recorded_and_fits_uint16(works_bpe):
    ids = works_bpe.encode(WORKS[0].read_text(encoding="utf-8"))
    assert ids.dtype == np.int32 and ids.max() < works_bpe.vocab_size
    assert dataclasses.replace(TokenizerConfig(), vocab_size=50257).vocab_size == 50257


def test_lines_longer_than_max_sentence_length_name_the_setting_and_the_fix(tmp_path):
    cfg = TokenizerConfig(kind="char", vocab_size=300, max_sentence_length=1000)
    with pytest.raises(
        TokenizerError,
        match=r"2 of the 2 non-empty lines .* longer than tokenizer.max_sentence_length"
        r"=1000 bytes \(the longest has 5,000\).*max_sentence_length=5000 or more",
    ):
        train_sentencepiece(["ab" * 2500, "cd" * 1000], cfg, tmp_path / "t.model", **QUIET)
    assert not (tmp_path / "t.model").exists()


def test_training_on_random_bytes_warns_that_the_input_is_not_text(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    cfg = TokenizerConfig(kind="char", vocab_size=300)
    for doc, binary in ((noise.decode("utf-8", errors="replace"), True), (TINY.read_text()[:50_000], False)):
        lines: list[str] = []
        train_sentencepiece([clean_text(doc)], cfg, tmp_path / "t.model", log=lines.append)
        warned = [ln for ln in lines if "does not look like text" in ln]
        assert len(warned) == binary and all("U+FFFD" in ln and "data.inputs" in ln for ln in warned)


def test_decoding_an_id_outside_the_vocabulary_names_it(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from jaxllm.data.bpe import train_bpe

    text = TINY.read_text()[:20_000]
    train_bpe(text[:3000], 20).save(tmp_path / "bpe.json")
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer, hf.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    hf.train_from_iterator([text], trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))  # fmt: skip
    hf.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    toks = [
        load_tokenizer("byte"),
        train_sentencepiece([text], TokenizerConfig(kind="char", vocab_size=300), tmp_path / "c.model", **QUIET),
        load_tokenizer(str(tmp_path / "bpe.json")),
        load_tokenizer(str(tmp_path / "tokenizer.json")),
    ]
    for tok in toks:
        ids = tok.encode("To be, or not")
        assert tok.decode(ids) == "To be, or not" and tok.decode(np.asarray(ids)) == "To be, or not"
        for bad in (tok.vocab_size, tok.vocab_size + 44, -1):
            with pytest.raises(
                TokenizerError,
                match=f"cannot decode token id {bad}: this tokenizer has "
                f"{tok.vocab_size} ids \\(0..{tok.vocab_size - 1}\\)",
            ):
                tok.decode([*ids, bad])
