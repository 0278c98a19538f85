"""The `jaxllm` command line: one verb per stage of the pipeline.

This package only parses arguments and prints; the work lives in the library, so every
verb is also a function call away for notebooks and scripts. Each verb group is a module
holding its handlers with their flags beside them (`register(verbs)` adds them):
describe (config show, model summary), data, training (train, quickstart), sample (sample,
chat), posttrain (sft, dpo, reward, ppo, grpo), lora (merge), evaluate, convert, plan, viz (plot, viz) and
tokenizer. Handlers import the library inside the function (jax and friends are slow to
import), so `jaxllm --help` and a bad flag answer at once.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jaxllm.cli import convert, data, describe, evaluate, lora, plan, posttrain, sample, tokenizer, training, viz
from jaxllm.cli.args import OVERRIDE, Parser
from jaxllm.cli.report import DEBUG_ENV, debug_requested, report
from jaxllm.host import enable_compilation_cache, restore_interrupts, tune_malloc

# A config override (section.key=value), recognisable wherever it sits on the command line.
# The verb groups, in the order `jaxllm --help` lists their verbs.
VERB_GROUPS = (describe, data, training, sample, posttrain, lora, evaluate, convert, plan, viz, tokenizer)


def build_parser() -> argparse.ArgumentParser:
    """The `jaxllm` parser: every verb group's verbs, each verb's handler as its `func` default."""
    parser = Parser(prog="jaxllm", description="Build, train and evaluate decoder LMs in JAX.")
    parser.add_argument("--debug", action="store_true", help=f"show the traceback of an error ({DEBUG_ENV}=1 too)")
    verbs = parser.add_subparsers(dest="verb", required=True)
    for group in VERB_GROUPS:
        group.register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jaxllm` console script (and of `python -m jaxllm.cli`).

    Every error, Ctrl-C included, ends as one line on stderr and an exit code (2; 130 for
    Ctrl-C): see jaxllm/cli/report.py. `--debug` or JAXLLM_DEBUG=1 re-raises instead, for
    the traceback. Usage errors (no verb, an unknown option) exit 2 through SystemExit.
    """
    restore_interrupts()  # from here Ctrl-C is a KeyboardInterrupt, reported below
    tune_malloc()  # before any step allocates, while no JAX thread exists yet: jaxllm/host.py
    debug = debug_requested()
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        passthrough = getattr(args, "passthrough", False)
        if "--debug" in extra and not passthrough:  # accepted after the verb too
            extra = [x for x in extra if x != "--debug"]
            args.debug = True
        debug = debug_requested(args.debug)
        if extra and isinstance(getattr(args, "overrides", None), list) and not passthrough:
            # argparse ends a positional list at the first option, so `plan CONFIG --topology T
            # a.b=c` leaves a.b=c over; overrides are recognisable (section.key=value) wherever they sit.
            args.overrides += [x for x in extra if OVERRIDE.match(x)]
            extra = [x for x in extra if not OVERRIDE.match(x)]
        if extra and not passthrough:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.extra = extra
        enable_compilation_cache()  # compiled programs persist across commands: jaxllm/host.py
        code = args.func(args)
    except (Exception, KeyboardInterrupt) as e:
        if debug:
            raise
        return report(e)
    return code if isinstance(code, int) else 0


__all__ = ["OVERRIDE", "build_parser", "main"]
