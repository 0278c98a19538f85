"""`jaxllm data fetch | prepare | synthetic | verify`: corpora in, verified shards out, and
small synthetic task sets with checkable answers for post-training and evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from jaxllm.cli.args import OVERRIDE, bounded, config_args, positive
from jaxllm.config import load_config
from jaxllm.errors import ConfigError, DataError


def _data_fetch(args: argparse.Namespace) -> None:
    from jaxllm.data.fetch import fetch  # slow import (the data layer)

    fetch(args.name, args.out, from_dir=args.from_dir)


def _data_prepare(args: argparse.Namespace) -> None:
    overrides = [*args.overrides, *(x for x in args.extra if OVERRIDE.match(x))]
    runner_flags = [x for x in args.extra if not OVERRIDE.match(x)]
    cfg = load_config(args.config, overrides)
    if args.beam:
        from jaxllm.data.pipeline import prepare_beam  # slow import (Apache Beam)

        prepare_beam(cfg, runner_flags)
        return
    if runner_flags:
        raise ConfigError(f"unrecognized arguments: {' '.join(runner_flags)}; Beam runner flags such as --runner "
                         "need --beam (`jaxllm data prepare CONFIG --beam --runner=DirectRunner ...`)")  # fmt: skip
    from jaxllm.data.prepare import prepare  # slow import (the data layer)

    prepare(cfg)


def _data_verify(args: argparse.Namespace) -> None:
    from jaxllm.data.loader import DocumentStore  # slow import (the data layer)

    cfg = load_config(args.config, args.overrides)
    for split in ("train", "val"):
        store = DocumentStore(cfg.data.path, split, verify=True)
        print(f"{split}: {len(store):,} documents, {int(store.lengths.sum()):,} tokens, checksums ok")


def _cloze_records(args: argparse.Namespace) -> list[dict]:
    """Lines of --file (its last --tail fraction) cut in two, for `jaxllm eval mc`."""
    from jaxllm.evaluate.cloze import make_cloze  # slow import (the apps layer)
    from jaxllm.posttrain.data import read_utf8  # slow import (the posttrain layer)

    if not args.file:
        raise DataError("cloze records are cut from a text file; name one with --file")
    if not 0 < args.tail <= 1:
        raise DataError(f"--tail {args.tail}: give the fraction of the file to use, in (0, 1], e.g. 0.1")
    text = read_utf8(args.file, "--file")
    text = text[int(len(text) * (1 - args.tail)) :]
    try:
        return make_cloze(text, args.n, args.choices, args.seed, args.distractors)
    except ValueError as e:
        raise DataError(f"{args.file}: {e}") from None


def _task_records(args: argparse.Namespace) -> list[dict]:
    """Instruction or preference records, none of whose prompts is in an --exclude file."""
    from jaxllm.posttrain.data import load_records  # slow import (the posttrain layer)
    from jaxllm.posttrain.synthetic import KINDS, make_preference_records, make_records  # slow import

    bad = [k for k in args.kinds if k not in KINDS]
    if bad:
        raise DataError(f"--kinds {' '.join(bad)}: unknown; choose from {', '.join(KINDS)}")
    exclude = set()
    for path in args.exclude:
        if not Path(path).is_file():
            raise DataError(f"--exclude {path}: no such file")
        exclude |= {(r.get("instruction"), r.get("input")) for r in load_records(path)}
    # Draw more until dropping the excluded prompts still leaves n records (the same seed
    # always gives the same leading records, so the result depends on (n, seed, exclude) only).
    draw, records = args.n, []
    while len(records) < args.n:
        if draw > 100 * (args.n + len(exclude)):
            raise DataError(f"--exclude leaves too few distinct prompts for --n {args.n}; lower --n")
        if args.kind == "preferences":
            pool = make_preference_records(draw, args.seed, args.kinds, args.off_task)
        else:
            pool = make_records(draw, args.seed, args.kinds)
        records = [r for r in pool if (r["instruction"], r["input"]) not in exclude][: args.n]
        draw *= 2
    return records


def _data_synthetic(args: argparse.Namespace) -> None:
    records = _cloze_records(args) if args.kind == "cloze" else _task_records(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"wrote {len(records):,} {args.kind} records to {args.out}; e.g. {json.dumps(records[0])}")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `data fetch | prepare | synthetic | verify` to the `jaxllm` verbs."""
    data = verbs.add_parser("data", help="fetch and prepare corpora").add_subparsers(dest="action", required=True)
    fetch = data.add_parser("fetch", help="download a registered corpus and verify its checksum")
    fetch.add_argument("name", help="tinyshakespeare | shakespeare")
    fetch.add_argument("--out", required=True, help="directory to put it in")
    fetch.add_argument("--from", dest="from_dir", default=None, help="copy from a local directory instead")
    fetch.set_defaults(func=_data_fetch)
    prep = data.add_parser("prepare", help="clean, filter, dedup and tokenize data.inputs into shards at data.path")
    config_args(prep)
    prep.add_argument("--beam", action="store_true",
                      help="run as an Apache Beam pipeline; Beam's flags (--runner=..., --direct_num_workers=N, "
                      "Dataflow/Flink/Spark options) follow it; see docs/data.md")  # fmt: skip
    prep.set_defaults(func=_data_prepare, passthrough=True)
    syn = data.add_parser(
        "synthetic",
        help="tasks with checkable answers: instructions, preference pairs, or cloze multiple choice (JSONL)",
        description="instructions: reverse a word, add two numbers, uppercase a phrase (Alpaca records with the "
        "answer in 'output'); preferences: the same with chosen = the answer, rejected = a near miss (or, with "
        "--off-task, another task's answer); cloze: lines of --file cut in two, the true ending among --choices "
        "endings of other lines (for `jaxllm eval mc`).",
    )
    syn.add_argument("kind", choices=("instructions", "preferences", "cloze"))
    syn.add_argument("--n", action=positive(), required=True, help="records to write")
    syn.add_argument("--seed", type=int, default=0)
    syn.add_argument("--out", required=True, help="the JSONL file to write")
    syn.add_argument("--kinds", nargs="+", default=["reverse", "add", "upper"], help="instruction tasks to cycle")
    syn.add_argument("--off-task", action=bounded(float, 0, 1), default=0.0,
                     help="preferences: share rejected by an off-task answer")  # fmt: skip
    syn.add_argument("--exclude", nargs="*", default=[], help="JSONL files whose prompts must not recur (held out)")
    syn.add_argument("--file", default=None, help="cloze: the text to cut lines from")
    syn.add_argument("--tail", type=float, default=1.0, help="cloze: use only the last fraction of --file (0..1]")
    syn.add_argument("--choices", type=int, default=4, help="cloze: choices per record")
    syn.add_argument(
        "--distractors",
        choices=("lines", "shuffled"),
        default="lines",
        help="cloze: wrong endings are other lines' endings, or the true ending's words shuffled",
    )
    syn.set_defaults(func=_data_synthetic)
    verify = data.add_parser("verify", help="check every shard of data.path against its manifest checksum")
    config_args(verify)
    verify.set_defaults(func=_data_verify)
