"""`jaxllm data prepare`: raw text -> cleaned, filtered, deduplicated, tokenized shards.

Steps, per document, in order (each counted in the manifest):
  read      text files (one file = one document, or with data.documents=paragraph each
            block between blank lines), globs, JSONL (.jsonl, .jsonl.zst) or parquet
            (one document a record, text in `data.jsonl_field`); see jaxllm.data.sources.
  clean     newline normalization, NUL removal (jaxllm.data.clean.clean_text)
  filter    length bounds, alphanumeric fraction, repeated-line ratio (data.filters)
  dedup     exact (hash of normalized text), then near (MinHash + LSH) (data.dedup)
  split     validation by document: a seeded hash of the normalized text, so a
            document's split does not depend on input order; or (data.split=tail)
            the last data.val_fraction of every document, nanoGPT's split, which
            a one-document corpus like tinyshakespeare needs
  tokenize  with the configured tokenizer, into shards of ~data.shard_tokens tokens
            (data.shard_format: jaxllm's .bin or ArrayRecord)

This module is the single-process path, the default for data that fits one machine. The
same stages run as an Apache Beam pipeline (jaxllm.data.pipeline, `jaxllm data prepare
--beam`) for corpora that do not; both take their per-document decisions from
jaxllm.data.stages and write the same shards byte for byte.

Atomicity: everything is written into a temporary directory beside `data.path`, the
manifest last; only then is the directory swapped into place. A crash leaves the old
dataset (if any) untouched and never a manifest that points at missing shards.

Safety: prepare replaces `data.path` only when it is absent, an empty folder or a complete
jaxllm dataset holding nothing but its own files (jaxllm.data.manifest); a corpus file, a
folder of notes or a dataset with extra files in it is refused before anything is touched.
Paths in the manifest are absolute, so a run prepared here can be used from any directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxllm.config import Config
from jaxllm.data import prepare_resume as resume
from jaxllm.data.clean import REASONS, FilterStats
from jaxllm.data.dedup import ExactDeduplicator, NearDeduplicator
from jaxllm.data.manifest import FORMAT, MANIFEST, check_replaceable, load_manifest, replace_dataset
from jaxllm.data.shards import token_dtype
from jaxllm.data.sources import ReadReport, expand_inputs, read_documents, read_numbered
from jaxllm.data.stages import (
    SPLITS,
    Removed,
    ShardRoller,
    build_manifest,
    judge,
    split_parts,
    tokenizer_entry,
    what_was_lost,
)
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.data.verified import VerifiedFiles
from jaxllm.errors import DataError

__all__ = ["FORMAT", "MANIFEST", "ReadReport", "expand_inputs", "load_manifest", "prepare", "read_documents"]
REMOVAL_ORDER = (*REASONS, "exact_duplicate", "near_duplicate")  # the manifest lists removals in this order


def prepare(cfg: Config, log: Callable[[str], None] = print, progress_every_s: float = 5.0,
            resume_every_s: float = 300.0) -> Path:  # fmt: skip
    """Run the whole preparation in this process; returns the manifest path. See the module docstring.

    After a shard closes, at most every `resume_every_s` seconds, the progress is saved so that a
    crashed run resumes where it was (jaxllm.data.prepare_resume)."""

    def fill(tmp: Path, tokenizer, state: dict | None) -> dict:
        return _prepare_into(tmp, cfg, tokenizer, log, progress_every_s, resume_every_s, state)

    return write_dataset(cfg, fill, log, resumable=True)


def write_dataset(cfg: Config, fill: Callable[[Path, Any, dict | None], dict], log: Callable[[str], None] = print,
                  resumable: bool = False) -> Path:  # fmt: skip
    """Check data.path may be replaced, let `fill(tmp, tokenizer, resume_state)` write the shards and
    manifest into a temporary folder beside it, then swap it into place; returns the manifest path.
    A failure removes the temporary folder, unless it holds a checkpoint to resume from, and
    leaves the old dataset as it was."""
    data = cfg.data
    if not data.inputs:
        raise DataError("data.inputs is empty; name text files, globs or .jsonl files, e.g. data.inputs=[corpus/*.txt]")
    out = Path(data.path)
    check_replaceable(out)  # before any work: a wrong data.path must cost nothing, and lose nothing
    tokenizer = load_tokenizer(cfg.tokenizer.path)
    out.parent.mkdir(parents=True, exist_ok=True)
    found = resume.find(out, resume.fingerprint(cfg, tokenizer.identity), log) if resumable else None
    if found is not None:
        tmp, state = found
        log(f"resuming the preparation saved in {tmp} at document {state['seen']:,}")
    else:  # a folder of our own, never a guess
        tmp, state = Path(tempfile.mkdtemp(prefix=resume.PREFIX.format(name=out.name), dir=out.parent)), None
    try:
        manifest = fill(tmp, tokenizer, state)
        (tmp / resume.RESUME).unlink(missing_ok=True)  # the dataset folder holds only the dataset's files
        replace_dataset(tmp, out, log)
    except BaseException:
        if (tmp / resume.RESUME).is_file():
            log(f"preparation stopped; its progress is saved in {tmp}: run the same command again to resume")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    for split in SPLITS:
        s = manifest["splits"][split]
        log(f"{split}: {s['docs']:,} documents, {s['tokens']:,} tokens in {len(s['shards'])} shards")
    log(f"wrote {out / MANIFEST}")
    return out / MANIFEST


def _prepare_into(tmp: Path, cfg: Config, tokenizer, log: Callable[[str], None], progress_every_s: float,
                  resume_every_s: float, state: dict | None) -> dict:  # fmt: skip
    data = cfg.data
    dtype = token_dtype(tokenizer.vocab_size)
    st = state or {
        "fingerprint": resume.fingerprint(cfg, tokenizer.identity),
        "next": 0, "seen": 0, "chars_in": 0, "tokens_out": 0, "seconds": 0.0,  # next: the doc_id to read on from
        "report": ReadReport(), "stats": FilterStats(), "removed": {},
        "exact": ExactDeduplicator() if data.dedup.exact else None,
        "near": NearDeduplicator(data.dedup) if data.dedup.near else None,
        "rollers": {split: ShardRoller(tmp, split, dtype, data.shard_tokens, data.shard_format) for split in SPLITS},
    }  # fmt: skip
    exact, near, removed, rollers, report = st["exact"], st["near"], st["removed"], st["rollers"], st["report"]
    start = last = saved = time.monotonic() - st["seconds"]
    shards_closed = sum(len(r.shards) for r in rollers.values())

    for doc, raw in read_numbered(data, report, start=st["next"]):
        st["seen"] += 1
        st["chars_in"] += len(raw)
        st["next"] = doc + 1
        text, reason, key = judge(raw, data)
        st["stats"].record(reason)
        if reason is not None:
            removed.setdefault(reason, Removed()).add(text)
            continue
        if exact is not None and exact.is_duplicate_key(key):
            removed.setdefault("exact_duplicate", Removed()).add(text)
            continue
        if near is not None and near.is_duplicate(text):
            removed.setdefault("near_duplicate", Removed()).add(text)
            continue
        for split, part in split_parts(text, key, data):
            ids = tokenizer.encode(part)
            rollers[split].add(ids)
            st["tokens_out"] += ids.size
        now = time.monotonic()
        closed = sum(len(r.shards) for r in rollers.values())
        if closed > shards_closed and now - saved >= resume_every_s:  # a shard just closed: a cheap point to save
            shards_closed, saved, st["seconds"] = closed, now, now - start
            resume.save(tmp, st)
        if now - last >= progress_every_s:
            last = now
            log(progress_line(st["seen"], st["chars_in"], st["tokens_out"], now - start))
    for roller in rollers.values():
        roller.flush()
    log(progress_line(st["seen"], st["chars_in"], st["tokens_out"], time.monotonic() - start, done=True))
    removed = {r: removed[r] for r in REMOVAL_ORDER if r in removed}
    splits = {split: roller.summary() for split, roller in rollers.items()}
    manifest = build_manifest(cfg, tokenizer_entry(cfg, tokenizer, dtype), splits, st["seen"], st["stats"].as_dict(),
                              removed, report, engine="single-process")  # fmt: skip
    return finish_dataset(tmp, manifest, removed, report, log)


def progress_line(docs: int, chars: int, tokens: int, seconds: float, done: bool = False) -> str:
    """Documents/s, characters/s and tokens/s so far: what a long preparation owes its user."""
    s = max(seconds, 1e-9)
    head = "  done: " if done else "  "
    return (f"{head}{docs:,} documents read ({docs / s:,.0f}/s, {chars / s / 1e6:.2f} M chars/s), "
            f"{tokens:,} tokens written ({tokens / s:,.0f}/s), {seconds:.1f} s")  # fmt: skip


def finish_dataset(tmp: Path, manifest: dict, removed: dict[str, Removed], report: ReadReport,
                   log: Callable[[str], None]) -> dict:  # fmt: skip
    """Report what was lost and why, refuse an empty training split, record the shards' checksums
    and write the manifest last (its presence means the shards are complete)."""
    for problem, items in (("unreadable", report.unreadable), ("empty", report.empty), ("non-UTF-8", report.non_utf8)):
        for item in items:
            log(f"warning: {problem} input: {item}")
    if report.bad_json_lines:
        field = manifest["settings"]["jsonl_field"]
        log(f"warning: {report.bad_json_lines} JSONL/parquet records without a string {field!r} field were skipped")
    docs = manifest["documents"]
    deduped = docs["duplicates_removed"]
    log(f"read {docs['read']:,} documents: filtered {docs['filtered']}, "
        f"exact duplicates {deduped['exact']:,}, near duplicates {deduped['near']:,}")  # fmt: skip
    for reason, r in removed.items():
        log(f"  {reason}: {r.docs:,} documents, {r.chars:,} characters, e.g.")
        for example in r.examples:
            log(f"    | {example}")
    if not manifest["splits"]["train"]["docs"]:
        lost = what_was_lost(docs["read"], docs["filtered"], deduped["exact"] + deduped["near"], report)
        raise DataError(f"no training documents survived preparation: {lost}")
    verified = VerifiedFiles(tmp)  # the hashes just computed: the first check_dataset need not read it all again
    for split in manifest["splits"].values():
        for entry in split["shards"]:
            verified.remember("shards", entry["file"], entry["sha256"], (tmp / entry["file"]).stat())
    for source in report.sources:
        verified.remember("sources", source["path"], source["sha256"], report.stats[source["path"]])
    verified.save(log)
    tmp_manifest = tmp / f".{MANIFEST}.tmp"
    tmp_manifest.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp_manifest, tmp / MANIFEST)  # written last: its presence means the shards are complete
    return manifest
