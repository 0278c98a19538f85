"""The from-scratch byte-level BPE: fast trainer == reference, hand-computed merges, round trips, files."""

import json
import random
from pathlib import Path

import pytest

from jaxllm.data.bpe import BPEModel, merge_pair, pretokenize, reference_train_bpe, train_bpe

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
SHAKESPEARE = DATA_DIR / "tinyshakespeare.txt"

# Byte ids used in the hand-computed examples below.
SPACE, A, B, C, D = 32, 97, 98, 99, 100

HAND_WRITTEN_TEXTS = {
    "ties": "ab ab cd cd ba ba dc dc",
    "overlapping_run": "aaaaaaa",
    "overlapping_runs_in_words": "aaa aaaa aaaaa aa a aaa aaaa baaab",
    "unicode_accents": "café café cafés résumé résumé naïve é é",
    "unicode_cjk": "日本語 日本語のテキスト 日本 日本語 本日",
    "unicode_emoji": "🙂🙂🙂 hi 🙂 hi🙂 🎉🎉 🙂🎉 hi hi",
    "punctuation_digits_whitespace": "x = 1000 + 2000;\n\n\ty = 1000 -- 2000!!  \n__init__ __init__",
    "mixed": "The the THE, théâtre 2024 2024... 日本 🙂 aaa aaa the",
}


@pytest.fixture(scope="module")
def shakespeare() -> str:
    return SHAKESPEARE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def shakespeare_model(shakespeare) -> BPEModel:
    return train_bpe(shakespeare[:20_000], 200)


# --- pre-tokenization and the merge step ---------------------------------------------


def test_pretokenize_splits_words_and_keeps_every_character():
    text = "Hello, world!  42 times\n\tok_x  \n"
    assert pretokenize(text) == ["Hello", ",", " world", "!", " ", " 42", " times", "\n", "\t", "ok", "_", "x", "  \n"]
    for text in [*HAND_WRITTEN_TEXTS.values(), "", " ", "   ", "\n\n\n", "a  b   c\t\td", " \u00a0x\u2003y"]:
        assert "".join(pretokenize(text)) == text


def test_merge_pair_is_left_to_right_and_non_overlapping():
    assert merge_pair([A, A, A], (A, A), 256) == [256, A]
    assert merge_pair([A, A, A, A], (A, A), 256) == [256, 256]
    assert merge_pair([A, B, A, B, B], (A, B), 300) == [300, 300, B]
    assert merge_pair([B, A], (A, B), 300) == [B, A]
    assert merge_pair([], (A, B), 300) == []


# --- hand-computed merges --------------------------------------------------------------


def test_hand_computed_merges_single_word():
    # "aaabdaaabac" is one word. Pairs (overlapping ones counted at every position):
    #   (a,a) x4, (a,b) x2, (b,d) (d,a) (b,a) (a,c) x1   -> merge 0: (97, 97) -> 256
    # ids: [256, a, b, d, 256, a, b, a, c]
    #   (256,a) x2, (a,b) x2, the rest x1 -> tie at 2, smallest pair wins -> merge 1: (97, 98) -> 257
    # ids: [256, 257, d, 256, 257, a, c]
    #   (256,257) x2, the rest x1         -> merge 2: (256, 257) -> 258
    # ids: [258, d, 258, a, c]: every pair occurs once -> stop early (best count < 2).
    model = train_bpe("aaabdaaabac", 10)
    assert model.merges == [(A, A), (A, B), (256, 257)]
    assert model.vocab_size == 259
    assert model.encode("aaabdaaabac") == [258, D, 258, A, C]
    assert model.token_bytes(258) == b"aaab"


def test_hand_computed_merges_with_word_frequencies_and_ties():
    # Words: "ab" x1, " ab" x1, " cd" x2. Pair counts weighted by word frequency:
    #   (a,b) 2, (sp,a) 1, (sp,c) 2, (c,d) 2 -> three-way tie at 2 -> smallest: (32, 99) -> 256
    # Words: [a,b], [sp,a,b], [256,d] x2:
    #   (a,b) 2, (sp,a) 1, (256,d) 2         -> tie -> (97, 98) -> 257
    # Words: [257], [sp,257], [256,d] x2:
    #   (sp,257) 1, (256,d) 2                -> (256, 100) -> 258, then only (sp,257) x1 -> stop.
    model = train_bpe("ab ab cd cd", 10)
    assert model.merges == [(SPACE, C), (A, B), (256, D)]
    assert model.encode("ab ab cd cd") == [257, SPACE, 257, 258, 258]


def test_hand_computed_merges_never_cross_word_boundaries():
    # "a a a a" -> words "a", " a", " a", " a". The text contains "a " three times, but
    # (97, 32) spans two words and is never counted: only (32, 97) x3 is.
    assert train_bpe("a a a a", 10).merges == [(SPACE, A)]


def test_hand_computed_merges_unicode_and_overlaps():
    # "é" is the two bytes C3 A9 = (195, 169). Words "é", " é", " é":
    #   (195,169) 3, (32,195) 2 -> (195, 169) -> 256; then (32,256) 2 -> 257; then no pairs.
    assert train_bpe("é é é", 10).merges == [(195, 169), (SPACE, 256)]
    # Seven a's: (a,a) x6 -> 256, ids [256,256,256,a]; (256,256) x2 -> 257, ids [257,256,a]; stop.
    assert train_bpe("aaaaaaa", 10).merges == [(A, A), (256, 256)]
    # Overlapping pairs count at every position: "aaa" holds (a,a) twice, so it is merged
    # (once - the result is [256, a]) even though only one non-overlapping occurrence exists.
    assert train_bpe("aaa", 10).merges == [(A, A)]
    assert train_bpe("aaa", 10).encode("aaa") == [256, A]


def test_stops_early_and_handles_degenerate_inputs():
    assert train_bpe("abc", 10).merges == []  # every pair occurs once
    assert train_bpe("", 10).merges == []
    assert train_bpe("a b c", 10).merges == []  # no pair occurs twice
    assert train_bpe("abab abab", 0).merges == []
    assert train_bpe("abab abab", 1).merges == [(A, B)]
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="num_merges"):
            train_bpe("abc", bad)
        with pytest.raises(ValueError, match="num_merges"):
            reference_train_bpe("abc", bad)


# --- fast trainer == reference ---------------------------------------------------------


def test_fast_trainer_matches_reference_on_shakespeare(shakespeare):
    text = shakespeare[:20_000]
    reference = reference_train_bpe(text, 200)
    assert len(reference) == 200
    assert train_bpe(text, 200).merges == reference


@pytest.mark.parametrize("name", sorted(HAND_WRITTEN_TEXTS))
def test_fast_trainer_matches_reference_on_hand_written_texts(name):
    text = HAND_WRITTEN_TEXTS[name]
    reference = reference_train_bpe(text, 50)
    assert reference, "each hand-written text should produce at least one merge"
    assert train_bpe(text, 50).merges == reference


def test_fast_trainer_matches_reference_on_random_texts():
    # Small alphabets make long repeated runs, many ties and overlapping pairs.
    alphabet = ["a", "a", "a", "b", "b", "c", " ", " ", "é", "日", "🙂", "\n", "1", "."]
    rng = random.Random(1234)
    for _ in range(40):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 400)))
        assert train_bpe(text, 60).merges == reference_train_bpe(text, 60), repr(text)


def test_merged_tokens_stay_inside_one_word(shakespeare_model):
    for token_id in range(256, shakespeare_model.vocab_size):
        token_text = shakespeare_model.token_bytes(token_id).decode("utf-8")
        assert len(pretokenize(token_text)) == 1, token_text


def test_progress_prints_each_merge(capsys):
    train_bpe("aaabdaaabac", 10, progress=True)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("merge 1/10: (97, 97) -> 256 b'aa'")


# --- encode / decode -------------------------------------------------------------------


def test_encode_applies_the_earliest_learned_merge_first():
    # In "abc" both (a,b) and (b,c) are mergeable but overlap; the lower rank wins.
    assert BPEModel([(A, B), (B, C)]).encode("abc") == [256, C]
    assert BPEModel([(B, C), (A, B)]).encode("abc") == [A, 256]
    # Merges build on each other inside a word, and never across words.
    model = BPEModel([(A, B), (256, C), (SPACE, 257)])
    assert model.encode("abc abc ab") == [257, 258, SPACE, 256]
    assert model.encode("abcabc") == [257, 257]


def test_round_trip_on_all_of_shakespeare_and_compression(shakespeare, shakespeare_model):
    ids = shakespeare_model.encode(shakespeare)
    assert shakespeare_model.decode(ids) == shakespeare
    assert all(0 <= token_id < shakespeare_model.vocab_size for token_id in ids)
    num_bytes = len(shakespeare.encode("utf-8"))
    assert len(ids) < 0.7 * num_bytes  # 200 merges learned on 20 KB give ~1.76 bytes per token
    assert shakespeare_model.encode("") == []


def test_round_trip_on_unicode_text(shakespeare_model):
    unicode_text = "".join(HAND_WRITTEN_TEXTS.values()) + "\u00a0Ωmega\u200b\ufeff 𝔘𝔫𝔦 \r\n\x00"
    unicode_model = train_bpe(unicode_text, 100)
    no_merges = BPEModel([])
    for model in (unicode_model, shakespeare_model, no_merges):
        assert model.decode(model.encode(unicode_text)) == unicode_text
    assert no_merges.encode("日") == list("日".encode())
    assert len(unicode_model.encode(unicode_text)) < len(unicode_text.encode("utf-8"))
    # Multi-byte characters and whole non-Latin words become single tokens.
    assert [unicode_model.token_bytes(i).decode() for i in unicode_model.encode(" 日本語🙂")] == [" 日本語", "🙂"]


def test_decode_replaces_invalid_utf8_and_rejects_bad_ids():
    model = BPEModel([])
    assert model.decode([0xE6, 0x97]) == "\ufffd"  # the first two of the three bytes of 日
    assert model.decode([]) == ""
    for bad in (-1, 256):
        with pytest.raises(ValueError, match="out of range"):
            model.decode([bad])


def test_model_rejects_invalid_merges():
    with pytest.raises(ValueError, match="only ids 0..255 exist"):
        BPEModel([(256, A)])
    with pytest.raises(ValueError, match="appears more than once"):
        BPEModel([(A, B), (A, B)])
    with pytest.raises(ValueError, match="pair"):
        BPEModel([(A, B, C)])


# --- files -----------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, shakespeare_model):
    path = tmp_path / "bpe.json"
    shakespeare_model.save(path)
    assert json.loads(path.read_text())["type"] == "jaxllm-bpe"
    loaded = BPEModel.load(path)
    assert loaded == shakespeare_model
    assert loaded.vocab_size == 456
    text = "To be, or not to be: that is the question. 日本 🙂"
    assert loaded.encode(text) == shakespeare_model.encode(text)


@pytest.mark.parametrize(
    "content, problem",
    [
        ("{not json", "cannot read"),
        ('["jaxllm-bpe"]', "not a BPE model file"),
        ('{"type": "sentencepiece", "merges": []}', "not a BPE model file"),
        ('{"type": "jaxllm-bpe"}', "must be a list"),
        ('{"type": "jaxllm-bpe", "merges": [[97, 98], [97]]}', "merge 1 must be a pair"),
        ('{"type": "jaxllm-bpe", "merges": [[97, "b"]]}', "integer token ids"),
        ('{"type": "jaxllm-bpe", "merges": [[97, 98], [257, 97]]}', "uses id 257"),
    ],
)
def test_load_bad_file_raises_value_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "broken-bpe.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=problem) as error:
        BPEModel.load(path)
    assert str(path) in str(error.value)


def test_load_missing_file_names_the_file(tmp_path):
    path = tmp_path / "missing.json"
    with pytest.raises(ValueError, match="cannot read") as error:
        BPEModel.load(path)
    assert str(path) in str(error.value)
