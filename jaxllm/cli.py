"""The `jaxllm` command line: one verb per stage of the pipeline.

This file only parses arguments and prints; the work lives in the library, so every
verb is also a function call away for notebooks and scripts.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jaxllm.config import ConfigError, list_presets, load_config, to_yaml


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help=f"a YAML path or a preset name ({', '.join(list_presets())})")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.num_layers=4")


def _config_show(args: argparse.Namespace) -> None:
    print(to_yaml(load_config(args.config, args.overrides)), end="")


def _model_summary(args: argparse.Namespace) -> None:
    from jaxllm.model.summary import summary_table  # imports jax; keep `config show` light

    cfg = load_config(args.config, args.overrides)
    print(summary_table(cfg, args.seq_len))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jaxllm", description="Build, train and evaluate decoder LMs in JAX.")
    verbs = parser.add_subparsers(dest="verb", required=True)

    config = verbs.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved, validated config as YAML")
    _config_args(show)
    show.set_defaults(func=_config_show)

    model = verbs.add_parser("model", help="inspect models").add_subparsers(dest="action", required=True)
    summary = model.add_parser("summary", help="parameters, FLOPs/token and memory, without allocating")
    _config_args(summary)
    summary.add_argument("--seq-len", type=int, default=None, help="context for the attention FLOPs (data.seq_len)")
    summary.set_defaults(func=_model_summary)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `jaxllm` console script. Config errors exit 2 with one line."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except ConfigError as e:
        print(f"jaxllm: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
