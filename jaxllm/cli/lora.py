"""`jaxllm lora merge`: fold a LoRA run's adapters into its base, as a plain run directory.

Training a LoRA run is `jaxllm sft | dpo | grpo RUN_DIR model.lora.rank=R ...` (docs/posttrain.md);
its adapters are also written on their own to RUN_DIR/adapter/ at every checkpoint.
"""

from __future__ import annotations

import argparse

from jaxllm.cli.args import positive


def _merge(args: argparse.Namespace) -> None:
    from jaxllm.train.adapters import merge_run  # slow import (jax)

    out = merge_run(args.run_dir, args.out, step=args.step)
    print(f"wrote {out}: the adapters of {args.run_dir} merged into its base (a plain run: sample, chat, eval, "
          "convert to-hf)")  # fmt: skip


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `lora merge` to the `jaxllm` verbs."""
    lora = verbs.add_parser("lora", help="LoRA runs: merge adapters into the base").add_subparsers(
        dest="action", required=True
    )
    merge = lora.add_parser("merge", help="W + (alpha / r) A B in every adapted kernel -> a plain run directory")
    merge.add_argument("run_dir", help="a run trained with model.lora.rank > 0")
    merge.add_argument("out", help="the run directory to write (new or empty)")
    merge.add_argument("--step", action=positive(int), default=None, help="that checkpoint (default: the newest)")
    merge.set_defaults(func=_merge)
