"""Exact and MinHash-LSH dedup: every planted duplicate is flagged, no original is, estimates are sound."""

import random
from pathlib import Path

import numpy as np
import pytest

from jaxllm.config import DedupConfig
from jaxllm.data import dedup
from jaxllm.data.dedup import (
    ExactDeduplicator,
    NearDeduplicator,
    estimated_jaccard,
    exact_key,
    jaccard,
    minhash_signature,
    shingles,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CFG = DedupConfig()  # the defaults: threshold 0.8, 128 permutations, 16 bands, 5-word shingles
SLICE = 2000
NUM_DOCS = 30


@pytest.fixture(scope="module")
def corpus() -> str:
    return (DATA / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def originals(corpus) -> list[str]:
    """30 distinct documents: consecutive 2,000-character slices of tiny shakespeare."""
    return [corpus[i * SLICE : (i + 1) * SLICE] for i in range(NUM_DOCS)]


# --------------------------------------------------------------------------- planting


def rewhitespace(text: str) -> str:
    """The same words, differently cased and wrapped: an exact duplicate after normalization."""
    return text.upper().replace("\n", " \r\n\t").replace(" ", "   ")


def block_edit(text: str, fraction: float, seed: int, delete: bool = False) -> str:
    """Replace (or delete) one run of `fraction` of the words, at a random place: a local edit."""
    rng = random.Random(seed)
    words = text.split(" ")
    n = max(1, round(fraction * len(words)))
    start = rng.randrange(len(words) - n)
    new = [] if delete else [f"zq{rng.randrange(10**6)}" for _ in range(n)]
    return " ".join(words[:start] + new + words[start + n :])


def scatter_edit(text: str, fraction: float, seed: int) -> str:
    """Change or delete each word with probability `fraction`, independently."""
    rng = random.Random(seed)
    out = []
    for word in text.split(" "):
        u = rng.random()
        if u >= fraction:
            out.append(word)
        elif u < fraction / 2:
            out.append(f"zq{rng.randrange(10**6)}")
    return " ".join(out)


def near_variants(doc: str, i: int) -> str:
    """One near-duplicate per source document, cycling through realistic kinds of local change."""
    kind = (i // 2) % 4  # i is odd for planted sources: 1, 3, 5, 7 -> kinds 0, 1, 2, 3
    if kind == 0:
        return block_edit(doc, 0.05, seed=i)  # ~5% of the words rewritten in one place
    if kind == 1:
        return block_edit(doc, 0.05, seed=i, delete=True)  # ~5% of the words cut out
    if kind == 2:
        words = doc.split(" ")  # the end truncated by ~5%, a footer appended
        return " ".join(words[: int(0.95 * len(words))]) + "\n\nTranscribed for the Project. All rights reserved."
    return scatter_edit(doc, 0.01, seed=i)  # scattered typos in ~1% of the words


def planted_stream(originals):
    """Originals in order, with exact and near duplicates inserted at random places after their source.

    Returns [(text, label)] with label "orig", "exact" or "near".
    """
    rng = random.Random(1234)
    stream = [(doc, "orig") for doc in originals]
    plants = [(i, rewhitespace(originals[i]), "exact") for i in range(0, NUM_DOCS, 3)]
    plants += [(i, near_variants(originals[i], i), "near") for i in range(1, NUM_DOCS, 2)]
    for source, text, label in plants:
        pos = next(k for k, (t, _) in enumerate(stream) if t == originals[source])
        stream.insert(rng.randint(pos + 1, len(stream)), (text, label))
    return stream


# --------------------------------------------------------------------------- tests


def test_planted_duplicates_are_flagged_and_originals_are_not(originals):
    assert len(set(originals)) == NUM_DOCS
    stream = planted_stream(originals)
    exact, near = ExactDeduplicator(), NearDeduplicator(CFG)
    verdicts = []
    for text, _ in stream:  # the prepare pipeline's order: exact first, then near on what survives
        if exact.is_duplicate(text):
            verdicts.append("exact")
        elif near.is_duplicate(text):
            verdicts.append("near")
        else:
            verdicts.append("orig")
    labels = [label for _, label in stream]
    assert labels.count("exact") == 10 and labels.count("near") == 15
    assert verdicts == labels
    assert len(exact) == NUM_DOCS + labels.count("near") and len(near) == NUM_DOCS


def test_planted_near_duplicates_are_truly_near(originals):
    # The planted variants are in scope for threshold 0.8 by construction (exact Jaccard well above it),
    # and the estimate agrees; otherwise the test above would be checking luck.
    for i in range(1, NUM_DOCS, 2):
        doc, variant = originals[i], near_variants(originals[i], i)
        assert variant != doc
        assert jaccard(doc, variant, CFG.shingle_words) >= 0.85, i
        assert estimated_jaccard(minhash_signature(doc, CFG), minhash_signature(variant, CFG)) >= CFG.threshold, i


def test_near_dedup_alone_catches_exact_variants(originals):
    near = NearDeduplicator(CFG)
    assert not any(near.is_duplicate(doc) for doc in originals)
    assert all(near.is_duplicate(rewhitespace(doc)) for doc in originals)
    assert len(near) == NUM_DOCS


def test_first_occurrence_wins(originals):
    doc, variant = originals[0], block_edit(originals[0], 0.05, seed=0)
    for first, second in ((doc, variant), (variant, doc)):
        near = NearDeduplicator(CFG)
        assert near.is_duplicate(first) is False
        assert near.is_duplicate(second) is True
        assert near.is_duplicate(first) is True  # still indexed: a third copy is caught too
        assert len(near) == 1


def test_exact_key_normalizes():
    assert exact_key("To be,  or NOT\r\nto be") == exact_key("to be, or not to be")
    assert exact_key("to be") != exact_key("to bee")
    assert len(exact_key("")) == 64
    dedup = ExactDeduplicator()
    assert [dedup.is_duplicate(t) for t in ("A b", "a  B", "a c", " A\tB\n")] == [False, True, False, True]


def test_estimated_jaccard_tracks_exact_jaccard(corpus, originals):
    doc = originals[5]
    pairs = [
        (doc, rewhitespace(doc)),  # 1.0
        (doc, block_edit(doc, 0.05, seed=7)),  # ~0.88
        (doc, scatter_edit(doc, 0.05, seed=7)),  # ~0.7: 5% scattered edits touch up to 25% of 5-word shingles
        (doc, corpus[5 * SLICE + SLICE // 2 : 6 * SLICE + SLICE // 2]),  # half overlap, ~0.33
        (doc, originals[20]),  # unrelated, ~0
    ]
    cfg = DedupConfig(num_perm=128)
    for a, b in pairs:
        exact = jaccard(a, b, cfg.shingle_words)
        estimate = estimated_jaccard(minhash_signature(a, cfg), minhash_signature(b, cfg))
        assert abs(estimate - exact) <= 0.1, (exact, estimate)
    assert jaccard(*pairs[0], cfg.shingle_words) == 1.0


def test_scattered_five_percent_edits_fall_below_threshold(originals):
    # Documents what the defaults mean: with 5-word shingles, uniformly scattered 5% word edits give
    # J ~= 0.7, so such a document is not a near-duplicate at threshold 0.8 (see dedup.py's docstring).
    values = [jaccard(doc, scatter_edit(doc, 0.05, seed=i), CFG.shingle_words) for i, doc in enumerate(originals)]
    assert 0.6 < float(np.mean(values)) < 0.8


def test_signature_is_deterministic():
    text = "Now is the winter of our discontent made glorious summer by this sun of York."
    a, b = minhash_signature(text, CFG), minhash_signature(text, CFG)
    assert a.dtype == np.uint32 and a.shape == (CFG.num_perm,)
    np.testing.assert_array_equal(a, b)
    # Pinned values: these must not change between processes (no salted hash()), machines or numpy
    # versions, or the same corpus would dedup differently from one `prepare` to the next.
    assert minhash_signature("to be", CFG)[:4].tolist() == [3827276202, 713923363, 3029132226, 3169000566]


def test_documents_shorter_than_a_shingle():
    assert shingles("To  be", 5) == {"to be"}
    assert shingles("a b c d e", 5) == {"a b c d e"}
    assert shingles("a b c d e f", 5) == {"a b c d e", "b c d e f"}
    sig = minhash_signature("to be", CFG)
    assert sig.shape == (CFG.num_perm,)
    np.testing.assert_array_equal(sig, minhash_signature("TO\nBE ", CFG))
    assert jaccard("to be", "To Be", 5) == 1.0 and jaccard("to be", "not to be", 5) == 0.0
    near = NearDeduplicator(CFG)
    assert [near.is_duplicate(t) for t in ("to be", "To be.", "to be", "", " ")] == [False, False, True, False, True]


def test_long_document_is_chunked(corpus, monkeypatch):
    # Tens of thousands of shingles are hashed in chunks; the running minimum must equal the one-shot one.
    doc = corpus[:100_000]
    assert len(shingles(doc, CFG.shingle_words)) > 2 * dedup._CHUNK
    chunked = minhash_signature(doc, CFG)
    monkeypatch.setattr(dedup, "_CHUNK", 10**9)
    np.testing.assert_array_equal(chunked, minhash_signature(doc, CFG))


def test_bad_band_split_is_rejected():
    with pytest.raises(ValueError, match="multiple"):
        NearDeduplicator(DedupConfig(num_perm=100, bands=16))
    with pytest.raises(ValueError, match="length"):
        estimated_jaccard(np.zeros(4, np.uint32), np.zeros(5, np.uint32))
