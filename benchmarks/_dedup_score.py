"""Reading a synthetic corpus (benchmarks/synthetic_corpus.py) back, and scoring a dataset prepared from it.

Why a separate module: the scorer must judge a preparation path from the outside, so it
shares nothing with it but the definitions of a document's cleaning, filters and exact key
(jaxllm.data.clean, jaxllm.data.dedup), and it only reads the corpus, the ground truth and
the prepared shards. It never imports the generator (which imports it).

Which documents a dataset kept: with `tokenizer.path=byte` a shard document's tokens are the
UTF-8 bytes of the cleaned text, so a 64-bit blake2b of those bytes, looked up among the
hashes of `clean_text(raw)` of every corpus document, names the document (the generator makes
every planted copy differ from its original after cleaning; equal cleaned texts would map to
the first, which first-occurrence-wins dedup is the one to keep anyway). Both splits are read.

Why a document was removed is recomputed here, in input order: a filter (clean.filter_reason
with the manifest's settings), else the exact stage (an earlier unfiltered document has the
same exact_key), else it was removed by near dedup. The counts are checked against the
manifest's `documents`.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from jaxllm.config import FilterConfig
from jaxllm.data.clean import REASONS, clean_text, filter_reason
from jaxllm.data.dedup import exact_key, jaccard
from jaxllm.data.shards import open_shard

PASSES, FILTERED, EXACT = 0, 1, 2  # CorpusIndex.stage: what the stages before near dedup do to a document
NEAR_BINS, HARD_BINS = (0.8, 0.85, 0.9, 0.95, 1.0), (0.3, 0.4, 0.5, 0.6)


def load_truth(corpus_dir: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(the per-document truth arrays, the generation metadata) of a corpus written by write_corpus."""
    with np.load(Path(corpus_dir) / "truth.npz") as z:
        arrays = {k: z[k] for k in ("kind", "original", "jaccard", "edits")}
        return arrays, json.loads(str(z["meta"]))


def read_texts(corpus_dir: str | Path) -> Iterator[str]:
    """The corpus documents' raw texts, in input order (the files in sorted order, as jaxllm reads them)."""
    _, meta = load_truth(corpus_dir)
    for name in sorted(meta["file_names"]):
        path = Path(corpus_dir) / name
        if meta["zst"]:
            import zstandard

            with path.open("rb") as raw, io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(raw),
                                                          encoding="utf-8") as fh:  # fmt: skip
                yield from (json.loads(line)["text"] for line in fh)
        else:
            with path.open(encoding="utf-8") as fh:
                yield from (json.loads(line)["text"] for line in fh)


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


@dataclass
class CorpusIndex:
    """What a corpus holds, computed once and shared by the scores of every dataset prepared from it."""

    truth: dict[str, np.ndarray]
    meta: dict[str, Any]
    filters: FilterConfig
    by_hash: dict[int, int]  # hash of the cleaned text -> the first document with it
    stage: np.ndarray  # uint8 per document: PASSES, FILTERED or EXACT
    reason: np.ndarray  # uint8 per document: 1 + index into clean.REASONS of its filter, 0 if none


def index_corpus(corpus_dir: str | Path, filters: FilterConfig | None = None) -> CorpusIndex:
    """Hash, filter and exact-key every document of the corpus, in input order (one pass, ~1 min per 1M)."""
    truth, meta = load_truth(corpus_dir)
    filters = filters or FilterConfig()
    n = meta["n_docs"]
    stage, reason = np.zeros(n, np.uint8), np.zeros(n, np.uint8)
    by_hash: dict[int, int] = {}
    seen: set[str] = set()
    i = -1
    for i, raw in enumerate(read_texts(corpus_dir)):
        text = clean_text(raw)
        by_hash.setdefault(_hash(text.encode("utf-8")), i)
        why = filter_reason(text, filters)
        if why is not None:
            stage[i], reason[i] = FILTERED, 1 + REASONS.index(why)
            continue
        key = exact_key(text)[:32]  # 128 bits: plenty to tell 1M documents apart, half the memory
        if key in seen:
            stage[i] = EXACT
        seen.add(key)
    if i + 1 != n:
        raise ValueError(f"{corpus_dir}: read {i + 1:,} documents, truth.npz describes {n:,}")
    return CorpusIndex(truth, meta, filters, by_hash, stage, reason)


def kept_documents(prepared_dir: str | Path, index: CorpusIndex) -> tuple[np.ndarray, int, int]:
    """(bool per corpus document: in the dataset's shards, kept texts matching no document, kept twice)."""
    prepared = Path(prepared_dir)
    manifest = json.loads((prepared / "manifest.json").read_text())
    if manifest["tokenizer"]["identity"] != "byte" or manifest["settings"]["split"] != "document":
        raise ValueError(f"{prepared}: scoring needs tokenizer.path=byte and data.split=document")
    kept = np.zeros(index.meta["n_docs"], bool)
    unmatched = twice = 0
    for split in ("train", "val"):
        for entry in manifest["splits"][split]["shards"]:
            shard = open_shard(prepared / entry["file"], manifest)
            for k in range(len(shard)):
                tokens = shard[k]
                if tokens.size and int(tokens.max()) > 255:
                    raise ValueError(f"{entry['file']} document {k}: a token id above 255 in a byte dataset")
                doc = index.by_hash.get(_hash(tokens.astype(np.uint8).tobytes()))
                if doc is None:
                    unmatched += 1
                elif kept[doc]:
                    twice += 1
                else:
                    kept[doc] = True
    return kept, unmatched, twice


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 5) if whole else None


def _by_bins(jac: np.ndarray, hit: np.ndarray, edges: tuple[float, ...]) -> dict[str, list]:
    """{"lo-hi": [hits, documents, share]} over bins of the true Jaccard (the last bin includes its top)."""
    out = {}
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (jac >= lo) & ((jac < hi) if hi < edges[-1] else (jac <= hi))
        out[f"{lo:.2f}-{hi:.2f}"] = [int(hit[inside].sum()), int(inside.sum()), _share(int(hit[inside].sum()),
                                                                                       int(inside.sum()))]  # fmt: skip
    return out


def justified(corpus_dir: str | Path, index: CorpusIndex, kept: np.ndarray, docs: np.ndarray, threshold: float,
              shingle_words: int) -> np.ndarray:  # fmt: skip
    """For each of `docs` (removed by near dedup, not planted as near duplicates): does it have a true
    Jaccard >= threshold with a kept earlier document of its family (its original, or a kept copy of
    it)? Such a removal is right even though nothing planted it. One more pass over the corpus."""
    original = index.truth["original"]
    order = np.argsort(original, kind="stable")
    ranked = original[order]
    family: dict[int, list[int]] = {}
    for i in docs.tolist():
        o = int(original[i])
        lo, hi = np.searchsorted(ranked, o, "left"), np.searchsorted(ranked, o, "right")
        family[i] = [] if o < 0 else [o] + [int(k) for k in order[lo:hi] if k < i and kept[k]]
    need = set(family) | {k for members in family.values() for k in members}
    texts = {i: clean_text(raw) for i, raw in enumerate(read_texts(corpus_dir)) if i in need}
    return np.array([any(jaccard(texts[k], texts[i], shingle_words) >= threshold for k in family[i]) for i in docs],
                    bool)  # fmt: skip


def evaluate_dedup(corpus_dir: str | Path, prepared_dir: str | Path, index: CorpusIndex | None = None) -> dict:
    """Score a dataset prepared from a synthetic corpus against its planted truth (a JSON-ready dict).

    near_recall: planted near duplicates removed / planted near duplicates.
    near_precision: of the documents near dedup removed (removed, neither filtered nor an exact
      duplicate), the share that are planted near duplicates or have a true Jaccard >= the
      threshold with a kept earlier document of their family (`justified`). Every document was
      built to share (almost) no shingle with any document outside its family (an original and
      its copies), so that check is complete; near_precision_planted counts planted ones only.
    `index` (from index_corpus) saves re-reading the corpus when several datasets are scored.
    """
    manifest = json.loads((Path(prepared_dir) / "manifest.json").read_text())
    filters = FilterConfig(**manifest["settings"]["filters"])
    if index is None:
        index = index_corpus(corpus_dir, filters)
    elif index.filters != filters:
        raise ValueError(f"the index was built with filters {index.filters}, the dataset used {filters}")
    kept, unmatched, twice = kept_documents(prepared_dir, index)
    kinds, truth = tuple(index.meta["kinds"]), index.truth
    kind, jac, original = truth["kind"], truth["jaccard"], truth["original"]
    planted = {k: kind == kinds.index(k) for k in kinds}
    removed = ~kept
    by_near = removed & (index.stage == PASSES)
    near, hard = planted["near"], planted["hard_negative"]
    docs = manifest["documents"]
    ours = {"filtered": int((index.stage == FILTERED).sum()), "exact": int((removed & (index.stage == EXACT)).sum()),
            "near": int(by_near.sum())}  # fmt: skip
    theirs = {"filtered": sum(v for k, v in docs["filtered"].items() if k != "kept"),
              "exact": docs["duplicates_removed"]["exact"], "near": docs["duplicates_removed"]["near"]}  # fmt: skip
    junk = [k for k in kinds if k in REASONS]
    junk_ok = sum(int((planted[k] & (index.reason == 1 + REASONS.index(k)) & removed).sum()) for k in junk)
    wrong = np.flatnonzero(by_near & ~near)
    dedup = manifest["settings"]["dedup"]
    right = justified(corpus_dir, index, kept, wrong, dedup["threshold"], dedup["shingle_words"]) if wrong.size else []
    wrong_ok, wrong = wrong[np.asarray(right, bool)], wrong[~np.asarray(right, bool)]
    examples = [{"doc": int(i), "kind": kinds[kind[i]], "original": int(original[i]),
                 "jaccard": None if np.isnan(jac[i]) else round(float(jac[i]), 4)} for i in wrong[:5]]  # fmt: skip
    originals = np.unique(original[original >= 0])
    return {
        "documents": int(kind.size),
        "kept": int(kept.sum()),
        "kept_sha256": hashlib.sha256(np.packbits(kept).tobytes()).hexdigest(),
        "kept_texts_matching_no_document": unmatched,
        "documents_kept_twice": twice,
        "planted": {k: int(v.sum()) for k, v in planted.items()},
        "kept_by_kind": {k: int((v & kept).sum()) for k, v in planted.items()},
        "removed_by_stage": ours,
        "manifest_removed": theirs,
        "agrees_with_manifest": ours == theirs and docs["read"] == kind.size,
        "exact_removed": [int((planted["exact"] & removed).sum()), int(planted["exact"].sum())],
        "exact_removed_by_exact_stage": int((planted["exact"] & (index.stage == EXACT) & removed).sum()),
        "near_recall": _share(int((near & removed).sum()), int(near.sum())),
        "near_removed": [int((near & removed).sum()), int(near.sum())],
        "near_removed_by_near_stage": int((near & by_near).sum()),
        "near_recall_by_jaccard": _by_bins(jac[near], removed[near], NEAR_BINS),
        "near_precision": _share(int((by_near & near).sum()) + int(wrong_ok.size), int(by_near.sum())),
        "near_precision_planted": _share(int((by_near & near).sum()), int(by_near.sum())),
        "near_removed_unplanted_but_similar": int(wrong_ok.size),
        "near_false_positives": [int(wrong.size), examples],
        "hard_negatives_kept": [int((hard & kept).sum()), int(hard.sum())],
        "hard_negatives_kept_by_jaccard": _by_bins(jac[hard], kept[hard], HARD_BINS),
        "base_kept": [int((planted["base"] & kept).sum()), int(planted["base"].sum())],
        "originals_kept": [int(kept[originals].sum()), int(originals.size)],
        "junk_removed_by_its_filter": [junk_ok, int(sum(planted[k].sum() for k in junk))],
    }
