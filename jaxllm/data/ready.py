"""Make a config's data exist: train its tokenizer and prepare its shards if missing.

This is what lets `jaxllm train shakespeare-char-cpu` be the first command on a fresh
machine: a preset names its inputs, tokenizer file and dataset directory, and
whatever is not there yet is built once, with the same code as the explicit
`jaxllm tokenizer train` and `jaxllm data prepare` verbs.

What is there already is checked against its manifest (`check_dataset`): training reads
the shards, never the inputs, so other inputs, a re-trained tokenizer or a shard damaged
in place would otherwise train on the wrong tokens without a word.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxllm.config import Config
from jaxllm.data.clean import clean_text
from jaxllm.data.manifest import MANIFEST, load_manifest
from jaxllm.data.prepare import ReadReport, expand_inputs, prepare, read_documents
from jaxllm.data.shards import ShardError, file_sha256
from jaxllm.data.tokenizer import SentencePieceTokenizer, train_sentencepiece
from jaxllm.data.verified import VerifiedFiles, VerifyItem
from jaxllm.errors import DataError

REBUILD = "rebuild the dataset with `jaxllm data prepare CONFIG`"
BACK_INPUTS = "or set data.inputs back to the files it was prepared from"


def train_tokenizer(cfg: Config, log: Callable[[str], None] = print) -> SentencePieceTokenizer:
    """Train `cfg.tokenizer` on the cleaned documents of `cfg.data.inputs`."""
    if cfg.tokenizer.path == "byte":
        raise DataError("tokenizer.path=byte needs no training; set tokenizer.path=FILE.model to write a model")
    if not cfg.data.inputs:
        raise DataError("data.inputs is empty; name the text files to train on, e.g. data.inputs=[corpus/*.txt]")
    report = ReadReport()
    tok = train_sentencepiece((clean_text(d) for d in read_documents(cfg.data, report)), cfg.tokenizer,
                              cfg.tokenizer.path, log=log)  # fmt: skip
    for path in report.unreadable + report.empty:
        log(f"warning: skipped {path}")
    return tok


def ensure_data(cfg: Config, log: Callable[[str], None] = print) -> None:
    """Build the tokenizer and the prepared dataset if they do not exist yet; check an existing dataset."""
    if cfg.tokenizer.path != "byte" and not Path(cfg.tokenizer.path).exists():
        log(f"tokenizer {cfg.tokenizer.path} does not exist yet: training it on data.inputs")
        train_tokenizer(cfg, log)
    if (Path(cfg.data.path) / MANIFEST).is_file():
        check_dataset(cfg, log)
    elif cfg.data.mixture and not cfg.data.inputs:  # the stream reads the mixture; nothing to prepare
        log(f"training on data.mixture alone: {cfg.data.path} holds no prepared dataset, so no validation split")
    else:
        log(f"{cfg.data.path} has no prepared dataset yet: preparing it from data.inputs")
        prepare(cfg, log)  # refuses, touching nothing, a data.path that is a file or a folder of something else


def check_dataset(cfg: Config, log: Callable[[str], None] = print) -> dict[str, Any]:
    """The manifest of `cfg.data.path`, once the dataset is checked to be what the config describes:
    prepared from the files `data.inputs` names, as they are now (skipped when data.inputs is empty: a
    ready-made dataset), with the tokenizer at `tokenizer.path`, and with every shard's bytes as recorded.
    A DataError names what changed and the fix. Shards and inputs are hashed once and remembered
    (jaxllm.data.verified), so this is cheap from the second start on."""
    path = Path(cfg.data.path)
    manifest = load_manifest(path)
    _check_tokenizer(cfg, manifest)
    sources = _source_items(cfg, manifest, log) if cfg.data.inputs else []
    shards = [
        ("shards", e["file"], path / e["file"], e["sha256"]) for s in manifest["splits"].values() for e in s["shards"]
    ]
    for _, _, shard, _ in shards:
        if not shard.is_file():
            raise ShardError(f"shard {shard} is missing; {REBUILD}")
    verified = VerifiedFiles(path)
    # training reads every shard; an input that did not change since it was last hashed need not be read again
    locked = [item for item in sources + shards if not os.access(item[2], os.R_OK)
              and (item[0] == "shards" or not verified.is_current(*item))]  # fmt: skip
    if locked:
        skip = ", or set data.inputs=[] to train on the prepared shards without checking the inputs"
        raise DataError(
            f"{_few([str(p) for _, _, p, _ in locked])} cannot be read (permission denied), so data.path="
            f"{cfg.data.path!r} cannot be checked or used; make it readable again"
            + (skip if all(section == "sources" for section, *_ in locked) else "")
        )
    try:
        bad = verified.verify(sources + shards, log)  # one pass, one progress report
    finally:
        verified.save(log)  # what did verify is remembered even when something else failed
    if changed := [f"{p} (same size, other bytes)" for section, _, p, _ in bad if section == "sources"]:
        raise _inputs_changed(cfg, changed)
    if bad:
        raise ShardError(
            f"shard {_few([str(p) for _, _, p, _ in bad])} is corrupt: its bytes differ from the sha256 the manifest "
            f"records (changed in place since it was prepared, or a bad disk); {REBUILD}"
        )
    return manifest


def _check_tokenizer(cfg: Config, manifest: dict[str, Any]) -> None:
    recorded = manifest["tokenizer"]
    identity, where = str(recorded["identity"]), f"data.path={cfg.data.path!r}"
    back = f"or set tokenizer.path back to {recorded['path']!r}, the one it was prepared with"
    if cfg.tokenizer.path == "byte" or identity == "byte":
        if cfg.tokenizer.path != "byte" or identity != "byte":
            used = "the byte tokenizer" if identity == "byte" else f"{recorded['path']!r}"
            raise DataError(
                f"{where} was prepared with {used}, but tokenizer.path={cfg.tokenizer.path!r}; {REBUILD}, {back}"
            )
        return
    tok = Path(cfg.tokenizer.path)
    if not tok.is_file():
        raise DataError(f"tokenizer.path={cfg.tokenizer.path!r} does not exist; {back}")
    recorded_sha, actual_sha = identity.rpartition(":")[2], file_sha256(tok)
    if actual_sha != recorded_sha:
        raise DataError(
            f"tokenizer.path={cfg.tokenizer.path!r} is not the tokenizer {where} was prepared with (sha256 "
            f"{actual_sha[:12]}..., the manifest records {recorded_sha[:12]}... for {recorded['path']!r}): it was "
            f"re-trained or replaced since; {REBUILD} (with this tokenizer), {back}"
        )


def _source_items(cfg: Config, manifest: dict[str, Any], log: Callable[[str], None]) -> list[VerifyItem]:
    """The inputs to hash, once the names and sizes match what the dataset was prepared from."""
    recorded = {os.path.abspath(s["path"]): s for s in manifest["sources"]}  # old manifests: relative to here
    # an unreadable file was left out of the dataset (prepare reports it), unless it was read then and locked since
    matched = [str(p) for p in expand_inputs(cfg.data.inputs, ReadReport())]
    named = [p for p in matched if os.access(p, os.R_OK) or p in recorded]
    added = [p for p in named if p not in recorded]
    dropped = [p for p in recorded if p not in named and os.path.exists(p)]
    gone = [p for p in recorded if not os.path.exists(p)]
    where = f"data.path={cfg.data.path!r}"
    if added or dropped:
        change = [f"data.inputs now also names {_few(added)}"] if added else []
        change += [f"no longer names {_few(dropped)}"] if dropped else []
        raise DataError(f"{where} was prepared from other files: {', and '.join(change)}; {REBUILD}, {BACK_INPUTS}")
    if gone:
        log(f"warning: {len(gone)} of the files {where} was prepared from no longer exist ({_few(gone)}); "
            "training reads the prepared shards, so it goes on")  # fmt: skip
    present = [(p, recorded[p]) for p in recorded if p not in gone]
    if resized := [f"{p} ({s['bytes']:,} bytes then, {os.path.getsize(p):,} now)" for p, s in present
                   if os.path.getsize(p) != s["bytes"]]:  # fmt: skip
        raise _inputs_changed(cfg, resized)
    return [("sources", p, Path(p), s["sha256"]) for p, s in present]


def _inputs_changed(cfg: Config, changes: list[str]) -> DataError:
    return DataError(f"data.path={cfg.data.path!r} was prepared from other contents of {_few(changes)}: the input "
                     f"changed since; {REBUILD}, {BACK_INPUTS}")  # fmt: skip


def _few(items: list[str], most: int = 3) -> str:
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")
