"""`jaxllm convert from-hf | to-hf`: Hugging Face model directories to jaxllm runs and back."""

from __future__ import annotations

import argparse

from jaxllm.cli.args import positive


def _convert_from_hf(args: argparse.Namespace) -> None:
    from jaxllm.convert.hf import import_hf  # slow import (jax, safetensors)

    print(f"wrote {import_hf(args.hf_dir, args.out)}")


def _convert_to_hf(args: argparse.Namespace) -> None:
    shard = int(args.max_shard_mb * 2**20)
    if args.peft or args.peft_base:
        from jaxllm.convert.peft_export import export_peft  # slow import (jax, safetensors)

        out = export_peft(args.run_dir, args.out, base=args.peft_base, dtype=args.dtype, max_shard_size=shard)
    else:
        from jaxllm.convert.hf import export_hf  # slow import (jax, safetensors)

        out = export_hf(args.run_dir, args.out, max_shard_size=shard, dtype=args.dtype)
    print(f"wrote {out}")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `convert from-hf | to-hf` to the `jaxllm` verbs."""
    convert = verbs.add_parser("convert", help="Hugging Face import/export").add_subparsers(
        dest="action", required=True
    )
    from_hf = convert.add_parser("from-hf", help="a Hugging Face model dir (config.json + safetensors) -> a run dir")
    from_hf.add_argument("hf_dir")
    from_hf.add_argument("out", help="the run directory to write")
    from_hf.set_defaults(func=_convert_from_hf)
    to_hf = convert.add_parser(
        "to-hf", help="a run's newest weights (LoRA: merged, or --peft) -> config.json + safetensors (+ tokenizer)"
    )
    to_hf.add_argument("run_dir")
    to_hf.add_argument("out", help="the Hugging Face model directory to write")
    to_hf.add_argument("--max-shard-mb", action=positive(float), default=4096,
                       help="split the safetensors above this size")  # fmt: skip
    to_hf.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights as stored")
    to_hf.add_argument("--peft", action="store_true",
                       help="a LoRA run: write its adapters as a PEFT adapter (adapter_config.json + "
                       "adapter_model.safetensors) instead of the merged model")  # fmt: skip
    to_hf.add_argument("--peft-base", metavar="DIR",
                       help="with --peft (implied): also write the base model the adapter applies to (the run's "
                       "frozen base, dequantized if quantized) to DIR")  # fmt: skip
    to_hf.set_defaults(func=_convert_to_hf)
