"""The streaming mixture (jaxllm/data/stream.py): weighted draws, exact resume across formats and
epochs, reader shards split over processes, tokenizing on the fly, grain workers, clear errors.

One tiny corpus (24 documents, each starting with its marker "<aNN>", byte tokenizer, rows
of 16 tokens) written in every format the stream reads; a 3-document component whose epochs
end every row or two.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from array_record.python.array_record_module import ArrayRecordWriter

import jaxllm
from jaxllm.config import ConfigError
from jaxllm.data.clean import clean_text
from jaxllm.data.loader import DocumentStore, PackedSequences
from jaxllm.data.prepare import prepare
from jaxllm.data.shards import file_sha256
from jaxllm.data.stream import gather_states, make_stream, reader_shards, stream_plan
from jaxllm.data.stream_rows import KEYS, RowPacker, shard_documents
from jaxllm.data.tokenizer import ByteTokenizer
from jaxllm.errors import DataError
from jaxllm.train.task import Task
from tests.data_paths import TINY

T, B = 16, 4
MARKER = re.compile(rb"<a(\d\d)>")


def write_prepared_array_record(folder: Path, docs: list[str]) -> None:
    """A prepared dataset in the ArrayRecord shard format, written to its spec by hand: one record
    per document, its ids as little-endian uint16 bytes, group_size:1, two shards."""
    folder.mkdir()
    tok, shards = ByteTokenizer(), []
    for i, part in enumerate((docs[:10], docs[10:])):
        path = folder / f"train-{i:05d}.array_record"
        writer = ArrayRecordWriter(str(path), "group_size:1")
        ids = [tok.encode(clean_text(d)).astype("<u2") for d in part]
        for x in ids:
            writer.write(x.tobytes())
        writer.close()
        shards.append({"file": path.name, "docs": len(part), "tokens": sum(x.size for x in ids),
                       "sha256": file_sha256(path)})  # fmt: skip
    tokenizer = {"path": "byte", "identity": "byte", "vocab_size": 256, "bos_id": None, "eos_id": 0, "pad_id": 0,
                 "dtype": "uint16"}  # fmt: skip
    manifest = {"format": "jaxllm-shards", "version": 1, "shard_format": "array_record", "tokenizer": tokenizer,
                "splits": {"train": {"docs": len(docs), "shards": shards}, "val": {"docs": 0, "shards": []}},
                "sources": []}  # fmt: skip
    (folder / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    text, rng = TINY.read_text(encoding="utf-8"), np.random.default_rng(0)
    docs = [f"<a{i:02d}> " + text[i * 400 : i * 400 + int(rng.integers(4, 90))].strip() for i in range(24)]
    lines = [json.dumps({"text": d, "id": i}) for i, d in enumerate(docs)]
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    (root / "zst").mkdir()
    for part in (0, 1):  # two files: two blocks
        data = ("\n".join(lines[part * 12 : part * 12 + 12]) + "\n").encode()
        (root / "zst" / f"a-{part}.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    pq.write_table(pa.table({"id": list(range(24)), "text": docs}), root / "a.parquet", row_group_size=5)
    writer = ArrayRecordWriter(str(root / "a.array_record"), "group_size:1")
    for d in docs:
        writer.write(d.encode())
    writer.close()
    (root / "txt").mkdir()
    for i, d in enumerate(docs):
        (root / "txt" / f"a{i:02d}.txt").write_text(d)
    (root / "small.jsonl").write_text("".join(json.dumps({"text": f"<b{i}>x"}) + "\n" for i in range(3)))
    keep_all = ["data.val_fraction=0", "data.filters.min_chars=0", "data.dedup.exact=false", "data.dedup.near=false"]
    for name, fmt in (("bin", "bin"), ("ar-prepared", "array_record")):  # every document, in input order
        prepare(jaxllm.load_config("shakespeare-char", [f"data.inputs=[{root}/a.jsonl]", f"data.path={root}/{name}",
                f"data.shard_format={fmt}", "data.shard_tokens=400", *keep_all]), log=lambda _: None)  # fmt: skip
    write_prepared_array_record(root / "ar", docs)
    return SimpleNamespace(root=root, docs=docs)


def config(*parts, overrides=()):
    """shakespeare-char (byte ids) streaming `parts`: paths, or (path, weight) pairs."""
    mixture = [{"path": str(p), "weight": 1.0} if not isinstance(p, tuple) else {"path": str(p[0]), "weight": p[1]}
               for p in parts]  # fmt: skip
    return jaxllm.load_config("shakespeare-char", [f"data.seq_len={T}", f"train.batch_size={B}", "data.prefetch=0",
                              "data.stream_shards=2", f"data.mixture={json.dumps(mixture)}", *overrides])  # fmt: skip


def take(stream, n):
    out = []
    for _ in range(n):
        batch = next(stream)
        out.append((batch, stream.components.copy()))
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for (x, cx), (y, cy) in zip(a, b, strict=True):
        np.testing.assert_array_equal(cx, cy)
        for k in KEYS:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_rows_follow_the_loaders_contract(corpus):
    """Documents in PackedSequences' epoch order give exactly its rows (inputs, targets,
    segments, positions, mask), here as consecutive windows."""
    store = DocumentStore(corpus.root / "bin", "train")
    rows = PackedSequences(store, seq_len=T, seed=5, bos_id=None, eos_id=0, epochs=1)
    order, _, row_order = rows._epoch(0)
    import grain

    docs = grain.MapDataset.source([store.tokens(int(d), 0, int(store.lengths[d])) for d in order])
    packer = RowPacker(docs, len(order), T, None, 0, "test")
    mine = [packer.next_row() for _ in range(rows.rows_per_epoch)]
    for k in range(rows.rows_per_epoch):
        theirs = rows[k]
        for key in KEYS:
            np.testing.assert_array_equal(mine[int(row_order[k])][key], theirs[key], err_msg=key)


def test_rows_per_component_follow_the_weights_over_10k_batches(corpus):
    """Batches of one row (one reader shard), so 10k batches are 10k draws: each component's
    share is within 4.5 sigma of its normalized weight, and the draws are random, not grain's
    weighted interleave (which repeats one period of 8 for weights 1:2:5)."""
    weights = np.array([1.0, 2.0, 5.0])
    cfg = config((corpus.root / "bin", 1.0), (corpus.root / "a.jsonl", 2.0), (corpus.root / "small.jsonl", 5.0),
                 overrides=["train.batch_size=1", "data.stream_shards=1"])  # fmt: skip
    stream = make_stream(cfg)
    drawn = np.array([(next(stream), stream.components[0])[1] for _ in range(10_000)])
    counts, p = np.bincount(drawn, minlength=3), weights / weights.sum()
    sigma = np.sqrt(10_000 * p * (1 - p))
    assert np.all(np.abs(counts - 10_000 * p) < 4.5 * sigma), (counts, 10_000 * p, sigma)
    triples = {tuple(drawn[i : i + 3]) for i in range(drawn.size - 2)}
    assert len(triples) == 27, "every sequence of three components occurs (the rarest, 1/512, ~20 times)"


def test_kill_and_resume_mid_epoch_is_exact_for_every_format(corpus):
    r = corpus.root
    parts = [r / "bin", r / "ar", r / "a.jsonl", r / "a.parquet", r / "zst/*.jsonl.zst", r / "a.array_record",
             r / "txt/*.txt", (r / "small.jsonl", 0.5)]  # fmt: skip
    cfg = config(*parts)
    whole = take(make_stream(cfg), 40)
    first = make_stream(cfg)
    take(first, 17)
    state = json.loads(json.dumps(first.get_state()))  # through JSON, as the checkpoint holds it
    second = make_stream(cfg)
    second.set_state(state)
    assert_same(take(second, 23), whole[17:])
    # the smallest component (shard 0 reads 2 of its 3 documents, shard 1 one) crossed epochs in between
    small = [(state["shards"][s]["parts"][-1]["doc"], second.get_state()["shards"][s]["parts"][-1]["doc"])
             for s in ("0", "1")]  # fmt: skip
    assert small[0][1] // 2 > small[0][0] // 2 and small[1][1] > small[1][0], small
    assert state["shards"]["0"]["parts"][0]["offset"] or state["shards"]["1"]["parts"][0]["offset"], "mid-document"


def test_tokenizing_on_the_fly_equals_the_prepared_ids(corpus):
    """The same documents in the same order: prepared .bin and ArrayRecord ids (written to the
    format's spec here, and by prepare), raw JSONL, raw ArrayRecord text and .txt files
    tokenized on the fly give the same rows."""
    r = corpus.root
    streams = [take(make_stream(config(p)), 30) for p in (r / "bin", r / "ar", r / "ar-prepared", r / "a.jsonl",
                                                           r / "a.array_record", r / "txt/*.txt")]  # fmt: skip
    for other in streams[1:]:
        assert_same(other, streams[0])


@pytest.mark.parametrize("name", ["a.parquet", "zst/*.jsonl.zst"])
def test_block_sources_read_each_document_once_per_epoch_a_block_at_a_time(corpus, name):
    plan = stream_plan(config(corpus.root / name), shards=2)
    source = plan.components[0].source
    for shard in (0, 1):
        docs, n = shard_documents(plan, 0, shard)
        epochs = [[bytes(docs[e * n + j].astype(np.uint8)).decode() for j in range(n)] for e in (0, 1)]
        expected = sorted(clean_text(d) for d in corpus.docs[shard::2])
        assert sorted(epochs[0]) == sorted(epochs[1]) == expected
        assert epochs[0] != epochs[1], "each epoch has its own order"
        ids = [corpus.docs.index(d) for d in epochs[0]]
        blocks = np.searchsorted(source.blocks, ids, side="right")
        assert np.count_nonzero(np.diff(blocks)) == len(set(blocks)) - 1, "each block is read in one go"


def markers(batches, components, component=0):
    """The document markers in one component's rows (consecutive windows: their inputs are its stream)."""
    inputs = [b["inputs"][i] for b, c in zip(batches, components, strict=True) for i in np.flatnonzero(c == component)]
    return {int(m) for m in MARKER.findall(np.concatenate(inputs).astype(np.uint8).tobytes())}


def test_two_processes_read_disjoint_documents_and_make_the_one_process_stream(corpus):
    cfg = config(corpus.root / "bin", corpus.root / "a.jsonl")
    one = take(make_stream(cfg, process_count=1), 80)
    halves = [take(make_stream(cfg, process_index=p, process_count=2), 80) for p in (0, 1)]
    for (whole, comps), (b0, c0), (b1, c1) in zip(one, *halves, strict=True):
        assert b0["inputs"].shape == (B // 2, T)
        for k in KEYS:
            np.testing.assert_array_equal(np.concatenate([b0[k], b1[k]]), whole[k], err_msg=k)
        np.testing.assert_array_equal(np.concatenate([c0, c1]), comps)
    for c in (0, 1):  # process p (reader shard p) reads documents p, p+2, ...: all of them, and only those
        seen = [markers(*zip(*halves[p], strict=True), component=c) for p in (0, 1)]
        assert seen[0] == set(range(0, 24, 2)) and seen[1] == set(range(1, 24, 2)), seen


def test_resume_on_another_number_of_processes_continues_the_global_stream(corpus):
    cfg = config(corpus.root / "bin", corpus.root / "a.parquet")
    whole = take(make_stream(cfg, process_count=1), 20)
    single = make_stream(cfg, process_count=1)
    take(single, 7)
    state = single.get_state()
    halves = []
    for p in (0, 1):  # 1 process saved, 2 resume
        s = make_stream(cfg, process_index=p, process_count=2)
        s.set_state(state)
        halves.append(take(s, 13))
    for (w, _), (b0, _), (b1, _) in zip(whole[7:], *halves, strict=True):
        np.testing.assert_array_equal(np.concatenate([b0["inputs"], b1["inputs"]]), w["inputs"])
    two = [make_stream(cfg, process_index=p, process_count=2) for p in (0, 1)]
    for s in two:
        take(s, 11)
    local = [s.get_state() for s in two]  # one JAX process here: each holds only its own shard
    gathered = {**local[0], "shards": {**local[0]["shards"], **local[1]["shards"]}}
    with pytest.raises(DataError, match=r"no state for reader shards \[1\]"):
        make_stream(cfg, process_count=1).set_state(local[0])
    resumed = make_stream(cfg, process_count=1)  # 2 processes saved, 1 resumes
    resumed.set_state(gathered)
    assert_same(take(resumed, 9), whole[11:])


def test_gather_merges_every_process_shards():
    local = [{"0": {"row": 3, "parts": [{"doc": 1, "offset": 2}]}}, {"1": {"row": 3, "parts": [{"doc": 12345}]}}]
    encoded = [np.frombuffer(json.dumps(s).encode(), np.uint8) for s in local]

    def allgather(x):  # what each process would send, stacked: the lengths, then the padded buffers
        if x.dtype == np.int32:
            return np.array([[e.size] for e in encoded], np.int32)
        return np.stack([np.pad(e, (0, x.size - e.size)) for e in encoded])

    for p in (0, 1):
        assert gather_states(local[p], allgather) == {**local[0], **local[1]}


def test_worker_processes_give_the_in_process_stream_and_state(corpus):
    """Two grain workers (one reader shard each) resume from a state and give the in-process
    stream and states; one start of the workers (~2 s: each imports jaxllm)."""
    parts = (corpus.root / "bin", corpus.root / "a.jsonl")
    inline = make_stream(config(*parts))
    take(inline, 3)
    state = json.loads(json.dumps(inline.get_state()))
    expected = take(inline, 4)
    workers = make_stream(config(*parts, overrides=["data.num_workers=2", "data.prefetch=2"]))
    assert workers.workers == 2
    try:
        workers.set_state(state)
        assert_same(take(workers, 4), expected)
        assert workers.get_state() == inline.get_state()
    finally:
        workers.close()


def test_training_reads_the_mixture_without_a_prepared_data_path(corpus, tmp_path):
    cfg = config(corpus.root / "a.jsonl", overrides=[f"data.path={tmp_path}/none"])
    task = Task()
    assert task.has_val(cfg) is False
    batch = next(task.train_iter(cfg))
    assert batch["inputs"].shape == (B, T) and batch["inputs"].dtype == np.int32
    damaged = tmp_path / "bin"  # a prepared component changed in place: training refuses it, naming it
    damaged.mkdir()
    for f in (corpus.root / "bin").iterdir():
        damaged.joinpath(f.name).write_bytes(f.read_bytes())
    shard = damaged / "train-00000.bin"
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"data.mixture\[1\]: shard .*train-00000.bin is corrupt"):
        task.train_iter(config(corpus.root / "a.jsonl", damaged))


def test_clear_errors(corpus, tmp_path):
    r = corpus.root
    (tmp_path / "notes.md").write_text("x")
    (tmp_path / "bad.jsonl").write_text('{"body": "some text"}\n')
    (tmp_path / "folder").mkdir()
    (tmp_path / "mix.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "mix.txt").write_text("b")
    other = tmp_path / "other"  # the ArrayRecord dataset, as if prepared with another tokenizer
    other.mkdir()
    manifest = json.loads((r / "ar" / "manifest.json").read_text())
    manifest["tokenizer"] |= {"path": "/elsewhere/tok.model", "identity": "sentencepiece:0123"}
    (other / "manifest.json").write_text(json.dumps(manifest))
    for shard in manifest["splits"]["train"]["shards"]:
        (other / shard["file"]).write_bytes((r / "ar" / shard["file"]).read_bytes())
    cases = [
        (config(tmp_path / "nothing-*.jsonl"), r"data.mixture\[0\].path=.*matches no file"),
        (config(tmp_path / "notes.md"), r"notes.md, whose format jaxllm cannot stream; use .jsonl.zst"),
        (config(tmp_path / "bad.jsonl"), r"bad.jsonl line 1 has no string field 'text' \(it has 'body'\); set"),
        (config(r / "a.parquet", overrides=['data.mixture=[{path: "%s", field: body}]' % (r / "a.parquet")]),
         r"a.parquet has no column 'body' \(it has 'id', 'text'\)"),
        (config(tmp_path / "mix.*"), r"mix\.\*' mixes .jsonl, .txt files; make one mixture component per format"),
        (config(tmp_path / "folder"), r"is a folder without manifest.json, so not a prepared dataset"),
        (config(r / "a.jsonl", overrides=["data.stream_shards=3"]),
         r"train.batch_size=4 is not divisible by data.stream_shards=3.*one of \[1, 2, 4\]"),
        (config(r / "small.jsonl", overrides=["data.stream_shards=4"]),
         r"has 3 documents, fewer than the 4 reader shards"),
    ]
    for cfg, message in cases:
        with pytest.raises(DataError, match=message):
            next(make_stream(cfg))
    with pytest.raises(DataError, match=r"data.stream_shards=3 is not a multiple of the 2 processes"):
        reader_shards(config(r / "a.jsonl", overrides=["data.stream_shards=3"]), 2)
    with pytest.raises(DataError, match=r"was prepared with the tokenizer '/elsewhere/tok.model', not tokenizer.pa"):
        stream_plan(config(other), 2)


@pytest.mark.parametrize("override, message", [
    ('data.mixture=[{path: a, weight: 0}]', r"data.mixture\[0\].weight=0.0 must be positive and finite"),
    ('data.mixture=[{path: a}, {path: b, weight: -1}]', r"data.mixture\[1\].weight=-1.0 must be positive"),
    ('data.mixture=[{path: a, weight: .nan}]', r"data.mixture\[0\].weight=nan must be a finite number"),
    ('data.mixture=[{weight: 2}]', r"data.mixture\[0\].path is empty"),
    ("data.stream_shards=-1", r"data.stream_shards=-1 must be >= 0"),
])  # fmt: skip
def test_config_checks(override, message):
    with pytest.raises(ConfigError, match=message):
        jaxllm.load_config("shakespeare-char", [override])
