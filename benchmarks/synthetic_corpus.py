"""A synthetic JSONL corpus with planted exact and near duplicates, and the score of a dedup run on it.

Why: dedup recall and precision can only be measured against duplicates whose truth is known,
and checking that two preparation paths agree byte for byte needs a corpus of any size (1M
documents) that nobody has to download. Real corpora have an unknown duplicate structure.

Every document is drawn, in input order, as one of (rates of all documents, `RATES`):

  base            81%  40-200 words drawn uniformly from a fixed vocabulary (the ~12k distinct
                       lower-cased words of ../shared/data/tinyshakespeare.txt, read at run time),
                       in sentences (a capital first word, commas, a period) wrapped at 50-90
                       columns. Uniform draws from ~12k words make a shared 5-word shingle between
                       two base documents practically impossible (~1e-5 expected among 1M).
  exact            5%  a copy of an earlier base document that differs only in case, line wrapping,
                       indentation and double spaces, CRLF newlines, leading/trailing whitespace or
                       full-width letters: all equal under clean.normalize_for_dedup, the exact key.
  near            10%  a local edit of an earlier base document: a replaced block of words, a
                       replaced header or footer, a prepended or appended passage, or a truncated
                       end, sized so that the true Jaccard of 5-word shingles (= dedup.jaccard) lands
                       near a target drawn uniformly in [0.8, 1.0), and always in that range.
  hard_negative    3%  the same kinds of edit (a large replaced block, a truncation, a replaced
                       header, or words replaced at scattered places) with true Jaccard in
                       [0.3, 0.6): similar documents that dedup must keep.
  too_short, low_alnum, repeated_lines  0.4% / 0.3% / 0.3%: documents the default filters drop.

A duplicate's original is drawn uniformly among all earlier base documents, so it usually lies
in an earlier file; an original has at most one hard negative (two truncations of one
original would be near duplicates of each other). Base document i is a pure function of (seed, i), so an original is
regenerated when a duplicate needs it, never stored: generation streams, and its memory is
one int per base document plus the ground truth (10 bytes per document).

Files `part-NNNNN-of-MMMMM.jsonl` (or `.jsonl.zst`) hold consecutive documents, so jaxllm's
sorted-path reading order is the generation order. `truth.npz` holds, per document, its kind
(index into KINDS), its original's index (-1 for none), the true Jaccard with it (NaN for
none) and a bitmask of the edits (EDITS), plus the generation settings as JSON (`meta`).

    python benchmarks/synthetic_corpus.py OUT --docs 1000000          # write a corpus
    python benchmarks/synthetic_corpus.py OUT --evaluate PREPARED      # score a prepared dataset

Scoring (`evaluate_dedup`: near-dedup recall and precision, exact duplicates and hard
negatives, checked against the manifest) lives in benchmarks/_dedup_score.py.
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import hashlib
import io
import json
import random
import re
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from jaxllm.config import FilterConfig
from jaxllm.data.clean import alnum_fraction, clean_text, filter_reason
from jaxllm.data.dedup import shingles

try:  # imported as part of the benchmarks package (tests), or as a script's sibling (benchmarks/ on sys.path)
    from benchmarks._dedup_score import evaluate_dedup, index_corpus, load_truth, read_texts
except ImportError:
    from _dedup_score import evaluate_dedup, index_corpus, load_truth, read_texts

__all__ = ["KINDS", "RATES", "evaluate_dedup", "index_corpus", "load_truth", "read_texts", "write_corpus"]

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
VOCAB_SOURCE = SHARED / "tinyshakespeare.txt"
KINDS = ("base", "exact", "near", "hard_negative", "too_short", "low_alnum", "repeated_lines")
RATES = {"exact": 0.05, "near": 0.10, "hard_negative": 0.03, "too_short": 0.004, "low_alnum": 0.003,
         "repeated_lines": 0.003}  # fmt: skip
VARIANTS = ("upper", "lower", "wrap", "spaces", "crlf", "leading", "trailing", "fullwidth")  # exact copies
NEAR_EDITS = ("block", "header", "footer", "prepend", "append", "truncate")
HARD_EDITS = ("block", "header", "truncate", "scatter")
EDITS = VARIANTS + tuple(dict.fromkeys(NEAR_EDITS + HARD_EDITS))  # bit i of truth["edits"]: EDITS[i]
NEAR_RANGE, HARD_RANGE = (0.8, 1.0), (0.3, 0.6)
SHINGLE_WORDS = 5  # jaxllm's default data.dedup.shingle_words: the true Jaccard is measured with it
VERSION = 2  # of the generator: a cached corpus made by another version is regenerated
SYMBOLS = "#*=~-+|<>^%$@&_/"


def load_vocabulary(path: Path = VOCAB_SOURCE) -> tuple[str, ...]:
    """The distinct lower-cased words of `path`, sorted: a fixed vocabulary, read, not copied into the repo."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the vocabulary is read from tinyshakespeare.txt")
    return tuple(sorted(set(re.findall(r"[a-z]+(?:'[a-z]+)?", path.read_text().lower()))))


def wrap(tokens: list[str], width: int) -> str:
    """Tokens joined by spaces into lines of at most ~`width` characters."""
    lines, line, size = [], [], 0
    for t in tokens:
        if line and size + 1 + len(t) > width:
            lines.append(" ".join(line))
            line, size = [], 0
        size += len(t) + bool(line)
        line.append(t)
    lines.append(" ".join(line))
    return "\n".join(lines)


def base_tokens(vocab: tuple[str, ...], seed: int, i: int) -> tuple[list[str], int]:
    """Base document i's words (with its punctuation) and wrap width: a pure function of (seed, i)."""
    rng = random.Random((seed << 41) | (i << 1))
    n = rng.randint(40, 200)
    words = rng.choices(vocab, k=n)
    for j in range(n):
        if rng.random() < 0.08:
            words[j] += ","
    j = 0
    while j < n:
        words[j] = words[j].capitalize()
        end = min(j + rng.randint(6, 16), n)
        words[end - 1] = words[end - 1].rstrip(",") + "."
        j = end
    return words, rng.randint(50, 90)


def _fullwidth(word: str) -> str:
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in word)  # NFKC maps them back


def exact_copy(rng: random.Random, tokens: list[str], width: int, original: str) -> tuple[str, int]:
    """A copy equal to `original` under normalize_for_dedup but not after clean_text; (text, variant bits)."""
    chosen = rng.sample(VARIANTS, rng.randint(1, 2))
    while True:
        toks = list(tokens)
        if "fullwidth" in chosen:
            j = rng.randrange(len(toks))
            toks[j] = _fullwidth(toks[j])
        text = wrap(toks, rng.choice([w for w in range(30, 121) if w != width]) if "wrap" in chosen else width)
        if "spaces" in chosen:
            text = "\n".join("  " * rng.randint(0, 2) + line.replace(" ", "  ", 3) for line in text.split("\n"))
        text = text.upper() if "upper" in chosen else text.lower() if "lower" in chosen else text
        text = text.replace("\n", "\r\n") if "crlf" in chosen else text
        text = ("\n \t" + text) if "leading" in chosen else text
        text = (text + " \n\t ") if "trailing" in chosen else text
        if clean_text(text) != original:  # distinct cleaned texts: each maps back to one document
            return text, sum(1 << EDITS.index(v) for v in chosen)
        chosen.append(rng.choice([v for v in ("upper", "lower", "spaces", "leading") if v not in chosen]))


def _edit(kind: str, tokens: list[str], size: int, pool: list[str], pos: float, order: list[int]) -> list[str]:
    n = len(tokens)
    if kind == "block":  # an interior run of `size` words replaced
        start = 5 + int(pos * max(0, n - size - 10))
        return tokens[:start] + pool[:size] + tokens[start + size :]
    if kind == "header":
        return pool[:size] + tokens[size:]
    if kind == "footer":
        return tokens[: n - size] + pool[:size]
    if kind == "prepend":
        return pool[:size] + tokens
    if kind == "append":
        return tokens + pool[:size]
    if kind == "truncate":
        return tokens[: n - size]
    out = list(tokens)  # scatter: `size` words replaced at random places
    for k, j in enumerate(order[:size]):
        out[j] = pool[k]
    return out


def _guess(kind: str, n: int, j: float) -> int:
    """The edit size whose Jaccard is about `j`, from counting the shingles an edit changes."""
    s = max(n - SHINGLE_WORDS + 1, 1)
    if kind == "block":
        k = s * (1 - j) / (1 + j) - (SHINGLE_WORDS - 1)
    elif kind in ("header", "footer"):
        k = s * (1 - j) / (1 + j)
    elif kind in ("prepend", "append"):
        k = s * (1 - j) / j
    elif kind == "truncate":
        k = s * (1 - j)
    else:
        k = n * (1 - (2 * j / (1 + j)) ** (1 / SHINGLE_WORDS))
    return max(1, round(k))


def edited_copy(rng: random.Random, vocab: tuple[str, ...], tokens: list[str], original: str,
                span: tuple[float, float], edits: tuple[str, ...]) -> tuple[str, float, int] | None:  # fmt: skip
    """An edit of `original` with true Jaccard in [span): (text, Jaccard, edit bits), or None if none fits.

    The target is drawn uniformly in the span; the edit size starts from `_guess` and walks
    until the Jaccard crosses the target, and the in-span size nearest the target wins.
    """
    lo, hi = span
    target = rng.uniform(lo, hi)
    n = len(tokens)
    pool, pos, width = rng.choices(vocab, k=3 * n), rng.random(), rng.randint(50, 90)
    order = rng.sample(range(n), n)
    ref = shingles(original, SHINGLE_WORDS)
    for kind in rng.sample(edits, len(edits)):
        largest = 3 * n if kind in ("prepend", "append") else n - 2 * SHINGLE_WORDS
        size, tried = _guess(kind, n, target), {}
        while 1 <= size <= largest and size not in tried:
            text = wrap(_edit(kind, tokens, size, pool, pos, order), width)
            other = shingles(text, SHINGLE_WORDS)
            tried[size] = (len(ref & other) / len(ref | other), text)  # = dedup.jaccard(original, text)
            size += 1 if tried[size][0] > target else -1  # more edit, lower Jaccard
        fits = [(abs(j - target), j, text) for j, text in tried.values() if lo <= j < hi]
        if fits:
            _, j, text = min(fits)
            return text, j, 1 << EDITS.index(kind)
    return None


def junk(rng: random.Random, vocab: tuple[str, ...], kind: str) -> str:
    """A document the default filters drop for reason `kind` (checked by the caller)."""
    if kind == "too_short":
        words = [w.capitalize() for w in rng.choices(vocab, k=3)]
        while len(" ".join(words)) + 1 >= FilterConfig().min_chars and len(words) > 1:
            words.pop()
        return (" ".join(words))[: FilterConfig().min_chars - 2] + "."
    if kind == "low_alnum":
        parts = ["".join(rng.choices(SYMBOLS, k=rng.randint(3, 12))) for _ in range(rng.randint(8, 30))]
        parts[rng.randrange(len(parts))] = rng.choice(vocab)
        text = " ".join(parts)
        while alnum_fraction(text) >= FilterConfig().min_alnum_fraction:
            text += " " + "".join(rng.choices(SYMBOLS, k=8))
        return text
    line = " ".join(rng.choices(vocab, k=rng.randint(4, 8))).capitalize()  # repeated_lines
    return "\n".join([" ".join(rng.choices(vocab, k=6))] + [line] * rng.randint(6, 12))


def write_corpus(out_dir: str | Path, n_docs: int, seed: int = 0, files: int = 16, zst: bool = False,
                 vocab_path: Path = VOCAB_SOURCE, rates: dict[str, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """Write `n_docs` documents into `files` JSONL files in `out_dir` and `truth.npz`; returns the metadata.

    Deterministic in (n_docs, seed, files, rates, vocabulary). Files this function wrote
    earlier in `out_dir` (part-*.jsonl*, truth.npz) are replaced; nothing else is touched.
    """
    start_time = time.perf_counter()
    out, rates = Path(out_dir), dict(RATES if rates is None else rates)
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("part-*-of-*.jsonl*"), out / "truth.npz"]:
        old.unlink(missing_ok=True)
    vocab = load_vocabulary(vocab_path)
    names = [k for k in KINDS[1:] if rates.get(k, 0) > 0]
    cumulative = list(np.cumsum([rates[k] for k in names]))
    if cumulative and cumulative[-1] >= 1:
        raise ValueError(f"rates {rates} leave no base documents")
    planter = _Planter(n_docs, seed, vocab)
    draw, sizes = random.Random(seed), []
    suffix = ".jsonl.zst" if zst else ".jsonl"
    for f in range(files):
        path = out / f"part-{f:05d}-of-{files:05d}{suffix}"
        with _open_text(path, zst) as fh:
            for i in range(f * n_docs // files, (f + 1) * n_docs // files):
                u = draw.random()
                k = names[bisect.bisect_right(cumulative, u)] if u < (cumulative[-1] if cumulative else 0) else "base"
                fh.write(json.dumps({"text": planter.document(k, i, draw)}, ensure_ascii=False) + "\n")
        sizes.append(path.stat().st_size)
    kind = planter.kind
    counts = {k: int((kind == KINDS.index(k)).sum()) for k in KINDS}
    meta = {"version": VERSION, "n_docs": n_docs, "seed": seed, "files": files, "zst": zst, "rates": rates,
            "counts": counts, "file_names": [f"part-{f:05d}-of-{files:05d}{suffix}" for f in range(files)],
            "bytes": sum(sizes), "vocabulary": {"path": str(vocab_path), "words": len(vocab),
            "sha256": hashlib.sha256(vocab_path.read_bytes()).hexdigest()}, "near_range": NEAR_RANGE,
            "hard_range": HARD_RANGE, "shingle_words": SHINGLE_WORDS, "kinds": KINDS, "edits": EDITS,
            "seconds": round(time.perf_counter() - start_time, 2),
            "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # the process's, so far
    np.savez(out / "truth.npz", kind=kind, original=planter.original, jaccard=planter.jaccard, edits=planter.edits,
             meta=np.array(json.dumps(meta)))  # fmt: skip
    return meta


class _Planter:
    """Makes document i of a drawn kind and records its truth; remembers the base documents so far."""

    def __init__(self, n_docs: int, seed: int, vocab: tuple[str, ...]) -> None:
        self.seed, self.vocab, self.filters = seed, vocab, FilterConfig()
        self.kind, self.edits = np.zeros(n_docs, np.uint8), np.zeros(n_docs, np.uint16)
        self.original, self.jaccard = np.full(n_docs, -1, np.int32), np.full(n_docs, np.nan, np.float32)
        self.bases: list[int] = []
        self.hard_used: set[int] = set()  # at most one hard negative per original: two truncations of one
        # original at 45% and 50% would be near duplicates of each other, and the truth would lie

    def _pick(self, k: str, draw: random.Random) -> int | None:
        """An earlier base document as the original (None: there is none, or none free for a hard negative)."""
        for _ in range(8 if self.bases else 0):
            j = self.bases[draw.randrange(len(self.bases))]
            if k != "hard_negative" or j not in self.hard_used:
                return j
        return None

    def document(self, k: str, i: int, draw: random.Random) -> str:
        """Document i of kind `k` (a base document if `k` needs an original and none is available)."""
        rng, vocab = random.Random((self.seed << 41) | (i << 1) | 1), self.vocab  # the planted document's own stream
        if k in ("too_short", "low_alnum", "repeated_lines"):
            text = junk(rng, vocab, k)
            if filter_reason(clean_text(text), self.filters) != k:
                raise AssertionError(f"junk document {i} of kind {k} is not dropped as {k}: {text!r}")
            self.kind[i] = KINDS.index(k)
            return text
        j = None if k == "base" else self._pick(k, draw)
        if j is not None:
            tokens, width = base_tokens(vocab, self.seed, j)
            source = wrap(tokens, width)
            if k == "exact":
                text, bits = exact_copy(rng, tokens, width, source)
                planted = (text, 1.0, bits)
            else:
                near = k == "near"
                planted = edited_copy(rng, vocab, tokens, source, NEAR_RANGE if near else HARD_RANGE,
                                      NEAR_EDITS if near else HARD_EDITS)  # fmt: skip
            if planted is not None:
                self.kind[i], self.original[i] = KINDS.index(k), j
                text, self.jaccard[i], self.edits[i] = planted
                if k == "hard_negative":
                    self.hard_used.add(j)
                return text
        tokens, width = base_tokens(vocab, self.seed, i)
        self.bases.append(i)
        return wrap(tokens, width)


@contextlib.contextmanager
def _open_text(path: Path, zst: bool) -> Iterator[io.TextIOBase]:
    if not zst:
        with path.open("w", encoding="utf-8", buffering=1 << 20) as fh:
            yield fh
        return
    import zstandard

    with path.open("wb") as raw, zstandard.ZstdCompressor(level=3).stream_writer(raw) as z:
        with io.TextIOWrapper(z, encoding="utf-8") as fh:
            yield fh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="the corpus folder")
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--zst", action="store_true", help="write .jsonl.zst files")
    ap.add_argument("--vocab", type=Path, default=VOCAB_SOURCE, help="the text whose words are the vocabulary")
    ap.add_argument("--evaluate", type=Path, metavar="PREPARED", help="score a dataset prepared from OUT instead")
    args = ap.parse_args()
    if args.evaluate:
        print(json.dumps(evaluate_dedup(args.out, args.evaluate), indent=2))
        return
    meta = write_corpus(args.out, args.docs, args.seed, args.files, args.zst, args.vocab)
    print(f"{args.docs:,} documents, {meta['bytes'] / 1e6:,.1f} MB in {meta['seconds']:.1f} s "
          f"({args.docs / meta['seconds']:,.0f} documents/s, peak RSS {meta['peak_rss_bytes'] / 1e6:,.0f} MB): "
          f"{meta['counts']}")  # fmt: skip


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
