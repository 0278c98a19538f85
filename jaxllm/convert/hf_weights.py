"""Hugging Face tensors <-> jaxllm params, through the rule tables of torch_layout.py.

One place (torch_layout.py) knows where each tensor lives. This file adds only what
Hugging Face files do differently:
  - GPT-2's keys carry the prefix "transformer." (lm_head.weight does not), and its
    attention and MLP projections are Conv1D modules whose weight is stored (in, out),
    the transpose of the nn.Linear layout the "gpt2" table speaks;
  - a tied model's file may omit lm_head.weight (transformers writes none and re-ties
    on load), so import accepts both and export writes none;
  - old files hold non-weight buffers (GPT-2's causal mask attn.bias / attn.masked_bias,
    rotary_emb.inv_freq): skipped, since they follow from the config. Any other key
    that the config does not explain is an error: a silently dropped tensor would be a
    different model.
Import widens every tensor to float32 (exact from bf16/f16); export writes float32,
or bfloat16 on request (round to nearest even).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_dtypes  # numpy's bfloat16 (installed with jax)
import numpy as np

from jaxllm.config import ModelConfig
from jaxllm.convert.hf_config import ARCHITECTURE_OF, ConversionError, model_family
from jaxllm.convert.torch_layout import from_torch, to_torch
from jaxllm.model.api import param_shapes

Tensors = dict[str, np.ndarray]

# GPT-2's Conv1D projections, stored (in, out): the layout key's weight transposed.
_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# Buffers old files saved beside the weights; they are recomputed from the config.
_GPT2_BUFFERS = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")
_ROTARY_BUFFERS = re.compile(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq")
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# The base model's prefix inside a *ForCausalLM state dict ("transformer." for GPT-2,
# "model." for the rest). Files saved from the base model (GPT2Model; e.g. the original
# gpt2 checkpoint on the Hub) lack it.


def hf_key(family: str, layout_key: str) -> str:
    """torch_layout key -> Hugging Face key (the Llama table already uses HF names)."""
    if family == "gpt2" and layout_key != "lm_head.weight":
        return "transformer." + layout_key
    return layout_key


def _layout_key(family: str, hf_key: str) -> str:
    if family == "gpt2" and hf_key.startswith("transformer."):
        return hf_key[len("transformer.") :]
    return hf_key


def _is_conv1d(family: str, key: str) -> bool:
    return family == "gpt2" and key.endswith(_CONV1D)


def _expected_shapes(model: ModelConfig, family: str) -> dict[str, tuple[int, ...]]:
    """{HF key: shape} of every tensor the model has, from the rule table itself.

    The table runs on zero-stride placeholder arrays (np.broadcast_to of one zero), so
    even an 8B model's shapes cost no memory beyond GPT-2's fused q|k|v of one layer."""
    zero = np.zeros((), np.float32)
    placeholders = jax.tree.map(lambda s: np.broadcast_to(zero, s.shape), param_shapes(model))
    state = to_torch(model, placeholders, family)
    return {
        hf_key(family, key): tuple(w.shape[::-1]) if _is_conv1d(family, key) else tuple(w.shape)
        for key, w in state.items()
    }


def _with_base_prefix(family: str, tensors: Mapping[str, Any]) -> Mapping[str, Any]:
    """Keys of a base-model file (no "transformer."/"model." anywhere) given the prefix the
    *ForCausalLM names carry, as transformers does when it loads such a file."""
    prefix = "transformer." if family == "gpt2" else "model."
    if any(k.startswith(prefix) for k in tensors):
        return tensors
    return {k if k == "lm_head.weight" else prefix + k: v for k, v in tensors.items()}


def hf_to_params(model: ModelConfig, tensors: Mapping[str, Any], *, source: str = "the checkpoint") -> dict[str, Any]:
    """Hugging Face tensors {name: array} -> jaxllm params (float32 numpy).

    Every tensor is checked against the config before anything is converted, so a
    wrong file fails naming the tensor: missing, wrong shape, not a float, or unexpected.
    `source` (a file or directory) goes into those messages."""
    family = model_family(model)
    tensors = _with_base_prefix(family, tensors)
    expected = _expected_shapes(model, family)
    tied_head = "lm_head.weight" if model.tie_embeddings else None
    for key, shape in expected.items():
        if key not in tensors:
            if key == tied_head:
                continue  # tied: transformers writes no lm_head.weight
            raise ConversionError(f"{source} has no tensor {key!r}, which a {ARCHITECTURE_OF[family]} needs")
        found = tuple(np.shape(tensors[key]))
        if found != shape:
            raise ConversionError(f"tensor {key!r} in {source} has shape {found}, expected {shape} from config.json")
        dtype = np.asarray(tensors[key]).dtype
        if dtype.name not in _FLOAT_DTYPES:
            raise ConversionError(
                f"tensor {key!r} in {source} has dtype {dtype.name}; only float checkpoints convert "
                "(quantized weights are not supported)"
            )
    buffers = _GPT2_BUFFERS if family == "gpt2" else _ROTARY_BUFFERS
    unexpected = [k for k in tensors if k not in expected and not buffers.fullmatch(k)]
    if unexpected:
        raise ConversionError(
            f"{source} has tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all), which a "
            f"{ARCHITECTURE_OF[family]} with this config.json does not have; wrong config.json or architecture?"
        )
    state = {}
    for key in expected:
        if key == tied_head or key not in tensors:
            continue  # the tied head is the embedding; a copy in the file adds nothing
        w = np.asarray(tensors[key], dtype=np.float32)
        state[_layout_key(family, key)] = w.T if _is_conv1d(family, key) else w
    return from_torch(model, state, family)


def params_to_hf(model: ModelConfig, params: Mapping[str, Any], dtype: str = "float32") -> Tensors:
    """jaxllm params -> Hugging Face tensors {name: contiguous array} in `dtype`
    ("float32" or "bfloat16"); a tied model gets no lm_head.weight, as transformers writes it."""
    family = model_family(model)
    np_dtype = _numpy_dtype(dtype)
    out: Tensors = {}
    for key, w in to_torch(model, params, family).items():
        if model.tie_embeddings and key == "lm_head.weight":
            continue
        w = w.T if _is_conv1d(family, key) else w
        out[hf_key(family, key)] = np.ascontiguousarray(np.asarray(w, dtype=np.float32).astype(np_dtype))
    return out


def _numpy_dtype(dtype: str) -> np.dtype:
    if dtype == "float32":
        return np.dtype(np.float32)
    if dtype == "bfloat16":
        return np.dtype(ml_dtypes.bfloat16)
    raise ConversionError(f"dtype={dtype!r} is not supported for export; choose float32 or bfloat16")
