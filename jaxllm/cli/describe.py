"""`jaxllm config show` and `jaxllm model summary`: what a config resolves to, and what the
model it describes costs, without training or allocating anything."""

from __future__ import annotations

import argparse

from jaxllm.cli.args import config_args, positive
from jaxllm.config import load_config, to_yaml


def _config_show(args: argparse.Namespace) -> None:
    cfg = load_config(args.config, args.overrides)
    print(to_yaml(cfg), end="")
    from jaxllm.parallel.rules import sharding_table  # slow import (jax); after the YAML so errors come first

    print(sharding_table(cfg))


def _model_summary(args: argparse.Namespace) -> None:
    from jaxllm.model.summary import summary_table  # slow import (jax): only the verbs that need it pay for it

    cfg = load_config(args.config, args.overrides)
    print(summary_table(cfg, args.seq_len))


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `config show` and `model summary` to the `jaxllm` verbs."""
    config = verbs.add_parser("config", help="inspect configs").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved, validated config as YAML")
    config_args(show)
    show.set_defaults(func=_config_show)

    model = verbs.add_parser("model", help="inspect models").add_subparsers(dest="action", required=True)
    summary = model.add_parser("summary", help="parameters, FLOPs/token and memory, without allocating")
    config_args(summary)
    summary.add_argument("--seq-len", action=positive(), help="context for the attention FLOPs (data.seq_len)")
    summary.set_defaults(func=_model_summary)
