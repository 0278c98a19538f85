"""Hugging Face <-> jaxllm run directories: the entry points behind `jaxllm convert`.

`import_hf` turns a Hugging Face model directory (config.json, safetensors weights, the
tokenizer) into a jaxllm run directory with a step-0 checkpoint; `export_hf` writes a
run's newest weights back as a directory transformers loads. The parts, each in its file:
  hf_config.py        config.json <-> the model section (nine architectures; hf_families.py,
                      hf_rope.py and hf_window.py parse them, hf_fields.py names them)
  hf_weights.py       tensors <-> params (Conv1D transposes, prefixes, tied heads, buffers),
                      through the rule tables of torch_layout.py
  safetensors_io.py   safetensors files and shards (never pickle)
  tokenizer_files.py  the tokenizer files carried both ways
  hf_chat.py          the imported run's tokenizer and chat sections
  peft_export.py      a LoRA run's adapters as a PEFT adapter (export_hf merges them)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxllm.config import Config, DataConfig, TrainConfig, from_dict, to_dict
from jaxllm.convert.hf_chat import export_chat_template, imported_sections
from jaxllm.convert.hf_config import (
    ARCHITECTURE_OF,
    ConversionError,
    config_to_hf,
    hf_architecture,
    hf_to_config,
    model_family,
)
from jaxllm.convert.hf_weights import hf_to_params, params_to_hf
from jaxllm.convert.safetensors_io import DEFAULT_MAX_SHARD_SIZE, describe_source, read_safetensors, write_safetensors
from jaxllm.convert.tokenizer_files import export_tokenizer, import_tokenizer
from jaxllm.model import lora
from jaxllm.train.load import load_run, write_run

Log = Callable[[str], None]


def _check_directory(out: Path) -> None:
    """Refuse an output path that is an existing file before any work (mkdir would fail late)."""
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out} is an existing file, not a directory; give a new or empty directory to write")


def _check_fresh(out: Path) -> None:
    _check_directory(out)
    ckpt_dir = out / "checkpoints"
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        raise ConversionError(f"{out} already holds checkpoints; give a new or empty output directory")


def import_hf(hf_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], log: Log = print) -> Path:
    """A Hugging Face model directory (config.json, safetensors, tokenizer) -> a jaxllm run
    directory at out_dir: config.yaml, tokenizer copy, and a step-0 checkpoint that
    `load_run(out_dir)` restores. Returns out_dir."""
    hf_dir, out = Path(hf_dir), Path(out_dir)
    if not hf_dir.is_dir():
        raise ConversionError(f"{hf_dir} is not a directory; give a Hugging Face model directory (save_pretrained)")
    config_path = hf_dir / "config.json"
    if not config_path.is_file():
        raise ConversionError(f"{hf_dir} has no config.json; give a directory written by save_pretrained")
    try:
        hf = json.loads(config_path.read_text())
    except (OSError, ValueError) as e:
        raise ConversionError(f"{config_path} is not readable JSON ({e})") from None
    model = hf_to_config(hf)
    _check_fresh(out)  # before anything is read or written
    source = describe_source(hf_dir)
    log(
        f"{hf_architecture(hf)}: {model.num_layers} layers, d_model {model.d_model}, {model.num_heads} heads "
        f"({model.num_kv_heads} kv), vocab {model.vocab_size}, context {model.max_seq_len}; reading {source}"
    )
    tensors = read_safetensors(hf_dir)
    params = hf_to_params(model, tensors, source=source)
    del tensors
    n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))
    log(f"converted {n:,} parameters")
    out.mkdir(parents=True, exist_ok=True)
    tokenizer_path = import_tokenizer(hf_dir, out, model, log)
    tokenizer, chat = imported_sections(hf_dir, tokenizer_path, log)
    # data.path names a directory that does not exist, on purpose: load_run_tokenizer
    # reads a dataset manifest there first, and must never pick up a dataset (and its
    # tokenizer) that happens to sit at the default path in the working directory.
    cfg = Config(
        model=model,
        tokenizer=tokenizer,
        chat=chat,
        data=DataConfig(path=str(out / "data"), seq_len=min(DataConfig.seq_len, model.max_seq_len)),
        train=TrainConfig(out_dir=str(out)),
    )
    cfg = from_dict(to_dict(cfg))  # resolved and validated exactly as load_config will read it back
    write_run(cfg, params, out)
    log(f"wrote {out / 'config.yaml'} and the step-0 checkpoint in {out / 'checkpoints'}")
    return out


def export_hf(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    log: Log = print,
    dtype: str = "float32",
) -> Path:
    """A jaxllm run's newest weights -> a Hugging Face model directory that
    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads: config.json,
    safetensors (sharded above max_shard_size bytes) and the tokenizer. A LoRA run
    (model.lora.rank > 0) exports merged: W + (alpha / r) A B, its base dequantized if
    stored quantized, since no Hugging Face architecture holds adapters in its own
    weights (jaxllm/convert/peft_export.py writes them apart). Returns out_dir."""
    out = Path(out_dir)
    _check_directory(out)
    cfg, params, step = load_run(run_dir)
    merged = ""
    if cfg.model.lora.rank:
        lo = cfg.model.lora
        base = "" if lo.quantize == "none" else f", the {lo.quantize} base dequantized"
        merged = f" with its LoRA adapters merged in (rank {lo.rank}, alpha {lo.alpha:g}{base})"
        model, params = lora.merge(cfg.model, params)
        cfg = dataclasses.replace(cfg, model=model)
    log(f"exporting {run_dir} (step {step}){merged} as {ARCHITECTURE_OF[model_family(cfg.model)]} to {out}")
    return write_hf(cfg, params, out, max_shard_size, log, dtype)


def write_hf(
    cfg: Config,
    params: Any,
    out: Path,
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    log: Log = print,
    dtype: str = "float32",
) -> Path:
    """`params` of the plain model `cfg.model` (no adapters) written as a Hugging Face model
    directory at `out`, with the run's tokenizer and chat template: the part of export_hf
    that the PEFT export also needs for the base model its adapter applies to."""
    model_family(cfg.model)  # refuses a model no architecture holds, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    tensors = params_to_hf(cfg.model, params, dtype)
    del params
    bos, eos, pad = export_tokenizer(cfg, out, log)
    export_chat_template(cfg.chat, out, log)
    hf = config_to_hf(cfg.model, bos_id=bos, eos_id=eos, pad_id=pad, dtype=dtype)
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    files = write_safetensors(tensors, out, max_shard_size)
    size = sum(a.nbytes for a in tensors.values())
    log(f"wrote config.json and {len(tensors)} tensors ({size / 1e6:.1f} MB, {dtype}) in {len(files)} file(s)")
    return out


__all__ = ["export_hf", "import_hf", "write_hf"]
