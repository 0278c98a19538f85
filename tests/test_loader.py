"""The grain pipeline: packing, determinism, exact resume, per-process slices, global arrays."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.data.loader import DocumentStore, PackedSequences, global_batches, make_dataset
from jaxllm.data.prepare import prepare
from jaxllm.errors import DataError
from jaxllm.parallel.mesh import make_mesh
from tests.data_paths import TINY


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """~40 documents of very different lengths (a few tokens to ~6k), byte tokenizer."""
    root = tmp_path_factory.mktemp("pipe")
    text = TINY.read_text(encoding="utf-8")
    rng = np.random.default_rng(0)
    start = 0
    for i in range(40):
        n = int(rng.choice([25, 90, 400, 6000]))
        (root / f"doc{i:02d}.txt").write_text(f"[{i}] " + text[start : start + n].strip())
        start += n
    overrides = [f"data.inputs=[{root}/*.txt]", f"data.path={root}/prepared", "data.seq_len=64", "train.batch_size=8",
                 "data.filters.min_chars=1", "data.dedup.near=false"]  # fmt: skip
    cfg = jaxllm.load_config("shakespeare-char", overrides)
    prepare(cfg, log=lambda _: None)
    return cfg


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_rows_pack_every_document_exactly_once_per_epoch(dataset):
    """Un-permuting one epoch's rows gives back every document, each followed by EOS."""
    store = DocumentStore(dataset.data.path, "train")
    rows = PackedSequences(store, seq_len=64, seed=3, bos_id=None, eos_id=0, epochs=2)
    order, starts, row_order = rows._epoch(0)
    stream = np.zeros(rows.rows_per_epoch * 64 + 1, np.int64)
    for k in range(rows.rows_per_epoch):
        r = rows[k]
        j = int(row_order[k])
        stream[j * 64 : j * 64 + 64] = r["inputs"]
        stream[j * 64 + 1 : j * 64 + 65] = r["targets"]
    expected = np.concatenate([np.r_[store.tokens(int(d), 0, int(store.lengths[d])), 0] for d in order])
    np.testing.assert_array_equal(stream, expected[: stream.size])
    assert rows.rows_per_epoch == (expected.size - 1) // 64
    assert not np.array_equal(rows._epoch(1)[0], order), "each epoch has its own document order"


def test_segments_positions_and_target_mask(dataset):
    store = DocumentStore(dataset.data.path, "train")
    rows = PackedSequences(store, seq_len=64, seed=0, bos_id=None, eos_id=0, epochs=1)
    saw_boundary = False
    for k in range(len(rows)):
        r = rows[k]
        seg, pos, inputs, mask = r["segment_ids"], r["positions"], r["inputs"], r["target_mask"]
        assert seg[0] == 1 and np.all(np.diff(seg) >= 0) and np.all(np.diff(seg) <= 1)
        starts = np.r_[True, seg[1:] != seg[:-1]]
        assert np.all(pos[starts] == 0)  # positions restart at every fragment
        np.testing.assert_array_equal(pos[1:][~starts[1:]], pos[:-1][~starts[1:]] + 1)  # counts up inside a fragment
        # Only an EOS input is followed by another document: exactly those targets are masked.
        ends = np.r_[seg[1:] != seg[:-1], False]
        np.testing.assert_array_equal(mask[ends], 0)
        assert np.all(inputs[ends] == 0)
        assert np.all(mask[~ends][:-1] == 1)
        saw_boundary |= bool(ends.any())
    assert saw_boundary


def test_bos_is_prepended_when_the_tokenizer_has_one(dataset):
    store = DocumentStore(dataset.data.path, "train")
    rows = PackedSequences(store, seq_len=64, seed=0, bos_id=300, eos_id=301, epochs=1)
    r = next(rows[k] for k in range(len(rows)) if 300 in rows[k]["inputs"][1:])
    i = int(np.nonzero(r["inputs"][1:] == 300)[0][0]) + 1
    assert r["inputs"][i - 1] == 301 and r["segment_ids"][i] == r["segment_ids"][i - 1] + 1 and r["positions"][i] == 0
    assert r["target_mask"][i] == 1, "BOS -> first token is a real prediction"


def test_batches_are_deterministic_from_the_seed(dataset):
    a = take(iter(make_dataset(dataset)), 5)
    assert_batches_equal(a, take(iter(make_dataset(dataset)), 5))
    other = dataclass_replace(dataset, seed=1)
    assert not np.array_equal(a[0]["inputs"], next(iter(make_dataset(other)))["inputs"])


def dataclass_replace(cfg, **data_changes):
    import dataclasses

    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data_changes))


@pytest.mark.parametrize("n,m", [(0, 3), (7, 4), (40, 6)])  # 40 crosses an epoch boundary
def test_iterator_state_restore_is_exact(dataset, n, m):
    it = iter(make_dataset(dataset))
    take(it, n)
    state = it.get_state()
    expected = take(it, m)
    fresh = iter(make_dataset(dataset))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, m), expected)


def test_two_processes_read_disjoint_halves_of_the_global_batch(dataset):
    single = take(iter(make_dataset(dataset, process_index=0, process_count=1)), 6)
    p0 = take(iter(make_dataset(dataset, process_index=0, process_count=2)), 6)
    p1 = take(iter(make_dataset(dataset, process_index=1, process_count=2)), 6)
    for g, a, b in zip(single, p0, p1, strict=True):
        assert a["inputs"].shape == (4, 64)
        for k in g:
            np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), g[k], err_msg=k)
        rows_a = {r.tobytes() for r in a["inputs"]}
        assert not rows_a & {r.tobytes() for r in b["inputs"]}, "the processes' rows are disjoint"
    with pytest.raises(DataError, match="not divisible by the 3 processes"):
        make_dataset(dataset, process_index=0, process_count=3)


def test_worker_processes_give_the_same_batches_and_resume(dataset):
    cfg = dataclass_replace(dataset, num_workers=2)
    expected = take(iter(make_dataset(dataset)), 6)
    it = iter(make_dataset(cfg))
    assert_batches_equal(take(it, 3), expected[:3])
    state = it.get_state()
    fresh = iter(make_dataset(cfg))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 3), expected[3:])


def test_global_batch_is_a_sharded_array_the_model_consumes(dataset):
    mesh = make_mesh(jaxllm.load_config("shakespeare-char").mesh)  # data=-1: all 8 CPU devices
    assert mesh.shape["data"] == 8
    local = next(iter(make_dataset(dataset)))
    batch = next(global_batches(iter([local]), mesh))
    for k, v in batch.items():
        assert v.shape == (8, 64) and len(v.sharding.device_set) == 8
        assert v.sharding.spec[0] == ("data", "fsdp", "expert")
        np.testing.assert_array_equal(np.asarray(v), local[k])
    cfg = jaxllm.load_config("shakespeare-char", ["model.num_layers=1", "model.d_model=32", "model.num_heads=2"])
    params = jaxllm.init_params(cfg, jax.random.key(0))

    @jax.jit
    def loss(p, b):
        return jaxllm.loss(cfg, p, b["inputs"], b["targets"], target_mask=b["target_mask"],
                           positions=b["positions"], segment_ids=b["segment_ids"])  # fmt: skip

    loss_sum, count = loss(params, batch)
    assert bool(jnp.isfinite(loss_sum)) and float(count) == float(local["target_mask"].sum())


def test_too_little_data_is_a_clear_error(dataset):
    with pytest.raises(DataError, match="fewer than data.seq_len"):
        next(iter(make_dataset(dataclass_replace(dataset, seq_len=10_000_000))))
    with pytest.raises(DataError, match="split='test'"):
        DocumentStore(dataset.data.path, "test")


def test_epochs_limit_the_stream(dataset):
    rows = PackedSequences(DocumentStore(dataset.data.path, "train"), 64, 0, None, 0, epochs=1)
    n = len(list(itertools.islice(iter(make_dataset(dataset, epochs=1)), 10_000)))
    assert n == rows.rows_per_epoch // 8
