"""`jaxllm eval perplexity | mc | exact-match | harness`: figures for a trained run, printed
as `key value` lines and optionally written as JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from jaxllm.cli.args import non_negative, positive
from jaxllm.errors import ConfigError, DataError


def _progress(label: str, unit: str) -> Callable[[int, int], None]:
    """A callback printing `label: done/total unit` to stderr about ten times over a long evaluation."""
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            print(f"{label}: {done}/{total} {unit}", file=sys.stderr)

    return report


def _report(name: str, run_dir: str, step: int, figures: dict, out: str | None) -> None:
    """Print the figures as `key value` lines and, with --out, write them as JSON."""
    print(f"# {name} of {run_dir} (step {step})")
    for key, value in figures.items():
        print(f"{key:>14} {value:.6g}" if isinstance(value, float) else f"{key:>14} {value}")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"eval": name, "run": run_dir, "step": step, **figures}, f, indent=1)
        print(f"wrote {out}", file=sys.stderr)


def _eval_perplexity(args: argparse.Namespace) -> None:
    from jaxllm.evaluate.perplexity import perplexity, read_texts  # slow import (jax)
    from jaxllm.train.load import load_run, load_run_tokenizer  # slow import (jax, orbax)

    texts = read_texts(args.data, args.field)
    cfg, params, step = load_run(args.run_dir)
    result = perplexity(
        cfg, params, load_run_tokenizer(cfg), texts, args.stride, args.batch_size, _progress("perplexity", "windows")
    )
    _report("perplexity", args.run_dir, step, result.as_dict(), args.out)


def _eval_mc(args: argparse.Namespace) -> None:
    from jaxllm.evaluate.multiple_choice import evaluate_mc, read_mc  # slow import (jax)
    from jaxllm.train.load import load_run, load_run_tokenizer  # slow import (jax, orbax)

    examples = read_mc(args.data, args.limit)
    cfg, params, step = load_run(args.run_dir)
    result = evaluate_mc(cfg, params, load_run_tokenizer(cfg), examples, args.batch_size, _progress("mc", "choices"))
    _report("mc", args.run_dir, step, result.as_dict(), args.out)


def _eval_exact_match(args: argparse.Namespace) -> None:
    from jaxllm.posttrain.data import load_records  # slow import (the posttrain layer)
    from jaxllm.posttrain.synthetic import exact_match  # slow import (jax)
    from jaxllm.train.load import load_run, load_run_tokenizer  # slow import (jax, orbax)

    records = load_records(args.data)
    records = records[: args.limit] if args.limit > 0 else records
    missing = next((i for i, r in enumerate(records) if not isinstance(r.get("output"), str)), None)
    if missing is not None:
        raise DataError(f"{args.data}: record {missing} has no string 'output' to grade against; give Alpaca records")
    cfg, params, step = load_run(args.run_dir)
    scores = exact_match(cfg, params, load_run_tokenizer(cfg), records, args.batch_size, args.max_new_tokens)
    _report("exact-match", args.run_dir, step, {"records": len(records), **scores}, args.out)


def _eval_harness(args: argparse.Namespace) -> int:
    try:
        from jaxllm.evaluate.harness import main as harness_main  # optional dependency (lm_eval); slow import
    except ImportError as e:
        raise ConfigError(f"the lm-evaluation-harness is not installed ({e}); pip install -e '.[eval]'") from None
    return harness_main(args.extra)


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `eval perplexity | mc | exact-match | harness` to the `jaxllm` verbs."""
    ev = verbs.add_parser("eval", help="evaluate a run").add_subparsers(dest="action", required=True)
    ppl = ev.add_parser("perplexity", help="loss, perplexity and bits-per-byte of text, in rolling windows")
    ppl.add_argument("run_dir")
    ppl.add_argument("--data", required=True, help=".txt (one document), .jsonl/.json records or a dir of .txt")
    ppl.add_argument("--field", default="text", help="the text field of .jsonl/.json records")
    ppl.add_argument("--stride", action=positive(), help="new tokens scored per window (default: the context)")
    ppl.add_argument("--batch-size", action=positive(), default=16, help="windows per forward pass")
    ppl.add_argument("--out", default=None, help="also write the figures as JSON here")
    ppl.set_defaults(func=_eval_perplexity)
    mc = ev.add_parser("mc", help="multiple choice by log-likelihood: acc and acc_norm (HellaSwag-format JSONL)")
    mc.add_argument("run_dir")
    mc.add_argument("--data", required=True, help="JSONL: HellaSwag records or {context, choices, label}")
    mc.add_argument("--limit", action=non_negative(), default=0, help="only the first N examples (0: all)")
    mc.add_argument("--batch-size", action=positive(), default=16, help="choices per forward pass")
    mc.add_argument("--out", default=None, help="also write the figures as JSON here")
    mc.set_defaults(func=_eval_mc)
    em = ev.add_parser("exact-match", help="greedy replies of an instruction-tuned run vs records' 'output'")
    em.add_argument("run_dir")
    em.add_argument("--data", required=True, help="Alpaca records (.json/.jsonl) with the expected 'output'")
    em.add_argument("--limit", action=non_negative(), default=0, help="only the first N records (0: all)")
    em.add_argument("--batch-size", action=positive(), default=64, help="prompts per generate call")
    em.add_argument("--max-new-tokens", action=positive(), default=16)
    em.add_argument("--out", default=None, help="also write the figures as JSON here")
    em.set_defaults(func=_eval_exact_match)
    harness = ev.add_parser(
        "harness",
        help="lm-evaluation-harness with jaxllm registered: --model jaxllm --model_args path=RUN_DIR --tasks ...",
    )
    harness.set_defaults(func=_eval_harness, passthrough=True)  # every other argument goes to the harness
