"""`jaxllm data prepare`: what is dropped and why, the split, atomicity, the shard format."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

import jaxllm
from jaxllm.cli import main
from jaxllm.data import shards as shards_mod
from jaxllm.data.clean import clean_text
from jaxllm.data.loader import DocumentStore
from jaxllm.data.prepare import load_manifest, prepare
from jaxllm.data.shards import Shard, ShardError, ShardWriter
from jaxllm.errors import DataError
from tests.data_paths import TINY

QUIET = {"log": lambda _: None}


def make_corpus(root):
    """30 distinct good documents plus planted junk, duplicates and broken inputs."""
    text = TINY.read_text(encoding="utf-8")
    good = [text[i * 3000 : i * 3000 + 2000] for i in range(30)]
    root.mkdir()
    for i, doc in enumerate(good):
        (root / f"good{i:02d}.txt").write_text(doc)
    # Planted copies sort after their originals (the first occurrence is the one kept).
    (root / "z_dup_exact.txt").write_text("  " + good[3].upper().replace(" ", "   ") + "\n")
    words = good[7].split(" ")
    words[100:115] = ["zzz"] * 10  # one edited passage (~5% of the words): estimated Jaccard ~0.9
    (root / "z_dup_near.txt").write_text(" ".join(words))
    (root / "junk_short.txt").write_text("hi")
    (root / "junk_symbols.txt").write_text("@#$%^&*()<>" * 300)
    (root / "junk_repeated.txt").write_text("BUY NOW\n" * 60)
    (root / "empty.txt").write_text("")
    (root / "latin1.txt").write_bytes(good[11][:500].encode() + b"caf\xe9 " + good[12][:600].encode())
    with open(root / "docs.jsonl", "w") as f:
        f.write(json.dumps({"text": good[0][::-1] + " reversed so it is new"}) + "\n")
        f.write("{not json\n")
        f.write(json.dumps({"other": "no text field"}) + "\n")
        f.write(json.dumps({"text": good[29][::-1]}) + "\n")
    return good


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    good = make_corpus(root / "raw")
    cfg = jaxllm.load_config(
        "shakespeare-char",
        [f"data.inputs=[{root}/raw/*.txt, {root}/raw/*.jsonl, {root}/raw/missing.txt]", f"data.path={root}/out",
         "data.val_fraction=0.2", "data.shard_tokens=8000", "data.split=document"],
    )  # fmt: skip
    prepare(cfg, **QUIET)
    return cfg, good, load_manifest(cfg.data.path)


def test_every_planted_problem_is_counted(prepared):
    _, _, m = prepared
    docs = m["documents"]
    assert docs["read"] == 30 + 2 + 3 + 1 + 2  # good, dups, junk, latin1, 2 jsonl docs (empty.txt yields none)
    # "kept" = passed the filters; dedup runs after them and removes 2 of these 35.
    assert docs["filtered"] == {"kept": 35, "too_short": 1, "too_long": 0, "low_alnum": 1, "repeated_lines": 1}
    assert docs["duplicates_removed"] == {"exact": 1, "near": 1}
    problems = m["problems"]
    assert [p.endswith("empty.txt") for p in problems["empty"]] == [True]
    assert [p.endswith("latin1.txt") for p in problems["non_utf8"]] == [True]
    assert problems["bad_json_lines"] == 2
    assert len(problems["unreadable"]) == 1 and "missing.txt" in problems["unreadable"][0]
    assert len(m["sources"]) == 38 and all(len(s["sha256"]) == 64 for s in m["sources"])
    assert m["tokenizer"]["identity"] == "byte" and m["settings"]["dedup"]["threshold"] == 0.8


def test_shards_hold_the_kept_documents_split_by_document(prepared):
    cfg, good, m = prepared
    texts = {}
    for split in ("train", "val"):
        store = DocumentStore(cfg.data.path, split, verify=True)
        texts[split] = {
            bytes(store.tokens(d, 0, int(store.lengths[d])).astype(np.uint8)).decode() for d in range(len(store))
        }
        assert m["splits"][split]["docs"] == len(store)
    assert not texts["train"] & texts["val"]
    assert {clean_text(g) for g in good} <= texts["train"] | texts["val"]  # stored as cleaned
    assert 2 <= len(texts["val"]) <= 14  # ~20% of 32
    assert len(m["splits"]["train"]["shards"]) > 1  # data.shard_tokens=8000 rolled shards


def test_split_is_deterministic_from_the_seed(prepared, tmp_path):
    cfg, _, m = prepared
    val_of = lambda manifest_cfg: {  # noqa: E731
        s["sha256"] for s in load_manifest(manifest_cfg.data.path)["splits"]["val"]["shards"]
    }
    again = jaxllm.load_config("shakespeare-char", [f"data.inputs={list(cfg.data.inputs)}", f"data.path={tmp_path}/a",
                                                   "data.val_fraction=0.2", "data.shard_tokens=8000",
                                                   "data.split=document"])  # fmt: skip
    prepare(again, **QUIET)
    assert val_of(again) == val_of(cfg)  # same seed: byte-identical validation shards
    other = jaxllm.load_config("shakespeare-char", [f"data.inputs={list(cfg.data.inputs)}", f"data.path={tmp_path}/b",
                                                   "data.val_fraction=0.2", "data.seed=7",
                                                   "data.split=document"])  # fmt: skip
    prepare(other, **QUIET)
    assert load_manifest(other.data.path)["splits"]["val"]["docs"] != 0
    assert val_of(other) != val_of(cfg)


def test_a_crash_leaves_the_previous_dataset_intact(prepared, tmp_path, monkeypatch):
    cfg, _, _ = prepared
    out = tmp_path / "ds"
    first = jaxllm.load_config("shakespeare-char", [f"data.inputs=[{TINY}]", f"data.path={out}"])
    prepare(first, **QUIET)
    before = (out / "manifest.json").read_text()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(shards_mod.ShardWriter, "close", boom)
    with pytest.raises(KeyboardInterrupt):
        prepare(
            jaxllm.load_config("shakespeare-char", [f"data.inputs={list(cfg.data.inputs)}", f"data.path={out}"]),
            **QUIET,
        )
    assert (out / "manifest.json").read_text() == before
    assert DocumentStore(out, "train", verify=True).lengths.sum() > 1_000_000  # old shards all there
    assert sorted(os.listdir(tmp_path)) == ["ds"]  # no temporary left behind


def test_removed_documents_are_tallied_with_examples(prepared):
    _, _, m = prepared
    removed = m["documents"]["removed"]
    assert {reason: r["docs"] for reason, r in removed.items()} == {
        "too_short": 1, "low_alnum": 1, "repeated_lines": 1, "exact_duplicate": 1, "near_duplicate": 1,
    }  # fmt: skip
    assert removed["too_short"] == {"docs": 1, "chars": 2, "examples": ["hi"]}
    assert removed["repeated_lines"]["examples"] == [("BUY NOW " * 13)[:97] + "..."]


def test_paragraph_documents_split_files_at_blank_lines(tmp_path):
    raw = tmp_path / "play.txt"
    speech = "HAMLET:\nTo be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer"
    raw.write_text(f"ACT I.\n\n{speech}\n \n\n[Exit.]\r\n\r\n{speech}\n\nOPHELIA:\nGood my lord, how does your honour?")
    cfg = jaxllm.load_config(
        "shakespeare-char",
        [f"data.inputs=[{raw}]", f"data.path={tmp_path}/p", "data.documents=paragraph", "data.split=document",
         "data.val_fraction=0.0"],
    )  # fmt: skip
    prepare(cfg, **QUIET)
    m = load_manifest(cfg.data.path)
    assert m["sources"][0]["docs"] == 5 and m["documents"]["read"] == 5
    assert m["documents"]["removed"]["too_short"]["examples"] == ["ACT I.", "[Exit.]"]
    assert m["documents"]["removed"]["exact_duplicate"]["docs"] == 1
    store = DocumentStore(cfg.data.path, "train")
    texts = [bytes(store.tokens(i, 0, int(store.lengths[i])).astype(np.uint8)).decode() for i in range(len(store))]
    assert texts == [speech, "OPHELIA:\nGood my lord, how does your honour?"]


def test_tail_split_holds_out_the_end_of_every_document(tmp_path):
    cfg = jaxllm.load_config("shakespeare-char", [f"data.inputs=[{TINY}]", f"data.path={tmp_path}/t", "data.split=tail",
                                                 "data.val_fraction=0.1"])  # fmt: skip
    prepare(cfg, **QUIET)
    text = clean_text(TINY.read_text(encoding="utf-8"))
    cut = round(len(text) * 0.9)
    for split, expected in (("train", text[:cut]), ("val", text[cut:])):
        store = DocumentStore(cfg.data.path, split)
        assert (
            len(store) == 1 and bytes(store.tokens(0, 0, int(store.lengths[0])).astype(np.uint8)).decode() == expected
        )


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="data.inputs is empty"):
        prepare(jaxllm.load_config("shakespeare-char", ["data.inputs=[]"]), **QUIET)
    with pytest.raises(DataError, match="no training documents"):
        prepare(jaxllm.load_config("shakespeare-char", [f"data.inputs=[{tmp_path}/nothing*.txt]",
                                                       f"data.path={tmp_path}/o"]), **QUIET)  # fmt: skip
    assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match="prepare it first"):
        DocumentStore(tmp_path / "never", "train")


def test_shard_round_trip_and_dtypes(tmp_path):
    docs = [np.array([1, 2, 3]), np.array([], dtype=np.int64), np.array([70000, 5])]
    w = ShardWriter(tmp_path / "s.bin", np.uint32)
    for d in docs:
        w.add(d)
    entry = w.close()
    shard = Shard(tmp_path / "s.bin", entry["sha256"])
    assert len(shard) == 3 and [shard[i].tolist() for i in range(3)] == [d.tolist() for d in docs]
    small = ShardWriter(tmp_path / "u16.bin", np.uint16)
    with pytest.raises(ShardError, match="does not fit"):
        small.add(np.array([70000]))


def test_truncated_or_corrupt_shards_are_clear_errors(prepared, tmp_path):
    cfg, _, m = prepared
    entry = m["splits"]["train"]["shards"][0]
    data = (Path(cfg.data.path) / entry["file"]).read_bytes()

    def shard_with(raw: bytes):
        path = tmp_path / "s.bin"
        path.write_bytes(raw)
        return path

    with pytest.raises(ShardError, match="truncated"):
        Shard(shard_with(data[:-10]))
    with pytest.raises(ShardError, match="truncated"):
        Shard(shard_with(data[:20]))
    with pytest.raises(ShardError, match="bad magic"):
        Shard(shard_with(b"XXXXXXXX" + data[8:]))
    flipped = bytearray(data)
    flipped[-5] ^= 0xFF
    assert Shard(shard_with(bytes(flipped))) is not None  # size and header still fine...
    with pytest.raises(ShardError, match="sha256"):
        Shard(shard_with(bytes(flipped)), entry["sha256"])  # ...but the checksum catches it


def test_cli_prepare_and_verify_report_a_truncated_shard(prepared, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["data", "prepare", "shakespeare-char", f"data.inputs=[{TINY}]", f"data.path={out}"]) == 0
    assert main(["data", "verify", "shakespeare-char", f"data.path={out}"]) == 0
    assert "checksums ok" in capsys.readouterr().out
    shard = out / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    assert main(["data", "verify", "shakespeare-char", f"data.path={out}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-00000.bin" in err[0] and "truncated" in err[0]
