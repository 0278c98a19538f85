"""The Beam pipeline (`jaxllm data prepare --beam`) keeps the same documents and writes the
same shards, byte for byte, as the single-process path, on every input format."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

import jaxllm
from jaxllm.data.dedup import estimated_jaccard, first_occurrence_drops, jaccard, minhash_signature
from jaxllm.data.loader import DocumentStore
from jaxllm.data.pipeline import prepare_beam
from jaxllm.data.prepare import load_manifest, prepare

QUIET = {"log": lambda _: None}


def _words(rng: np.random.Generator, n: int) -> list[str]:
    return ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(3, 9))) for _ in range(n)]


def _edit_block(rng, words: list[str], start: int, length: int) -> list[str]:
    return words[:start] + _words(rng, length) + words[start + length :]


def planted_corpus(tmp_path, seed: int = 0) -> dict:
    """Documents in four formats with planted exact duplicates, near duplicates, a chain
    A~B~C with A !~ C (first-occurrence-wins keeps A and C), hard negatives and junk."""
    rng = np.random.default_rng(seed)
    docs, kinds = [], []
    for i in range(160):
        base = _words(rng, int(rng.integers(150, 250)))
        docs.append(" ".join(base))
        kinds.append("base")
        if i % 7 == 3:  # exact: another case and wrapping
            docs.append("\n".join(" ".join(base[k : k + 9]) for k in range(0, len(base), 9)).upper())
            kinds.append("exact")
        if i % 5 == 1:  # near: one block of 3 words replaced
            docs.append(" ".join(_edit_block(rng, base, 20, 2)))
            kinds.append("near")
        if i % 11 == 2:  # hard negative: a third of the words replaced
            docs.append(" ".join(_edit_block(rng, base, 5, len(base) // 3)))
            kinds.append("negative")
        if i % 13 == 4:  # a chain: B edits A at the start, C edits B at the end (J ~0.85 each, A-C ~0.74)
            b = _edit_block(rng, base, 0, 12)
            c = _edit_block(rng, b, len(b) - 13, 12)
            docs += [" ".join(b), " ".join(c)]
            kinds += ["chain-b", "chain-c"]
        if i % 17 == 5:
            docs.append("$$ %% ^^ && ** (( )) ## @@ !! ~~ ++ == -- __ ;; :: ..")
            kinds.append("junk")
    quarter = len(docs) // 4
    parts = [docs[:quarter], docs[quarter : 2 * quarter], docs[2 * quarter : 3 * quarter], docs[3 * quarter :]]
    lines = "".join(json.dumps({"text": d}) + "\n" for d in parts[0])
    (tmp_path / "a.jsonl").write_text(lines + '{"other": 1}\nnot json\n')  # two bad lines, reported
    zst = "".join(json.dumps({"text": d}) + "\n" for d in parts[1]).encode()
    (tmp_path / "b.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(zst))
    pq.write_table(pa.table({"text": parts[2]}), tmp_path / "c.parquet", row_group_size=16)
    (tmp_path / "d.txt").write_text("\n\n".join(parts[3]))
    return {"inputs": [str(tmp_path / n) for n in ("a.jsonl", "b.jsonl.zst", "c.parquet", "d.txt")],
            "docs": docs, "kinds": kinds}  # fmt: skip


def _config(corpus: dict, path, *extra: str):
    return jaxllm.load_config("shakespeare-char", [
        f"data.inputs={corpus['inputs']}", f"data.path={path}", "tokenizer.path=byte", "data.documents=paragraph",
        "data.split=document", "data.val_fraction=0.2", "data.shard_tokens=4000", "data.filters.min_chars=30",
        *extra])  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    return planted_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.mark.parametrize("shard_format", ["bin", "array_record"])
def test_pipeline_writes_the_single_process_shards_byte_for_byte(corpus, tmp_path, shard_format):
    single, beam = tmp_path / "single", tmp_path / "beam"
    prepare(_config(corpus, single, f"data.shard_format={shard_format}"), **QUIET)
    prepare_beam(_config(corpus, beam, f"data.shard_format={shard_format}"), **QUIET)
    a, b = load_manifest(single), load_manifest(beam)
    assert a["engine"] == "single-process" and b["engine"] == "beam"
    for key in ("splits", "documents", "problems", "sources"):
        assert a[key] == b[key], key
    assert len(a["splits"]["train"]["shards"]) >= 3  # the layout rule was exercised, not one shard
    for split in ("train", "val"):
        for entry in a["splits"][split]["shards"]:
            assert (single / entry["file"]).read_bytes() == (beam / entry["file"]).read_bytes()
    removed = a["documents"]["duplicates_removed"]
    kinds = corpus["kinds"]
    assert removed["exact"] == kinds.count("exact")
    assert a["problems"]["bad_json_lines"] == 2
    assert a["documents"]["filtered"]["low_alnum"] == kinds.count("junk")
    # near: every planted near duplicate (J ~0.95); of the chains, where the signatures confirm A~B and
    # B~C but not A~C, B is dropped and C kept (its only kept-side neighbour B went): the greedy case
    docs, cfg = corpus["docs"], _config(corpus, single).data.dedup
    sig = {i: minhash_signature(docs[i], cfg) for i, k in enumerate(kinds) if k.startswith("chain")}
    greedy = [i for i, k in enumerate(kinds) if k == "chain-b"
              and estimated_jaccard(sig[i], minhash_signature(docs[i - 1], cfg)) >= cfg.threshold
              and estimated_jaccard(sig[i], sig[i + 1]) >= cfg.threshold
              and estimated_jaccard(minhash_signature(docs[i - 1], cfg), sig[i + 1]) < cfg.threshold]  # fmt: skip
    assert len(greedy) >= 3
    assert removed["near"] >= kinds.count("near") + len(greedy)
    store_texts = set()
    for split in ("train", "val"):
        store = DocumentStore(single, split)
        store_texts |= {store.tokens(i, 0, int(store.lengths[i])).astype(np.uint8).tobytes().decode()
                        for i in range(len(store))}  # fmt: skip
    for text, kind in zip(corpus["docs"], kinds, strict=True):
        if kind in ("base", "negative"):
            assert text in store_texts, kind
    for b in greedy:
        assert docs[b] not in store_texts and docs[b + 1] in store_texts


def test_the_chain_is_the_greedy_case():
    """The planted chain is what makes resolution order matter: B ~ A and C ~ B, but C !~ A."""
    rng = np.random.default_rng(1)
    a = _words(rng, 200)
    b = _edit_block(rng, a, 0, 12)
    c = _edit_block(rng, b, len(b) - 13, 12)
    ja_b, jb_c, ja_c = (jaccard(" ".join(x), " ".join(y), 5) for x, y in ((a, b), (b, c), (a, c)))
    assert ja_b >= 0.8 and jb_c >= 0.8 and ja_c < 0.8
    assert first_occurrence_drops(np.array([[0, 1], [1, 2]])).tolist() == [1]  # C (2) kept: its neighbour B went
    assert first_occurrence_drops(np.array([[0, 1], [0, 2], [1, 2]])).tolist() == [1, 2]


def test_cli_prepare_beam_with_runner_flags(corpus, tmp_path):
    """`jaxllm data prepare CONFIG --beam --runner=... --direct_running_mode=in_memory`: Beam's own flags
    pass through, here the local runner in one process (docs/data.md says why not its multi-process
    mode); the shards match the single process's."""
    out = tmp_path / "cli"
    overrides = [f"data.inputs={corpus['inputs']}", f"data.path={out}", "tokenizer.path=byte",
                 "data.documents=paragraph", "data.shard_tokens=4000"]  # fmt: skip
    cmd = [sys.executable, "-m", "jaxllm.cli", "data", "prepare", "shakespeare-char", *overrides, "--beam",
           "--runner=DirectRunner", "--direct_running_mode=in_memory"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "documents read" in proc.stdout and "/s" in proc.stdout  # progress: documents/s and chars/s
    single = tmp_path / "single"
    prepare(jaxllm.load_config("shakespeare-char", [*overrides[:1], f"data.path={single}", *overrides[2:]]), **QUIET)
    assert load_manifest(out)["splits"] == load_manifest(single)["splits"]


def test_unknown_beam_flag_is_a_clear_error(corpus, tmp_path):
    cfg = _config(corpus, tmp_path / "x")
    with pytest.raises(Exception, match="no_such_flag"):
        prepare_beam(cfg, ["--no_such_flag=1"], **QUIET)
    assert not (tmp_path / "x").exists()


def test_a_runner_that_loses_documents_is_refused():
    """The counts the pipeline gathers must balance; a lost document or token is a DataError."""
    from types import SimpleNamespace

    from jaxllm.data.pipeline import check_accounting
    from jaxllm.errors import DataError

    def results(shard_docs: int, tokens: int) -> dict:
        return {"sources": [(0, SimpleNamespace(record={"docs": 10}), 0)],
                "removed": [("too_short", (2, 0, [])), ("exact_duplicate", (1, 0, [])), ("near_duplicate", (1, 0, []))],
                "tally": {"kept": 6, "parts": 6, "tokens": 600},
                "entries": [("train", 0, {"docs": shard_docs, "tokens": tokens})]}  # fmt: skip

    counts = {"kept": 8, "too_short": 2}
    check_accounting(results(6, 600), counts, 10)
    with pytest.raises(DataError, match=r"split parts tokenized 6 != documents in the shards 5"):
        check_accounting(results(5, 600), counts, 10)
    with pytest.raises(DataError, match=r"tokens tokenized 600 != tokens in the shards 590"):
        check_accounting(results(6, 590), counts, 10)
    with pytest.raises(DataError, match=r"documents in the input files 10 != documents judged 9"):
        check_accounting(results(6, 600), {"kept": 7, "too_short": 2}, 9)
