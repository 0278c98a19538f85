"""A LoRA run's adapters as a PEFT adapter: the directory `peft.PeftModel.from_pretrained(base,
out_dir)` loads onto the Hugging Face export of the run's base model.

Why an adapter and not only the merged model (hf.export_hf merges): the adapter is a few MB
beside a base that is shared, served once and swapped per task, which is what the run
trained; PEFT is the format the Hugging Face stack reads adapters in.

What is written (PEFT's own file names and keys):
  adapter_config.json         peft_type LORA, r, lora_alpha, lora_dropout, target_modules
                              (the Hugging Face module names of the adapted projections),
                              task_type CAUSAL_LM, bias none, fan_in_fan_out (true for GPT-2,
                              whose projections are Conv1D modules storing (in, out))
  adapter_model.safetensors   base_model.model.<module>.lora_A.weight (r, in) and
                              .lora_B.weight (out, r), float32, for every layer

The module names and layouts come from the same family rule table the weights export uses
(torch_layout.py): a rule turns a kernel (*in, *out) into a torch weight (out, in) by
flattening heads and transposing, and lora_a (*in, r) and lora_b (r, *out) are kernels
with the rank as their output or input, so each rule lays them out too.

GPT-2 fuses q, k and v into one c_attn. A rank-r adapter on c_attn cannot hold three
independent rank-r adapters, so the exact equivalent is written: A = [A_q; A_k; A_v]
stacked (3r, in) and B block-diagonal (out, 3r), so x A^T B^T = [x A_q B_q | x A_k B_k |
x A_v B_v], at rank 3r (fewer blocks when fewer of q, k, v are targets) with alpha scaled
alike, so alpha / r is unchanged (PEFT's rank_pattern and alpha_pattern carry both).

The base the adapter applies to is the run's frozen base: `base=DIR` writes it (a QLoRA
run's nf4 / int8 kernels dequantized: the adapters were trained on that model, not on the
float weights it was quantized from, so only that base reproduces the run's logits).
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
from flax.traverse_util import flatten_dict, unflatten_dict
from safetensors.numpy import save_file

from jaxllm.config import LoraConfig, ModelConfig
from jaxllm.convert.hf import write_hf
from jaxllm.convert.hf_config import ARCHITECTURE_OF, ConversionError, model_family
from jaxllm.convert.hf_weights import hf_key
from jaxllm.convert.layout_fit import check_family
from jaxllm.convert.layout_rules import Rule
from jaxllm.convert.safetensors_io import DEFAULT_MAX_SHARD_SIZE
from jaxllm.convert.torch_layout import FAMILIES
from jaxllm.model import lora
from jaxllm.model.api import param_shapes
from jaxllm.train.load import load_run

Log = Callable[[str], None]
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclasses.dataclass(frozen=True)
class Adapter:
    """What the adapter holds: {PEFT key: array}, the target module names, and the fused
    modules' {name: (rank, alpha)} where they differ from the run's r and alpha."""

    tensors: dict[str, np.ndarray]
    targets: list[str]
    patterns: dict[str, tuple[int, float]]


def _projection_rules(model: ModelConfig, family: str) -> list[tuple[Rule, str]]:
    """(rule, module template without ".weight") of every per-layer projection kernel."""
    out = []
    for rule in FAMILIES[family](check_family(model, family)):
        kernels = [p for p in rule.paths if p[-1] == "kernel" and p[-2] in lora.PROJECTION_AXES]
        if "{i}" in rule.torch_key and kernels and len(kernels) == len(rule.paths):
            out.append((rule, hf_key(family, rule.torch_key).removesuffix(".weight")))
    return out


def _names(rules: list[tuple[Rule, str]], adapted: list[bool]) -> list[str]:
    """The target_modules entry of each rule: its module's own name ("q_proj"), or with its
    parent ("attn.c_proj") where an untargeted projection has the same own name (PEFT
    matches target_modules entries as suffixes of the module path)."""
    own = [m.rsplit(".", 1)[-1] for _, m in rules]
    skipped = {n for n, a in zip(own, adapted, strict=True) if not a}
    return [".".join(m.split(".")[-2:]) if n in skipped else n for (_, m), n in zip(rules, own, strict=True)]


def adapter_tensors(model: ModelConfig, params: Any) -> Adapter:
    """The PEFT tensors and names of a LoRA model's adapters (`model` with model.lora on,
    `params` its parameters). A fused rule (GPT-2's c_attn) gets the block-structured
    adapter the module docstring describes."""
    lo, base = model.lora, lora.base_model(model)
    family = model_family(base)
    blocks = jax.tree.map(np.asarray, jax.device_get(params["blocks"]))
    shapes = param_shapes(base)["blocks"]
    rules = _projection_rules(base, family)
    adapted = [any("lora_a" in _module(blocks, p) for p in rule.paths) for rule, _ in rules]
    tensors: dict[str, np.ndarray] = {}
    targets, patterns = [], {}
    for (rule, module), name, on in zip(rules, _names(rules, adapted), adapted, strict=True):
        if not on:
            continue
        if "{j}" in rule.torch_key:
            raise ConversionError(
                f"{module} (a routed expert) carries adapters, which PEFT cannot address per expert; "
                "export the merged model instead (jaxllm convert to-hf RUN_DIR OUT, without --peft)"
            )
        a, b, kept = _stacked(lo, blocks, shapes, rule.paths)
        targets.append(name)
        if len(rule.paths) > 1:
            patterns[name] = (lo.rank * len(kept), lo.alpha * len(kept))
        r = lo.rank
        rows = np.concatenate([np.arange(k * r, (k + 1) * r) for k in kept])
        for i in range(a[0].shape[0]):
            key = "base_model.model." + module.format(i=i)
            weight_a = rule.to_torch(*[x[i] for x in a])  # (n r, in): each A as a kernel with r outputs
            weight_b = rule.to_torch(*[x[i] for x in b])  # (out, n r): each B as a kernel with n r inputs
            tensors[f"{key}.lora_A.weight"] = np.ascontiguousarray(weight_a[rows], np.float32)
            tensors[f"{key}.lora_B.weight"] = np.ascontiguousarray(weight_b[:, rows], np.float32)
    if not tensors:
        raise ConversionError(f"the model has no adapted projection (model.lora.targets={list(lo.targets)})")
    return Adapter(tensors, targets, patterns)


def _module(blocks: dict, path: tuple[str, ...]) -> dict:
    tree = blocks
    for p in path[:-1]:
        tree = tree.get(p, {})
    return tree


def _stacked(
    lo: LoraConfig, blocks: dict, shapes: dict, paths: tuple[tuple[str, ...], ...]
) -> tuple[list[np.ndarray], list[np.ndarray], list[int]]:
    """Per member of a rule: lora_a (L, *in, r) and lora_b widened to (L, n r, *out) with its
    own r rows at its block and zeros elsewhere (a member without adapters: zeros); and the
    indices of the members that have adapters. One member: its a and b as they are."""
    n, r = len(paths), lo.rank
    a_list, b_list, kept = [], [], []
    for k, path in enumerate(paths):
        module = _module(blocks, path)
        kernel = _module(shapes, path)[path[-1]].shape
        n_in, n_out = lora.PROJECTION_AXES[path[-2]]
        lead = len(kernel) - n_in - n_out
        if "lora_a" in module:
            a, b = module["lora_a"], module["lora_b"]
            kept.append(k)
        else:
            a = np.zeros((*kernel[: lead + n_in], r), np.float32)
            b = np.zeros((*kernel[:lead], r, *kernel[lead + n_in :]), np.float32)
        wide = np.zeros((*b.shape[:lead], n * r, *b.shape[lead + 1 :]), np.float32)
        wide[(slice(None),) * lead + (slice(k * r, (k + 1) * r),)] = b
        a_list.append(a)
        b_list.append(wide)
    return a_list, b_list, kept


def peft_config(model: ModelConfig, adapter: Adapter, base_path: str = "") -> dict[str, Any]:
    """adapter_config.json: PEFT's LoraConfig fields for this adapter."""
    lo = model.lora
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_path,
        "r": lo.rank,
        "lora_alpha": lo.alpha,
        "lora_dropout": lo.dropout,
        "target_modules": adapter.targets,
        "rank_pattern": {k: r for k, (r, _) in adapter.patterns.items()},
        "alpha_pattern": {k: a for k, (_, a) in adapter.patterns.items()},
        "bias": "none",
        "fan_in_fan_out": model_family(lora.base_model(model)) == "gpt2",  # Conv1D weights are (in, out)
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }


def frozen_base(model: ModelConfig, params: Any) -> Any:
    """The base model's parameters the adapters apply to: the adapters dropped, quantized
    kernels dequantized (in model.param_dtype)."""
    flat = {k: v for k, v in flatten_dict(params).items() if k[-1] not in lora.ADAPTER_LEAVES}
    return lora.merge(model, unflatten_dict(flat))[1]


def export_peft(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    log: Log = print,
    base: str | os.PathLike[str] | None = None,
    dtype: str = "float32",
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
) -> Path:
    """A LoRA run's newest adapters -> a PEFT adapter directory at out_dir; with `base`, the
    frozen base (dequantized if quantized) also written there as a Hugging Face model in
    `dtype`, and named in adapter_config.json. Returns out_dir."""
    out = Path(out_dir)
    for d in (out, *([Path(base)] if base is not None else [])):
        if d.exists() and not d.is_dir():
            raise ConversionError(f"{d} is an existing file, not a directory; give a new or empty directory to write")
    cfg, params, step = load_run(run_dir)
    lo = cfg.model.lora
    if not lo.rank:
        raise ConversionError(
            f"{run_dir} has no LoRA adapters (model.lora.rank=0); export the model itself with "
            f"`jaxllm convert to-hf {run_dir} OUT` (without --peft)"
        )
    adapter = adapter_tensors(cfg.model, params)
    arch = ARCHITECTURE_OF[model_family(lora.base_model(cfg.model))]
    log(f"exporting the LoRA adapters of {run_dir} (step {step}; rank {lo.rank}, alpha {lo.alpha:g}) as a PEFT "
        f"adapter for {arch} to {out}: {', '.join(adapter.targets)}")  # fmt: skip
    for name, (r, alpha) in adapter.patterns.items():
        log(f"{name} fuses several projections: their adapters are stacked exactly, rank {r}, alpha {alpha:g}")
    base_path = ""
    if base is not None:
        base_path = str(Path(base).resolve())
        how = "" if lo.quantize == "none" else f" (dequantized from {lo.quantize})"
        log(f"writing the frozen base model{how} the adapter applies to, to {base_path}")
        base_cfg = dataclasses.replace(cfg, model=lora.base_model(cfg.model))
        write_hf(base_cfg, frozen_base(cfg.model, params), Path(base), max_shard_size, log, dtype)
    elif lo.quantize != "none":
        log(f"note: the run's base is stored {lo.quantize}; the adapter reproduces the run only on the dequantized "
            "base (write it with --peft-base DIR), not on the float model it was quantized from")  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter.tensors, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(peft_config(cfg.model, adapter, base_path), indent=2) + "\n")
    size = sum(a.nbytes for a in adapter.tensors.values())
    log(f"wrote {CONFIG_FILE} and {len(adapter.tensors)} tensors ({size / 1e6:.2f} MB, float32) in {WEIGHTS_FILE}")
    return out


__all__ = ["Adapter", "adapter_tensors", "export_peft", "frozen_base", "peft_config"]
