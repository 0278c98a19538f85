"""LoRA runs as files: the start from a base run, the adapters saved on their own, merging.

- `start_params`: a run with model.lora starts from a run without adapters (an imported
  model, an SFT run): the base's weights, its projection kernels quantized if asked, and
  fresh adapters (B = 0, so the first loss is the base model's). A start run that already
  has the same adapters is taken as it is; one whose adapters the new run lacks is merged.
- `save_adapters`: RUN_DIR/adapter/ holds the adapters alone (adapter.safetensors, keyed
  by parameter path, and adapter.json: the LoRA settings, the base run and the step), a
  few MB where a checkpoint holds the whole base; written at every checkpoint, atomically.
- `merge_run`: a plain run directory with W + (alpha / r) A B folded in (and the base
  dequantized), which every verb reads (sample, chat, eval, convert export).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from jaxllm.config import Config, ConfigError, ModelConfig
from jaxllm.model import lora
from jaxllm.model.api import boxed_init_fn
from jaxllm.parallel.layout import Layout
from jaxllm.train.load import load_run, write_run

ADAPTER_DIR = "adapter"


def _describe_difference(a, b) -> str:
    return ", ".join(f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name))


def architecture(model: ModelConfig) -> ModelConfig:
    """`model` less its training-only settings (the dropout rates) and dtypes: two runs whose
    architectures are equal have interchangeable parameters, up to a cast."""
    return dataclasses.replace(model, dropout=0.0, attention_dropout=0.0, dtype="float32", param_dtype="float32",
                               lora=dataclasses.replace(model.lora, dropout=0.0))  # fmt: skip


def _cast_base(params: Any, dtype: str) -> Any:
    """Every floating-point leaf but the adapters (kept in float32) in `dtype`: a float32
    start run held in bfloat16 by a run with model.param_dtype=bfloat16."""
    target = jnp.dtype(dtype)

    def cast(path, x):
        keep = path[-1].key in lora.ADAPTER_LEAVES or not jnp.issubdtype(x.dtype, jnp.floating)
        return x if keep or x.dtype == target else x.astype(target)

    return jax.tree_util.tree_map_with_path(cast, params)


def start_params(cfg: Config, layout: Layout, src_cfg: Config, params: Any) -> Any:
    """`params` of a run of `src_cfg.model` as parameters of `cfg.model`, placed in `layout`:
    as they are when the architectures match (dropout rates may differ: an SFT run trained
    with dropout starts a PPO or GRPO run without), with adapters added (fresh, seeded by
    train.seed) or merged away when they differ only in model.lora; any other difference is
    an error naming the fields."""
    if src_cfg.model.param_dtype != cfg.model.param_dtype:
        with jax.set_mesh(layout.mesh):
            params = jax.jit(lambda p: _cast_base(p, cfg.model.param_dtype))(params)
    want, have = architecture(cfg.model), architecture(src_cfg.model)
    if want == have:
        return params
    if lora.base_model(want) != lora.base_model(have):
        raise ConfigError(
            f"posttrain.init_from={cfg.posttrain.init_from!r} has a different model "
            f"({_describe_difference(lora.base_model(want), lora.base_model(have))} differ); start from its config "
            "(jaxllm sft RUN_DIR ...) or drop the model overrides"
        )
    _, base = lora.merge(dataclasses.replace(src_cfg.model, param_dtype=cfg.model.param_dtype), params)
    if not want.lora.rank:
        return base

    def adapted(base_params, rng):
        fresh = nn.meta.unbox(boxed_init_fn(cfg.model)(rng))  # only the adapters are kept: XLA drops the rest
        return lora.adapt(cfg.model, base_params, fresh)

    with jax.set_mesh(layout.mesh):
        return jax.jit(adapted, out_shardings=layout.params)(base, jax.random.PRNGKey(cfg.train.seed + 17))


def save_adapters(cfg: Config, params: Any, run_dir: str | os.PathLike[str], step: int, layout: Layout) -> None:
    """RUN_DIR/adapter/{adapter.safetensors, adapter.json} from `params` (every process
    gathers the adapters; the primary writes, to temporary names first)."""
    leaves = lora.adapter_leaves(params)
    with jax.set_mesh(layout.mesh):
        whole = jax.jit(lambda t: t, out_shardings=layout.replicated)(leaves)
    if jax.process_index() != 0:
        return
    out = Path(run_dir) / ADAPTER_DIR
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: np.asarray(jax.device_get(v)) for k, v in whole.items()}
    lo = cfg.model.lora
    meta = {"format": "jaxllm-lora", "step": step, "base": cfg.posttrain.init_from, "rank": lo.rank,
            "alpha": lo.alpha, "targets": list(lo.targets), "quantize": lo.quantize, "quant_block": lo.quant_block,
            "parameters": int(sum(a.size for a in arrays.values()))}  # fmt: skip
    save_file(arrays, str(out / "adapter.safetensors.tmp"), metadata={"step": str(step)})
    (out / "adapter.json.tmp").write_text(json.dumps(meta, indent=1) + "\n")
    os.replace(out / "adapter.safetensors.tmp", out / "adapter.safetensors")
    os.replace(out / "adapter.json.tmp", out / "adapter.json")


def merge_run(run_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str], step: int | None = None) -> Path:
    """A new run directory at `out_dir` with the adapters of `run_dir` merged into its base:
    model.lora off, kernels in model.param_dtype."""
    cfg, params, got = load_run(run_dir, step)
    if not cfg.model.lora.rank:
        raise ConfigError(f"{run_dir} has no adapters (model.lora.rank=0); it is already a plain run")
    model, merged = lora.merge(cfg.model, params)
    merged = jax.tree.map(np.asarray, jax.device_get(merged))
    out_cfg = dataclasses.replace(cfg, model=model, train=dataclasses.replace(cfg.train, out_dir=str(out_dir)))
    return write_run(out_cfg, merged, out_dir, step=got)


__all__ = ["ADAPTER_DIR", "merge_run", "save_adapters", "start_params"]
