"""Cleaning and quality filters: planted junk gets the right drop reason, real Shakespeare is all kept."""

from pathlib import Path

import pytest

from jaxllm.config import FilterConfig
from jaxllm.data.clean import (
    REASONS,
    FilterStats,
    alnum_fraction,
    clean_text,
    filter_reason,
    normalize_for_dedup,
    repeated_line_fraction,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_FILES = sorted((DATA / "shakespeare").glob("*.txt")) + [DATA / "tinyshakespeare.txt"]

PROSE = (
    "It was the best of times, it was the worst of times, it was the age of wisdom,\n"
    "it was the age of foolishness, it was the epoch of belief, it was the epoch of\n"
    "incredulity, it was the season of Light, it was the season of Darkness.\n"
)
CFG = FilterConfig(max_chars=10_000)  # a small max_chars so the overlong document stays cheap

# (document, expected reason): one per filter, plus good prose.
PLANTED = [
    ("Too short.", "too_short"),
    (PROSE * 100, "too_long"),
    ("@#$%^&*" * 100, "low_alnum"),
    ("Buy cheap pills at example dot com today!\n" * 50, "repeated_lines"),
    (PROSE, None),
]


@pytest.mark.parametrize(("text", "reason"), PLANTED, ids=[r or "kept" for _, r in PLANTED])
def test_planted_documents_get_their_reason(text, reason):
    assert filter_reason(text, CFG) == reason


def test_filters_are_checked_in_order():
    # Short symbol soup fails both too_short and low_alnum: the first in REASONS wins.
    assert filter_reason("@@@", CFG) == "too_short"
    # Long symbol soup fails too_long, low_alnum and repeated_lines: too_long wins.
    assert filter_reason("@#$%\n" * 5000, CFG) == "too_long"
    # Symbol lines repeated: low_alnum comes before repeated_lines.
    assert filter_reason("@#$%\n" * 50, CFG) == "low_alnum"
    assert REASONS == ("too_short", "too_long", "low_alnum", "repeated_lines")


def test_boundaries():
    cfg = FilterConfig(min_chars=5, max_chars=10)
    assert filter_reason("abcd", cfg) == "too_short"
    assert filter_reason("abcde", cfg) is None
    assert filter_reason("abcdefghij", cfg) is None
    assert filter_reason("abcdefghijk", cfg) == "too_long"


def test_alnum_fraction_ignores_whitespace():
    assert alnum_fraction("ab  \n\t cd") == 1.0
    assert alnum_fraction("ab!!") == 0.5
    assert alnum_fraction(" \n\t ") == 0.0  # all whitespace counts as 0
    assert alnum_fraction("Ελληνικά 日本語 ñandú") == 1.0  # any script's letters count
    cfg = FilterConfig(min_chars=0)
    assert filter_reason(" " * 40, cfg) == "low_alnum"


def test_repeated_lines():
    # 3 lines, 2 repeat the first: 2/3 > 0.5.
    assert repeated_line_fraction("spam\n  spam  \n\nspam\n") == (2 / 3, 3)
    assert filter_reason("spam spam\nspam spam\nspam spam", FilterConfig(min_chars=0)) == "repeated_lines"
    # Fewer than 3 non-empty lines are exempt, whatever the threshold.
    strict = FilterConfig(min_chars=0, max_repeated_line_fraction=0.0)
    assert filter_reason("Nay, nay.\n\n   \nNay, nay.", strict) is None
    # A play-like document: speaker names repeat, but under half the lines.
    play = "Ham.\nTo be, or not to be.\nHor.\nMy lord?\nHam.\nThat is the question.\nHor.\nIndeed, my lord.\n"
    assert repeated_line_fraction(play) == (0.25, 8)
    assert filter_reason(play, FilterConfig()) is None


def test_filter_stats_counts():
    stats = FilterStats()
    kept = [text for text, _ in PLANTED if stats.record(filter_reason(text, CFG))]
    stats.record(filter_reason("tiny", CFG))
    assert kept == [PROSE]
    assert stats.as_dict() == {"kept": 1, "too_short": 2, "too_long": 1, "low_alnum": 1, "repeated_lines": 1}
    assert stats.total == 6 and stats.num_dropped == 5
    assert sum(stats.as_dict().values()) == stats.total


def test_clean_text():
    assert clean_text("a\r\nb\rc\n") == "a\nb\nc"
    assert clean_text("to be\x00 or not\x00") == "to be or not"
    assert clean_text("\r\x00\n") == ""  # NUL removed first, then the CRLF is one newline, then stripped
    assert clean_text("x\r\x00\ny") == "x\ny"
    assert clean_text("  indented\n\tverse  \n\n \t") == "  indented\n\tverse"  # leading whitespace kept
    assert clean_text("café ﬁ Ａ") == "café ﬁ Ａ"  # no unicode normalization of the training text
    assert "\x00" not in clean_text("\x00" * 10 + "abc" + "\x00")


def test_normalize_for_dedup():
    assert normalize_for_dedup("  To BE,\r\n\tor  NOT\u3000to be  ") == "to be, or not to be"
    assert normalize_for_dedup("ﬁne Ａpple") == "fine apple"  # NFKC: ligature and full-width forms
    assert normalize_for_dedup(" \n ") == ""


@pytest.mark.parametrize("path", REAL_FILES, ids=[p.name for p in REAL_FILES])
def test_real_shakespeare_is_kept(path):
    text = clean_text(path.read_text(encoding="utf-8"))
    assert filter_reason(text, FilterConfig()) is None


def test_real_corpus_is_present():
    # Guard against the parametrized test above silently collecting nothing.
    assert len(REAL_FILES) == 43 and all(p.is_file() for p in REAL_FILES)
