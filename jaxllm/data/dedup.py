"""Exact and near-duplicate detection of documents, run by `jaxllm data prepare` after the filters.

Duplicated training text is memorized instead of generalized from, wastes compute, and
leaks between the train and validation splits. Two passes, both streaming and
first-occurrence-wins (the earlier document in input order is kept), so the result
is deterministic and needs one pass over the corpus:

Exact duplicates (`ExactDeduplicator`)
    Key = sha256 of `normalize_for_dedup(text)` (NFKC, lowercase, whitespace runs
    collapsed; see clean.py), so copies that differ only in case, wrapping, indentation
    or unicode compatibility forms are caught. One set lookup per document.

Near duplicates (`NearDeduplicator`): MinHash + LSH banding
    * Shingles: every run of `shingle_words` consecutive words of the normalized text
      (5 by default, as in Lee et al. 2021, "Deduplicating Training Data Makes Language
      Models Better"). A document with fewer words is one shingle of all of them, so
      short documents still get a signature. Similarity = Jaccard of the shingle sets.
    * Each shingle is hashed to 32 bits with zlib.crc32 of its utf-8 bytes. Python's
      built-in hash() is salted per process (PYTHONHASHSEED), which would make
      signatures -- and so dedup decisions -- differ between runs.
    * `num_perm` hash functions h_i(x) = high 32 bits of (a_i * x + b_i) mod 2^64, a_i
      odd (multiply-add-shift, a universal family for 32-bit keys that costs one
      multiply; numpy uint64 arithmetic wraps mod 2^64 for free). a_i, b_i are the
      first raw outputs of numpy's PCG64 bit generator with a fixed seed: raw bit
      generator output is stable across numpy versions (Generator methods are not
      promised to be), so signatures are reproducible.
    * Signature = per-function minimum over the shingles (uint32[num_perm]). For two
      documents, P(min_i equal) = their Jaccard similarity, so the fraction of equal
      entries (`estimated_jaccard`) estimates it with std sqrt(J(1-J)/num_perm)
      (<= 0.044 at num_perm=128).
    * LSH banding avoids comparing every pair: the signature is cut into `bands` bands
      of r = num_perm/bands rows; two documents become candidates if any band is
      identical, probability 1 - (1 - J^r)^bands. With the defaults (16 bands x 8 rows)
      that is 0.06 at J=0.5, 0.95 at J=0.8, 0.994 at J=0.85 and ~1 at J>=0.9: the
      S-curve's midpoint (1/16)^(1/8) ~= 0.71 sits below the 0.8 threshold, so few true
      near-duplicates are missed while dissimilar documents rarely become candidates.
      Candidates are then confirmed by the full signature (estimated Jaccard >=
      threshold); a confirmed document is dropped and *not* added to the index (the
      kept document already represents it), otherwise it is added to all its buckets.

What threshold 0.8 with 5-word shingles means: one edited word changes up to 5
shingles, so if a fraction p of words is edited *uniformly at random*, J ~= q / (2 - q)
with q = (1 - p)^5. About 2% scattered word edits reach J = 0.8; 5% scattered edits give
J ~= 0.63 and are NOT flagged. Edits that come in runs (a changed header or footer, a
rewritten paragraph, a truncated end) cost far fewer shingles: 5% of the words replaced
in one block keeps J ~= 0.9. That is the intended reading of "near duplicate": the same
document with local changes, not a paraphrase.

Cost: signatures are O(words * num_perm) numpy work per document; with the defaults,
1,000 documents of 2 KB (~360 words) take ~0.23 s on one CPU core, ~95% of it computing
signatures (`is_duplicate_signature` lets a caller compute them in worker processes),
the LSH lookups ~0.01 s. The index holds 4 * num_perm bytes of signature plus `bands`
bucket entries per kept document.
"""

from __future__ import annotations

import functools
import hashlib
import zlib

import numpy as np

from jaxllm.config import DedupConfig
from jaxllm.data.clean import normalize_for_dedup

_SEED = 0x6A61786C6C6D  # "jaxllm": the fixed seed of the MinHash hash functions
_CHUNK = 4096  # shingles hashed per numpy step: bounds memory to _CHUNK * num_perm * 8 bytes


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (e.g. from a JSON "\ud800" escape) must not crash the run
    return text.encode("utf-8", "surrogatepass")


# --------------------------------------------------------------------------- exact


def exact_key(text: str) -> str:
    """sha256 hex digest of the normalized text: equal for copies differing only in case/whitespace."""
    return hashlib.sha256(_utf8(normalize_for_dedup(text))).hexdigest()


class ExactDeduplicator:
    """Streaming exact dedup: the first occurrence of a normalized text is kept, later ones flagged."""

    def __init__(self) -> None:
        self._seen: set[str] = set()

    def is_duplicate(self, text: str) -> bool:
        """True if an equal (after normalization) text was seen before; else records it and returns False."""
        return self.is_duplicate_key(exact_key(text))

    def is_duplicate_key(self, key: str) -> bool:
        """The same, for a key already computed with `exact_key` (which the caller may reuse)."""
        if key in self._seen:
            return True
        self._seen.add(key)
        return False

    def __len__(self) -> int:
        return len(self._seen)


# --------------------------------------------------------------------------- MinHash


def shingles(text: str, shingle_words: int) -> set[str]:
    """The set of `shingle_words`-word shingles of the normalized text (one shingle if it is shorter)."""
    words = normalize_for_dedup(text).split(" ")
    if len(words) <= shingle_words:
        return {" ".join(words)}  # includes the empty document: one empty shingle
    return {" ".join(words[i : i + shingle_words]) for i in range(len(words) - shingle_words + 1)}


def jaccard(a_text: str, b_text: str, shingle_words: int) -> float:
    """Exact Jaccard similarity of the two documents' shingle sets (what MinHash estimates)."""
    a, b = shingles(a_text, shingle_words), shingles(b_text, shingle_words)
    return len(a & b) / len(a | b)


@functools.lru_cache(maxsize=8)
def _hash_params(num_perm: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), uint64[num_perm] each, a odd: fixed for a given num_perm, in every process."""
    raw = np.random.PCG64(_SEED).random_raw(2 * num_perm).astype(np.uint64)
    a, b = raw[:num_perm] | np.uint64(1), raw[num_perm:]
    a.flags.writeable = b.flags.writeable = False  # cached and shared: guard against in-place edits
    return a, b


def minhash_signature(text: str, cfg: DedupConfig) -> np.ndarray:
    """uint32[cfg.num_perm]: per hash function, the minimum over the document's shingle hashes."""
    x = np.fromiter((zlib.crc32(_utf8(s)) for s in shingles(text, cfg.shingle_words)), dtype=np.uint64)
    a, b = _hash_params(cfg.num_perm)
    sig = np.full(cfg.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
    for start in range(0, len(x), _CHUNK):
        chunk = x[start : start + _CHUNK, None]
        h = (chunk * a + b) >> np.uint64(32)  # (shingles, num_perm); the multiply wraps mod 2^64
        np.minimum(sig, h.min(axis=0), out=sig)
    return sig.astype(np.uint32)


def estimated_jaccard(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """Fraction of equal MinHash entries: an unbiased estimate of the Jaccard similarity."""
    if sig_a.shape != sig_b.shape:
        raise ValueError(f"signatures differ in length: {sig_a.shape} vs {sig_b.shape}")
    return float(np.mean(sig_a == sig_b))


class NearDeduplicator:
    """Streaming MinHash-LSH near-dedup: first occurrence wins, later documents with
    estimated Jaccard >= cfg.threshold to any kept document are flagged."""

    def __init__(self, cfg: DedupConfig) -> None:
        if cfg.num_perm <= 0 or cfg.bands <= 0 or cfg.num_perm % cfg.bands:
            raise ValueError(f"dedup.num_perm={cfg.num_perm} must be a positive multiple of dedup.bands={cfg.bands}")
        self.cfg = cfg
        self.rows = cfg.num_perm // cfg.bands
        self._signatures: list[np.ndarray] = []  # kept documents, by id (input order)
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(cfg.bands)]  # per band: bytes -> ids

    def is_duplicate(self, text: str) -> bool:
        """True if `text` is a near-duplicate of a kept document; else keeps (indexes) it and returns False."""
        return self.is_duplicate_signature(minhash_signature(text, self.cfg))

    def is_duplicate_signature(self, sig: np.ndarray) -> bool:
        """`is_duplicate` for a precomputed `minhash_signature` (e.g. computed in worker processes)."""
        if sig.shape != (self.cfg.num_perm,):
            raise ValueError(f"signature shape {sig.shape} != ({self.cfg.num_perm},)")
        keys = [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.cfg.bands)]
        candidates: set[int] = set()
        for band, key in zip(self._buckets, keys, strict=True):
            candidates.update(band.get(key, ()))
        for doc_id in sorted(candidates):
            if estimated_jaccard(sig, self._signatures[doc_id]) >= self.cfg.threshold:
                return True
        doc_id = len(self._signatures)
        self._signatures.append(sig)
        for band, key in zip(self._buckets, keys, strict=True):
            band.setdefault(key, []).append(doc_id)
        return False

    def __len__(self) -> int:
        """Number of kept (indexed) documents."""
        return len(self._signatures)


# --------------------------------------------------------------------------- resolution


def first_occurrence_drops(edges: np.ndarray) -> np.ndarray:
    """Documents that streaming first-occurrence-wins near-dedup drops, given every confirmed pair.

    `edges` is int64 (E, 2): pairs (i, j), i < j in input order, that share an LSH bucket and
    whose estimated Jaccard reaches the threshold. `NearDeduplicator` keeps j unless some
    *kept* i < j is such a neighbour (a dropped document is not indexed), so the answer is the
    greedy independent set taken in input order: deciding j needs only the decisions on the
    i < j, which are already made when the pairs are read sorted by j. This is what lets the
    pipeline (jaxllm.data.pipeline) find candidate pairs by a shuffle over bands on many
    workers and still drop exactly the documents the single process drops; memory here is the
    pairs, not the corpus.
    """
    if edges.size == 0:
        return np.zeros(0, np.int64)
    edges = edges[np.lexsort((edges[:, 0], edges[:, 1]))]
    dropped: set[int] = set()
    for i, j in edges.tolist():
        if j not in dropped and i not in dropped:
            dropped.add(j)
    return np.array(sorted(dropped), np.int64)
