"""`jaxllm data prepare --beam`: corpus preparation as an Apache Beam pipeline.

The single process (jaxllm.data.prepare) holds every exact-dedup key and every kept
document's MinHash signature in memory (4.2 KB a document measured at 1M: 0.4 TB at 100M) and
uses one core. This pipeline runs the same stages on a distributed engine, so a corpus is
limited by the cluster, not one machine: the DirectRunner here (one process, or
`--direct_num_workers=N --direct_running_mode=multi_processing`), and Dataflow, Flink or
Spark unchanged by runner flags (docs/data.md says how). Why Beam and not Ray Data: dedup
is shuffles (group by exact key, group by LSH band), which are Beam's core primitive on
every runner, with the shuffle kept by the runner (Dataflow's shuffle service spills to
disk); and one pipeline runs on the portable runners users already operate.

The stages, and why the result is the single process's, byte for byte:

  read      one file per element; a document's id is (file index, index in file), so
            sorting by id is input order (jaxllm.data.sources)
  judge     clean, filter, exact key (jaxllm.data.stages.judge, the same function)
  exact     group by key; the smallest id survives: the streaming "first occurrence wins"
  near      signatures of the survivors; shuffle by (band, band hash): every bucket with
            two or more documents gives candidate pairs; each pair is checked against
            the full signatures (estimated Jaccard >= threshold); the confirmed pairs,
            read in input order, give exactly the documents the streaming index drops
            (dedup.first_occurrence_drops). No global index: memory per worker is one
            bucket, and the pairs are the duplicates, not the corpus.
  tokenize  the kept documents' split parts (jaxllm.data.stages.split_parts)
  layout    each split's token counts in input order fix where shards start (stages.
            shard_starts, ShardRoller's rule); that step holds 16 B a document
  write     group by shard; each shard written by one worker, documents in input order

The pipeline writes into the temporary folder that prepare swaps into place, which on a
cluster must be a filesystem every worker sees (NFS, a GCS FUSE mount).
"""

from __future__ import annotations

import argparse
import array
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import PipelineOptions

from jaxllm.config import Config, DataConfig
from jaxllm.data.clean import REASONS
from jaxllm.data.dedup import estimated_jaccard, first_occurrence_drops, minhash_signature
from jaxllm.data.prepare import REMOVAL_ORDER, finish_dataset, progress_line, write_dataset
from jaxllm.data.shards import shard_writer, token_dtype
from jaxllm.data.sources import ReadReport, doc_id, expand_inputs, read_source
from jaxllm.data.stages import (
    EXAMPLES_PER_REASON,
    SPLITS,
    Removed,
    build_manifest,
    example,
    judge,
    shard_starts,
    split_parts,
    tokenizer_entry,
)
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.errors import ConfigError, DataError

RESULTS = ".pipeline-results.pkl"  # what the workers found, for the driver to write the manifest from
COUNTERS = "jaxllm.prepare"  # the Beam metrics namespace: documents and bytes read, removed per stage


def prepare_beam(cfg: Config, beam_args: list[str] | tuple[str, ...] = (), log: Callable[[str], None] = print) -> Path:
    """Prepare `cfg.data` with the Beam pipeline; returns the manifest path. `beam_args` are
    Beam's own flags (--runner, --direct_num_workers, a Dataflow project...)."""
    return write_dataset(cfg, lambda tmp, tokenizer, _: _run(tmp, cfg, tokenizer, list(beam_args), log), log)


def _run(tmp: Path, cfg: Config, tokenizer, beam_args: list[str], log: Callable[[str], None]) -> dict:
    data = cfg.data
    report = ReadReport()
    files = [str(p) for p in expand_inputs(data.inputs, report)]
    dtype = token_dtype(tokenizer.vocab_size)
    args = beam_args if any(a.startswith("--runner") for a in beam_args) else ["--runner=DirectRunner", *beam_args]
    check_runner_flags(args)
    log(f"beam: {len(files)} input file(s), {' '.join(args)}")
    start = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(args)) as p:
        _build(p, files, cfg, str(tmp), dtype.name, verbose=log is print)
    seconds = time.monotonic() - start
    results = pickle.loads((tmp / RESULTS).read_bytes())
    (tmp / RESULTS).unlink()
    for _, source, _ in sorted(results["sources"], key=lambda s: s[0]):
        report.merge(source)
    counts = dict(results["counts"])
    read = sum(counts.values())
    check_accounting(results, counts, read)
    chars = sum(n for _, _, n in results["sources"])
    tokens = sum(e["tokens"] for _, _, e in results["entries"])
    log(progress_line(read, chars, tokens, seconds, done=True))
    filtered = {"kept": counts.get("kept", 0), **{r: counts.get(r, 0) for r in REASONS}}
    removed = {}
    for reason, (docs, n_chars, firsts) in results["removed"]:
        removed[reason] = Removed(docs, n_chars, [text for _, text in sorted(firsts)])
    removed = {r: removed[r] for r in REMOVAL_ORDER if r in removed}
    splits = {}
    for split in SPLITS:
        entries = [e for s, _, e in sorted(results["entries"], key=lambda x: (x[0], x[1])) if s == split]
        splits[split] = {"docs": sum(e["docs"] for e in entries), "tokens": sum(e["tokens"] for e in entries),
                         "shards": entries}  # fmt: skip
    manifest = build_manifest(cfg, tokenizer_entry(cfg, tokenizer, dtype), splits, read, filtered, removed, report,
                              engine="beam")  # fmt: skip
    return finish_dataset(tmp, manifest, removed, report, log)


def check_runner_flags(args: list[str]) -> None:
    """Refuse flags no Beam options class knows (Beam itself only warns and drops them, so a
    misspelt --num_workers would silently run a cluster job on the defaults)."""
    parser, seen = argparse.ArgumentParser(allow_abbrev=False, add_help=False), set()
    pending = [PipelineOptions]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                pending.append(sub)
                try:
                    sub._add_argparse_args(parser)
                except argparse.ArgumentError:  # two options classes declare one flag: it is known either way
                    pass
    unknown = [a for a in parser.parse_known_args(args)[1] if a.startswith("-")]
    if unknown:
        raise ConfigError(f"unknown Beam flag(s) {' '.join(unknown)}: no runner option has that name; check the "
                          "spelling against docs/data.md (the common ones) or Beam's pipeline options reference")


def check_accounting(results: dict, counts: dict, read: int) -> None:
    """Every document read is filtered, removed as a duplicate or written, and every token
    tokenized is in a shard: else the runner lost elements, and the dataset is refused
    (DataError; data.path untouched). Found necessary: on 1M documents the DirectRunner in
    multi_processing mode lost thousands of documents in some runs without any error."""
    in_files = sum(source.record.get("docs", 0) for _, source, _ in results["sources"])
    removed = {reason: docs for reason, (docs, _, _) in results["removed"]}
    tally = results["tally"]
    entries = [e for _, _, e in results["entries"]]
    written_parts, written_tokens = sum(e["docs"] for e in entries), sum(e["tokens"] for e in entries)
    deduped = removed.get("exact_duplicate", 0) + removed.get("near_duplicate", 0)
    checks = [
        ("documents in the input files", in_files, "documents judged", read),
        ("documents passing the filters less duplicates", counts.get("kept", 0) - deduped, "documents kept",
         tally.get("kept", 0)),
        ("split parts tokenized", tally.get("parts", 0), "documents in the shards", written_parts),
        ("tokens tokenized", tally.get("tokens", 0), "tokens in the shards", written_tokens),
    ]
    lost = [f"{a} {x:,} != {b} {y:,}" for a, x, b, y in checks if x != y]
    if lost:
        raise DataError("the Beam runner lost or duplicated elements (" + "; ".join(lost) + "); nothing was written "
                        "to data.path. Re-run; on the local runner, --direct_running_mode=in_memory avoids this")


class _Read(beam.DoFn):
    """(file index, path) -> (doc id, raw text) ..., and the file's findings on the 'source' output."""

    def __init__(self, data: DataConfig, verbose: bool):
        self.data, self.verbose = data, verbose
        self.docs = beam.metrics.Metrics.counter(COUNTERS, "documents_read")
        self.bytes = beam.metrics.Metrics.counter(COUNTERS, "bytes_read")

    def process(self, element: tuple[int, str]) -> Iterator[Any]:
        file_index, path = element
        start = time.monotonic()
        source, texts = read_source(Path(path), self.data)
        chars = 0
        for i, text in enumerate(texts):
            chars += len(text)
            yield doc_id(file_index, i), text
        self.docs.inc(source.record.get("docs", 0))
        self.bytes.inc(source.record.get("bytes", 0))
        if self.verbose:  # progress on the worker's console: on a cluster, the runner's UI shows the counters
            docs, s = source.record.get("docs", 0), max(time.monotonic() - start, 1e-9)
            print(f"  read {path}: {docs:,} documents, {source.record.get('bytes', 0) / 1e6:.1f} MB "
                  f"({docs / s:,.0f} documents/s)", file=sys.stderr, flush=True)  # fmt: skip
        yield beam.pvalue.TaggedOutput("source", (file_index, source, chars))


class _RemovedCombine(beam.CombineFn):
    """(doc id, text) -> (documents, characters, the first examples by doc id): `Removed`, in parallel."""

    def create_accumulator(self) -> tuple[int, int, list]:
        return 0, 0, []

    def add_input(self, acc, element):
        docs, chars, firsts = acc
        doc, text = element
        firsts = sorted([*firsts, (doc, example(text))])[:EXAMPLES_PER_REASON]
        return docs + 1, chars + len(text), firsts

    def merge_accumulators(self, accs):
        docs = sum(a[0] for a in accs)
        chars = sum(a[1] for a in accs)
        firsts = sorted(f for a in accs for f in a[2])[:EXAMPLES_PER_REASON]
        return docs, chars, firsts

    def extract_output(self, acc):
        return acc


class _Lengths(beam.CombineFn):
    """(doc id, tokens) of one split -> int64 (n, 2) sorted by doc id, 16 B a document."""

    def create_accumulator(self):
        return array.array("q"), array.array("q")

    def add_input(self, acc, element):
        acc[0].append(element[0])
        acc[1].append(element[1])
        return acc

    def merge_accumulators(self, accs):
        ids, ns = array.array("q"), array.array("q")
        for a in accs:
            ids.extend(a[0])
            ns.extend(a[1])
        return ids, ns

    def extract_output(self, acc):
        pairs = np.stack([np.frombuffer(acc[0], np.int64), np.frombuffer(acc[1], np.int64)], axis=1)
        return pairs[np.argsort(pairs[:, 0], kind="stable")] if len(pairs) else pairs.reshape(0, 2)


def _exact_pick(element, exact: bool) -> Iterator[Any]:
    """A group of documents with one exact key: the first in input order survives."""
    key, docs = element
    docs = sorted(docs)
    if not exact:
        for doc, text in docs:
            yield doc, text, key
        return
    yield docs[0][0], docs[0][1], key
    for doc, text in docs[1:]:
        yield beam.pvalue.TaggedOutput("removed", ("exact_duplicate", (doc, text)))


def _bands(element, cfg) -> Iterator[Any]:
    """A survivor's LSH band keys (band, band bytes) -> doc id; its signature on the 'sig' output."""
    doc, text, _ = element
    sig = minhash_signature(text, cfg)
    rows = cfg.num_perm // cfg.bands
    for b in range(cfg.bands):
        yield (b, sig[b * rows : (b + 1) * rows].tobytes()), doc
    yield beam.pvalue.TaggedOutput("sig", (doc, sig.tobytes()))


def _pairs(element) -> Iterator[tuple[int, int]]:
    """Every pair (i < j) of one LSH bucket: the candidates the streaming index would compare."""
    _, docs = element
    docs = sorted(set(docs))
    for a in range(len(docs)):
        for b in range(a + 1, len(docs)):
            yield docs[a], docs[b]


def _confirm(element, threshold: float) -> Iterator[tuple[int, int]]:
    """A candidate pair with both signatures -> the pair if their estimated Jaccard reaches the threshold."""
    pair, sigs = element
    sigs = [np.frombuffer(s, np.uint32) for _, s in sorted(sigs)]
    if len(sigs) == 2 and estimated_jaccard(sigs[0], sigs[1]) >= threshold:
        yield pair


def _route_sigs(element) -> Iterator[Any]:
    """doc -> {its signature, the pairs that want it} ==> (pair, (doc, signature)) per pair."""
    doc, grouped = element
    for sig in grouped["sig"]:
        for pair in grouped["want"]:
            yield pair, (doc, sig)


class _Tokenize(beam.DoFn):
    """A kept document -> ((split), (doc id, token bytes)) per split part."""

    def __init__(self, cfg: Config, dtype: str):
        self.cfg, self.dtype = cfg, np.dtype(dtype)
        self.tokens = beam.metrics.Metrics.counter(COUNTERS, "tokens_written")

    def setup(self) -> None:
        self.tokenizer = load_tokenizer(self.cfg.tokenizer.path)

    def process(self, element) -> Iterator[Any]:
        doc, text, key = element
        for split, part in split_parts(text, key, self.cfg.data):
            ids = np.asarray(self.tokenizer.encode(part))
            self.tokens.inc(int(ids.size))
            yield split, (doc, ids.astype(self.dtype).tobytes())


def _shard_of(element, starts: dict) -> tuple:
    split, (doc, tokens) = element
    first_docs = starts[split]
    return (split, int(np.searchsorted(first_docs, doc, side="right") - 1)), (doc, tokens)


class _WriteShard(beam.DoFn):
    """(split, shard number) -> its documents -> the shard file, documents in input order."""

    def __init__(self, out: str, dtype: str, shard_format: str):
        self.out, self.dtype, self.shard_format = out, np.dtype(dtype), shard_format

    def process(self, element) -> Iterator[Any]:
        (split, number), docs = element
        writer = shard_writer(Path(self.out), split, number, self.dtype, self.shard_format)
        for _, tokens in sorted(docs, key=lambda d: d[0]):
            writer.add(np.frombuffer(tokens, self.dtype))
        yield split, number, writer.close()


def _write_results(entries, out: str, removed, sources, counts, tally) -> None:
    payload = {"entries": entries, "removed": removed, "sources": sources, "counts": counts, "tally": dict(tally)}
    (Path(out) / RESULTS).write_bytes(pickle.dumps(payload))


def _build(p: beam.Pipeline, files: list[str], cfg: Config, out: str, dtype: str, verbose: bool) -> None:
    data, dedup = cfg.data, cfg.data.dedup
    read = (p | "files" >> beam.Create(list(enumerate(files))) | "spread files" >> beam.Reshuffle()
            | "read" >> beam.ParDo(_Read(data, verbose)).with_outputs("source", main="docs"))  # fmt: skip
    judged = read.docs | "judge" >> beam.Map(lambda d: (d[0], *judge(d[1], data)))
    counts = (judged | "verdict" >> beam.Map(lambda j: j[2] or "kept")
              | "count verdicts" >> beam.combiners.Count.PerElement())  # fmt: skip
    filtered = judged | "filtered" >> beam.Filter(lambda j: j[2] is not None)
    removed = [filtered | "filter removals" >> beam.Map(lambda j: (j[2], (j[0], j[1])))]
    passing = judged | "passing" >> beam.Filter(lambda j: j[2] is None)
    exact = (passing | "by exact key" >> beam.Map(lambda j: (j[3], (j[0], j[1]))) | "group exact" >> beam.GroupByKey()
             | "first of each key" >> beam.FlatMap(_exact_pick, dedup.exact).with_outputs("removed", main="kept"))
    removed.append(exact.removed)
    survivors = exact.kept
    if dedup.near:
        banded = survivors | "bands" >> beam.FlatMap(_bands, dedup).with_outputs("sig", main="bands")
        pairs = (banded.bands | "group bands" >> beam.GroupByKey() | "candidate pairs" >> beam.FlatMap(_pairs)
                 | "distinct pairs" >> beam.Distinct())  # fmt: skip
        wants = pairs | "want sigs" >> beam.FlatMap(lambda pr: [(pr[0], pr), (pr[1], pr)])
        edges = (
            {"sig": banded.sig, "want": wants} | "join sigs" >> beam.CoGroupByKey()
            | "route sigs" >> beam.FlatMap(_route_sigs) | "group pairs" >> beam.GroupByKey()
            | "confirm" >> beam.FlatMap(_confirm, dedup.threshold)
        )  # fmt: skip
        drops = (edges | "all pairs" >> beam.combiners.ToList()
                 | "resolve" >> beam.FlatMap(lambda e: first_occurrence_drops(np.array(e, np.int64).reshape(-1, 2))
                                             .tolist()))  # fmt: skip
        flagged = survivors | "flag near" >> beam.Map(lambda s, d: (s, s[0] in d), d=beam.pvalue.AsSingleton(
            drops | "drop set" >> beam.combiners.ToSet()))  # fmt: skip
        removed.append(flagged | "near dropped" >> beam.Filter(lambda f: f[1])
                       | "near removals" >> beam.Map(lambda f: ("near_duplicate", (f[0][0], f[0][1]))))  # fmt: skip
        survivors = flagged | "near kept" >> beam.Filter(lambda f: not f[1]) | "unflag" >> beam.Map(lambda f: f[0])
    tokenized = survivors | "tokenize" >> beam.ParDo(_Tokenize(cfg, dtype))
    tally = [  # what went into the last stages, to check against what came out of them (check_accounting)
        survivors | "count kept" >> beam.combiners.Count.Globally() | "kept" >> beam.Map(lambda n: ("kept", n)),
        tokenized | "count parts" >> beam.combiners.Count.Globally() | "parts" >> beam.Map(lambda n: ("parts", n)),
        (tokenized | "part tokens" >> beam.Map(lambda t: len(t[1][1]) // np.dtype(dtype).itemsize)
         | "sum tokens" >> beam.CombineGlobally(sum) | "tokens" >> beam.Map(lambda n: ("tokens", n))),
    ]
    starts = (tokenized | "lengths" >> beam.Map(lambda t: (t[0], (t[1][0], len(t[1][1]) // np.dtype(dtype).itemsize)))
              | "per split" >> beam.CombinePerKey(_Lengths())
              | "shard starts" >> beam.Map(lambda s: (s[0], s[1][shard_starts(s[1][:, 1], data.shard_tokens), 0])))
    entries = (tokenized | "shard of" >> beam.Map(_shard_of, starts=beam.pvalue.AsDict(starts))
               | "group shards" >> beam.GroupByKey()
               | "write shards" >> beam.ParDo(_WriteShard(out, dtype, data.shard_format)))  # fmt: skip
    removed_stats = (removed | "all removals" >> beam.Flatten()
                     | "sum removals" >> beam.CombinePerKey(_RemovedCombine()))  # fmt: skip
    _ = (entries | "entries" >> beam.combiners.ToList()
         | "results" >> beam.Map(_write_results, out=out, removed=beam.pvalue.AsList(removed_stats),
                                 sources=beam.pvalue.AsList(read.source), counts=beam.pvalue.AsList(counts),
                                 tally=beam.pvalue.AsList(tally | "tally" >> beam.Flatten())))
