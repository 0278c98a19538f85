"""`jaxllm tokenizer train | encode | decode | compare`: train a tokenizer on a config's
inputs, use any tokenizer jaxllm reads, and compare BPE implementations on a text."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from jaxllm.cli.args import TOKENIZER_HELP, config_args
from jaxllm.config import load_config
from jaxllm.errors import ConfigError, DataError


def _tokenizer_train(args: argparse.Namespace) -> None:
    from jaxllm.data.ready import train_tokenizer  # slow import (the data layer)

    train_tokenizer(load_config(args.config, args.overrides))


def _tokenizer_encode(args: argparse.Namespace) -> None:
    from jaxllm.data.tokenizer import load_tokenizer  # slow import (the data layer)

    text = args.text if args.text is not None else sys.stdin.read()
    print(" ".join(str(i) for i in load_tokenizer(args.tokenizer).encode(text)))


def _tokenizer_decode(args: argparse.Namespace) -> None:
    from jaxllm.data.tokenizer import load_tokenizer  # slow import (the data layer)

    ids = args.ids or sys.stdin.read().split()
    try:
        values = [int(i) for i in ids]
    except ValueError:
        raise ConfigError(f"decode takes integer ids, got {' '.join(ids[:5])!r}") from None
    tokenizer = load_tokenizer(args.tokenizer)
    bad = next((i for i in values if not 0 <= i < tokenizer.vocab_size), None)
    if bad is not None:
        raise ConfigError(f"id {bad} is outside the vocabulary of {args.tokenizer} (0..{tokenizer.vocab_size - 1})")
    sys.stdout.write(tokenizer.decode(values))


def _tokenizer_compare(args: argparse.Namespace) -> None:
    from jaxllm.data.tokenizer_compare import compare, describe_split, format_table  # slow import (sentencepiece)
    from jaxllm.posttrain.data import read_utf8  # slow import (the posttrain layer)

    path = Path(args.file)
    text = read_utf8(path, "--file")
    if not text:
        raise DataError(f"--file {args.file}: the file is empty; give a file with some text")
    header = describe_split(path.name, text, args.heldout)
    rows = compare(text, args.vocab_sizes, args.impl, args.heldout, args.out_dir,
                   log=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    print(header)
    print()
    print(format_table(rows))
    if args.out_dir:
        print(f"saved {', '.join(Path(r.model_path).name for r in rows if r.model_path)} in {args.out_dir}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n")
        print(f"wrote {args.json}")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `tokenizer train | encode | decode | compare` to the `jaxllm` verbs."""
    tok = verbs.add_parser("tokenizer", help="train and use tokenizers").add_subparsers(dest="action", required=True)
    tok_train = tok.add_parser("train", help="train a sentencepiece model on data.inputs, written to tokenizer.path")
    config_args(tok_train)
    tok_train.set_defaults(func=_tokenizer_train)
    enc = tok.add_parser("encode", help="print the token ids of TEXT (or stdin)")
    enc.add_argument("--tokenizer", default="byte", help=TOKENIZER_HELP)
    enc.add_argument("text", nargs="?", default=None)
    enc.set_defaults(func=_tokenizer_encode)
    dec = tok.add_parser("decode", help="print the text of token IDS (or stdin)")
    dec.add_argument("--tokenizer", default="byte", help=TOKENIZER_HELP)
    dec.add_argument("ids", nargs="*")
    dec.set_defaults(func=_tokenizer_decode)
    cmp = tok.add_parser(
        "compare",
        help="train the from-scratch BPE and sentencepiece BPE at several vocab sizes; table of compression",
        description="Train jaxllm/data/bpe.py's BPE (V - 256 merges) and a sentencepiece BPE (vocab V, the "
        "settings of `jaxllm tokenizer train`) on the text minus its last --heldout fraction, then measure "
        "bytes/token on the held-out and training parts, encode speed and decode(encode(x)) == x. Prints a "
        "Markdown table; progress goes to stderr.",
    )
    cmp.add_argument("--file", required=True, help="UTF-8 text file, e.g. ../shared/data/tinyshakespeare.txt")
    cmp.add_argument(
        "--vocab-sizes",
        type=int,
        nargs="+",
        required=True,
        metavar="V",
        help="vocabulary sizes, each > 256 (sentencepiece: > 256 bytes + 8 special + the characters)",
    )
    cmp.add_argument(
        "--impl",
        nargs="+",
        choices=("scratch", "sentencepiece"),
        default=["scratch", "sentencepiece"],
        help="which implementations to train (default: both)",
    )
    cmp.add_argument("--heldout", type=float, default=0.1, help="fraction held out at the end of the text (0..1)")
    cmp.add_argument(
        "--out-dir",
        default=None,
        help="keep the tokenizers: DIR/sp-V.model (for `viz tokens --tokenizer`, tokenizer.path) and "
        "DIR/scratch-V.json (the from-scratch BPE; also a tokenizer.path)",
    )
    cmp.add_argument("--json", default=None, metavar="OUT.json", help="also write the rows as a JSON list")
    cmp.set_defaults(func=_tokenizer_compare)
