"""The tokenizer files that travel with a converted model, both ways.

Import copies tokenizer.json (with the two files that name its special tokens and hold
the chat template) or a sentencepiece tokenizer.model into the run; export copies the
run's tokenizer next to the weights, and writes a tokenizer_config.json naming the
special tokens when the run has none, since transformers finds none in tokenizer.json alone.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

from jaxllm.config import Config, ModelConfig
from jaxllm.data.tokenizer import ByteTokenizer, load_tokenizer
from jaxllm.errors import DataError
from jaxllm.train.load import load_run_tokenizer

Log = Callable[[str], None]
# The tokenizer files carried both ways: tokenizer.json itself and the two files that
# name its special tokens (and hold the chat template).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def import_tokenizer(hf_dir: Path, out: Path, model: ModelConfig, log: Log) -> str:
    """Copy the model's tokenizer into the run; the tokenizer.path to record."""
    if (hf_dir / "tokenizer.json").is_file():
        for name in TOKENIZER_FILES:
            if (hf_dir / name).is_file():
                shutil.copyfile(hf_dir / name, out / name)
        path = out / "tokenizer.json"
    elif (hf_dir / "tokenizer.model").is_file():
        path = out / "tokenizer.model"
        shutil.copyfile(hf_dir / "tokenizer.model", path)
    elif model.vocab_size == 256:
        log("no tokenizer.json or tokenizer.model; vocab_size is 256, so the run uses the byte tokenizer")
        return "byte"
    else:
        path = out / "tokenizer.json"
        log(
            f"warning: {hf_dir} has no tokenizer.json or tokenizer.model; copy the model's tokenizer.json to {path} "
            "before sampling (tokenizer.path points there)"
        )
        return str(path)
    try:
        tok = load_tokenizer(str(path))
    except DataError as e:
        log(f"warning: copied {path.name}, but it does not load: {e}")
        return str(path)
    log(f"copied {path.name} (vocab {tok.vocab_size}; bos {tok.bos_id}, eos {tok.eos_id}, pad {tok.pad_id})")
    if tok.vocab_size > model.vocab_size:
        log(f"warning: the tokenizer has {tok.vocab_size} ids, more than the model's vocab_size {model.vocab_size}")
    return str(path)


def export_tokenizer(cfg: Config, out: Path, log: Log) -> tuple[int | None, int | None, int | None]:
    """Copy the run's tokenizer next to the weights; its (bos, eos, pad) ids."""
    try:
        tok = load_run_tokenizer(cfg)
    except DataError as e:
        log(f"warning: the run's tokenizer does not load ({e}); exporting the model without one")
        return None, None, None
    ids = (tok.bos_id, tok.eos_id, None if tok.pad_id == tok.eos_id else tok.pad_id)
    if isinstance(tok, ByteTokenizer):
        log("the run uses the byte tokenizer (ids = UTF-8 bytes, eos 0): nothing to copy")
        return ids
    if getattr(tok, "path", None) is None:
        log(f"warning: the run's tokenizer ({tok.identity}) has no file to copy")
        return ids
    path = Path(tok.path)
    if path.suffix == ".json":
        shutil.copyfile(path, out / "tokenizer.json")
        for name in TOKENIZER_FILES[1:]:  # the files that name its special tokens, if it has them
            if (path.parent / name).is_file():
                shutil.copyfile(path.parent / name, out / name)
        if not (path.parent / "tokenizer_config.json").is_file():
            # transformers finds no special tokens in tokenizer.json alone: name them
            tok_config = {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": None if tok.bos_id is None else tok.piece(tok.bos_id),
                "eos_token": tok.piece(tok.eos_id),
                "pad_token": tok.piece(tok.pad_id),
                "model_max_length": cfg.model.max_seq_len,
            }
            (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2) + "\n")
        log(f"copied tokenizer.json (vocab {tok.vocab_size})")
    else:
        shutil.copyfile(path, out / "tokenizer.model")
        log(
            f"copied the sentencepiece model as tokenizer.model (vocab {tok.vocab_size}); load it with "
            "sentencepiece: transformers' LlamaTokenizer would add its own normalization"
        )
    return ids
