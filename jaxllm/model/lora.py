"""LoRA and QLoRA on the parameter tree: which leaves train, adapting a base model's
parameters, merging adapters back, and the optimizer over the adapters alone.

The adapter itself runs inside `layers.Dense` (y = x W + (alpha / r) (x A) B, Hu et al.):
each target projection holds `lora_a` (*in, r) and `lora_b` (r, *out) beside its frozen
`kernel`, or, with model.lora.quantize, beside `kernel_q` / `kernel_scale` (jaxllm/model/quant.py).
Why in Dense and not qwix's LoRA: qwix rewrites `jax.lax.dot_general` calls, and jaxllm's
projections go through a custom-VJP `linear` whose backward qwix cannot see through (it
failed at init and under grad when tried); the adapter is two more `linear` calls.

Only `lora_a` and `lora_b` train. The train step splits the tree (`split`), differentiates
the adapters alone with the frozen base closed over (so no base gradient is ever computed),
and joins them again (`join`): the base comes out bit-identical. The optimizer's state
(`adapter_optimizer`) covers the adapters alone, which is LoRA's memory saving.

Stored trees have leading axes over the scanned layers (and pipeline stages): `lead` counts
them as the dimensions in front of a projection's own (*in, *out).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxllm.config import LORA_TARGETS, LoraConfig, ModelConfig
from jaxllm.model import quant

ADAPTER_LEAVES = ("lora_a", "lora_b")
# (input axes, output axes) of each projection's kernel, e.g. q_proj (E | H, D), o_proj (H, D | E).
PROJECTION_AXES = {"q_proj": (1, 2), "k_proj": (1, 2), "v_proj": (1, 2), "o_proj": (2, 1),
                   "gate_proj": (1, 1), "up_proj": (1, 1), "down_proj": (1, 1)}  # fmt: skip


def adapter_rank(model: ModelConfig, name: str) -> int:
    """The rank of the adapter a projection named `name` carries (0: none)."""
    return model.lora.rank if name in model.lora.targets else 0


def storage(model: ModelConfig, name: str) -> str:
    """How the projection `name` stores its kernel: "none" (plain), "nf4" or "int8"."""
    return model.lora.quantize if model.lora.rank and name in LORA_TARGETS else "none"


def scaling(lora: LoraConfig) -> float:
    """alpha / r: the adapter's output scale."""
    return lora.alpha / lora.rank


def split(model: ModelConfig, params: Any) -> tuple[Any, Any]:
    """(trainable, frozen) parts of `params`; without adapters (params, None): all train."""
    if not model.lora.rank:
        return params, None
    flat = flatten_dict(params)
    train = {k: v for k, v in flat.items() if k[-1] in ADAPTER_LEAVES}
    frozen = {k: v for k, v in flat.items() if k[-1] not in ADAPTER_LEAVES}
    return unflatten_dict(train), unflatten_dict(frozen)


def join(trainable: Any, frozen: Any) -> Any:
    """The whole tree again from `split`'s two parts."""
    if frozen is None:
        return trainable
    return unflatten_dict({**flatten_dict(trainable), **flatten_dict(frozen)})


def adapter_optimizer(tx: optax.GradientTransformation, model: ModelConfig) -> optax.GradientTransformation:
    """`tx` whose state covers the adapters only: `init` takes the whole parameter tree (as
    every caller passes it), `update` the adapters' gradients and parameters (as the train
    step gives them after `split`)."""
    if not model.lora.rank:
        return tx
    return optax.GradientTransformation(lambda params: tx.init(split(model, params)[0]), tx.update)


def _lead(kernel_ndim: int, name: str) -> int:
    n_in, n_out = PROJECTION_AXES[name]
    return kernel_ndim - n_in - n_out


def adapt(model: ModelConfig, base: Any, adapters: Any) -> Any:
    """The parameters of `model` (adapters on) from a base model's (`base`, no adapters):
    the base's leaves, its projection kernels quantized per model.lora.quantize, and the
    `lora_a` / `lora_b` leaves of `adapters` (a fresh init of `model`: B = 0, so the adapted
    model computes what the base does, up to the quantization)."""
    flat = flatten_dict(base)
    if any(k[-1] in ADAPTER_LEAVES or k[-1] == "kernel_q" for k in flat):
        raise ValueError("these parameters already carry adapters or quantized kernels; merge them first")
    out = {}
    for k, v in flat.items():
        fmt = storage(model, k[-2]) if len(k) > 1 and k[-1] == "kernel" else "none"
        if fmt == "none":
            out[k] = v
            continue
        n_in = PROJECTION_AXES[k[-2]][0]
        codes, scales = quant.quantize(v, n_in, fmt, model.lora.quant_block, _lead(v.ndim, k[-2]))
        out[(*k[:-1], "kernel_q")], out[(*k[:-1], "kernel_scale")] = codes, scales
    out.update({k: v for k, v in flatten_dict(adapters).items() if k[-1] in ADAPTER_LEAVES})
    return unflatten_dict(out)


def delta(a: jax.Array, b: jax.Array, kernel_ndim: int) -> jax.Array:
    """A B as a kernel-shaped update (float32): a (*lead, *in, r), b (*lead, r, *out)."""
    lead = a.ndim + b.ndim - 2 - kernel_ndim
    k_in, k_out = math.prod(a.shape[lead:-1]), math.prod(b.shape[lead + 1 :])
    a2 = a.astype(jnp.float32).reshape(*a.shape[:lead], k_in, a.shape[-1])
    b2 = b.astype(jnp.float32).reshape(*b.shape[: lead + 1], k_out)
    return jnp.matmul(a2, b2, precision=jax.lax.Precision.HIGHEST).reshape(
        *a.shape[:-1], *b.shape[lead + 1 :]
    )


def base_kernel(model: ModelConfig, module: dict, name: str, dtype: jnp.dtype) -> jax.Array:
    """A projection's frozen kernel in `dtype`, dequantized when stored quantized."""
    if "kernel" in module:
        return module["kernel"].astype(dtype)
    n_in, n_out = PROJECTION_AXES[name]
    codes = module["kernel_q"]
    lead = module["kernel_scale"].ndim - 1 - n_out
    return quant.dequantize(codes, module["kernel_scale"], n_in, model.lora.quantize, dtype, lead)


def merge(model: ModelConfig, params: Any) -> tuple[ModelConfig, Any]:
    """(the base architecture, its parameters with W + (alpha / r) A B folded into every
    adapted kernel and quantized kernels dequantized, in model.param_dtype): a plain model
    that computes what the adapted one does, for export and serving."""
    if not model.lora.rank:
        return model, params
    dtype = jnp.dtype(model.param_dtype)
    s = scaling(model.lora)
    modules: dict[tuple, dict] = {}
    for k, v in flatten_dict(params).items():
        modules.setdefault(k[:-1], {})[k[-1]] = v
    out = {}
    for path, leaves in modules.items():
        if "lora_a" not in leaves and "kernel_q" not in leaves:
            out.update({(*path, n): v for n, v in leaves.items()})
            continue
        kernel = base_kernel(model, leaves, path[-1], jnp.float32)
        if "lora_a" in leaves:
            kernel = kernel + s * delta(leaves["lora_a"], leaves["lora_b"], kernel.ndim)
        out[(*path, "kernel")] = kernel.astype(dtype)
        rest = {n: v for n, v in leaves.items() if n not in (*ADAPTER_LEAVES, "kernel", "kernel_q", "kernel_scale")}
        out.update({(*path, n): v for n, v in rest.items()})
    return base_model(model), unflatten_dict(out)


def base_model(model: ModelConfig) -> ModelConfig:
    """`model` without adapters or quantized storage."""
    return dataclasses.replace(model, lora=LoraConfig())


def adapter_leaves(params: Any) -> dict[str, jax.Array]:
    """The adapters alone, by '/'-joined path (what an adapter file holds)."""
    return {"/".join(k): v for k, v in flatten_dict(params).items() if k[-1] in ADAPTER_LEAVES}


def count(params: Any, keep: Callable[[tuple], bool] = lambda k: True) -> int:
    """Number of parameters whose path `keep` accepts."""
    return sum(int(v.size) for k, v in flatten_dict(params).items() if keep(k))
