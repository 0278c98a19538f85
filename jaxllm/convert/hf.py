"""Hugging Face <-> jaxllm: config.json, safetensors weights and the tokenizer.

Two architectures, the two whose every detail jaxllm's config knobs express exactly:
  GPT2LMHeadModel   LayerNorm, learned positions, GELU (tanh approximation), biases
  LlamaForCausalLM  RMSNorm, RoPE (optionally Llama-3.1 scaled), SwiGLU, GQA, no biases
Anything a file asks for that jaxllm would compute differently (another activation,
attention biases on Llama, another RoPE type, ...) is refused by name, never
approximated: an imported model must compute what transformers computes.

Weights go through the rule tables of torch_layout.py, so one place knows where each
tensor lives. This file adds only what Hugging Face files do differently:
  - GPT-2's keys carry the prefix "transformer." (lm_head.weight does not), and its
    attention and MLP projections are Conv1D modules whose weight is stored (in, out),
    the transpose of the nn.Linear layout the "gpt2" table speaks;
  - a tied model's file may omit lm_head.weight (transformers writes none and re-ties
    on load), so import accepts both and export writes none;
  - old files hold non-weight buffers (GPT-2's causal mask attn.bias / attn.masked_bias,
    rotary_emb.inv_freq): skipped, since they follow from the config. Any other key
    that the config does not explain is an error: a silently dropped tensor would be a
    different model.

Files: safetensors only, never pickle (unpickling a .bin checkpoint can run code).
bfloat16: numpy has no bfloat16 of its own, so `safetensors.numpy` cannot read it
alone; ml_dtypes (installed with jax, which depends on it) registers one with numpy,
and safetensors then reads and writes bf16 tensors as numpy arrays. No torch needed.
Import widens every tensor to float32 (exact from bf16/f16); export writes float32,
or bfloat16 on request (round to nearest even).

RoPE settings: transformers 5 writes them as `rope_parameters` {rope_type, rope_theta,
...}; older files have a top-level `rope_theta` and `rope_scaling` {rope_type | type,
...}. Import reads either with transformers' own precedence (a non-null rope_scaling
replaces rope_parameters; a theta inside the dict wins over a top-level one); export
writes both forms, which transformers 5 and 4.x each read as the same model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxllm.config import (
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    RopeScalingConfig,
    TrainConfig,
    from_dict,
    to_dict,
    validate_model,
)
from jaxllm.convert.hf_chat import export_chat_template, imported_sections
from jaxllm.convert.torch_layout import check_family, from_torch, to_torch
from jaxllm.errors import DataError

Log = Callable[[str], None]
Tensors = dict[str, np.ndarray]


class ConversionError(DataError):
    """A Hugging Face checkpoint (or jaxllm run) that cannot be converted; the message
    names the file, tensor or config field and says why. A DataError (so a ValueError):
    the CLI prints it as one line and exits 2, like every other bad input."""


# architecture name (config.json "architectures") -> torch_layout family
ARCHITECTURES: dict[str, str] = {"GPT2LMHeadModel": "gpt2", "LlamaForCausalLM": "llama"}
_ARCHITECTURE_OF = {family: name for name, family in ARCHITECTURES.items()}  # the family is also the model_type

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
DEFAULT_MAX_SHARD_SIZE = 5_000_000_000  # transformers' "5GB"
# The tokenizer files carried both ways: tokenizer.json itself and the two files that
# name its special tokens (and hold the chat template).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

# GPT-2's Conv1D projections, stored (in, out): the layout key's weight transposed.
_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
# Buffers old files saved beside the weights; they are recomputed from the config.
_BUFFERS = {
    "gpt2": re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)"),
    "llama": re.compile(r"model\.(layers\.\d+\.self_attn\.)?rotary_emb\.inv_freq"),
}
_FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
# The base model's prefix inside a *ForCausalLM state dict. Files saved from the base
# model (GPT2Model; e.g. the original gpt2 checkpoint on the Hub) lack it.
_BASE_PREFIX = {"gpt2": "transformer.", "llama": "model."}


# --------------------------------------------------------------------------- config


_REQUIRED = object()


def _field(hf: Mapping[str, Any], key: str, default: Any = _REQUIRED) -> Any:
    """config.json's value of `key`; null counts as absent (as transformers treats it)."""
    value = hf.get(key)
    if value is not None:
        return value
    if default is _REQUIRED:
        raise ConversionError(f"config.json has no {key!r}, which a {hf_architecture(hf)} needs")
    return default


def _only(hf: Mapping[str, Any], key: str, allowed: tuple[Any, ...], default: Any, why: str) -> None:
    value = _field(hf, key, default)
    if value not in allowed:
        raise ConversionError(f"config.json: {key}={value!r} is not supported; {why}")


def hf_architecture(hf_config: Mapping[str, Any]) -> str:
    """The architecture a config.json names (its first "architectures" entry, else its model_type)."""
    names = hf_config.get("architectures") or []
    if names:
        name = str(names[0])
    else:
        model_type = hf_config.get("model_type")
        name = _ARCHITECTURE_OF.get(model_type, f"model_type={model_type!r}")
    if name not in ARCHITECTURES:
        raise ConversionError(f"architecture {name!r} is not supported; supported: {', '.join(ARCHITECTURES)}")
    return name


def _gpt2_config(hf: Mapping[str, Any]) -> ModelConfig:
    _only(
        hf, "activation_function", ("gelu_new", "gelu_pytorch_tanh"), "gelu_new",
        "jaxllm's GPT-2 MLP is GELU with the tanh approximation (gelu_new / gelu_pytorch_tanh)",
    )  # fmt: skip
    _only(hf, "scale_attn_weights", (True,), True, "jaxllm always scales attention scores by 1/sqrt(head_dim)")
    _only(hf, "scale_attn_by_inverse_layer_idx", (False,), False, "jaxllm has no per-layer attention scaling")
    _only(hf, "reorder_and_upcast_attn", (False,), False, "jaxllm has no reordered-and-upcast attention variant")
    _only(hf, "add_cross_attention", (False,), False, "jaxllm is a decoder without cross-attention")
    d_model, heads = int(_field(hf, "n_embd")), int(_field(hf, "n_head"))
    return ModelConfig(
        vocab_size=int(_field(hf, "vocab_size")),
        max_seq_len=int(_field(hf, "n_positions")),
        d_model=d_model,
        num_layers=int(_field(hf, "n_layer")),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=d_model // heads if heads else None,
        d_ff=int(_field(hf, "n_inner", 4 * d_model)),
        norm="layernorm",
        norm_eps=float(_field(hf, "layer_norm_epsilon", 1e-5)),
        block="pre_ln",
        final_norm=True,
        position="learned",
        mlp="gelu",
        tie_embeddings=bool(_field(hf, "tie_word_embeddings", True)),
        use_bias=True,
        dropout=0.0,
        attention_dropout=0.0,
        init_std=float(_field(hf, "initializer_range", 0.02)),
    )


def _rope(hf: Mapping[str, Any]) -> tuple[float, RopeScalingConfig]:
    """(theta, scaling) from either RoPE form, with transformers' precedence."""
    source = "rope_scaling" if hf.get("rope_scaling") else "rope_parameters"
    rope = hf.get(source) or {}
    if not isinstance(rope, Mapping) or any(isinstance(v, Mapping) for v in rope.values()):
        raise ConversionError(f"config.json: {source}={rope!r} is not supported; jaxllm has one RoPE for all layers")
    theta = float(rope.get("rope_theta") or _field(hf, "rope_theta", 10000.0))
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial not in (None, 1, 1.0):
        raise ConversionError(
            f"config.json: partial_rotary_factor={partial!r} is not supported; jaxllm rotates whole heads"
        )
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind == "default":
        return theta, RopeScalingConfig()
    if kind != "llama3":
        raise ConversionError(
            f"config.json: {source}.rope_type={kind!r} is not supported; jaxllm implements 'default' and 'llama3'"
        )
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
        if rope.get(key) is None:
            raise ConversionError(f"config.json: {source} of rope_type 'llama3' has no {key!r}")
    original = hf.get("original_max_position_embeddings") or rope.get("original_max_position_embeddings")
    return theta, RopeScalingConfig(
        kind="llama3",
        factor=float(rope["factor"]),
        low_freq_factor=float(rope["low_freq_factor"]),
        high_freq_factor=float(rope["high_freq_factor"]),
        original_max_seq_len=int(original or _field(hf, "max_position_embeddings", 2048)),
    )


def _llama_config(hf: Mapping[str, Any]) -> ModelConfig:
    _only(hf, "hidden_act", ("silu",), "silu", "jaxllm's Llama MLP is SwiGLU (silu)")
    _only(hf, "attention_bias", (False,), False, "jaxllm's Llama attention has no biases")
    _only(hf, "mlp_bias", (False,), False, "jaxllm's Llama MLP has no biases")
    d_model, heads = int(_field(hf, "hidden_size")), int(_field(hf, "num_attention_heads"))
    theta, scaling = _rope(hf)
    return ModelConfig(
        vocab_size=int(_field(hf, "vocab_size")),
        max_seq_len=int(_field(hf, "max_position_embeddings", 2048)),
        d_model=d_model,
        num_layers=int(_field(hf, "num_hidden_layers")),
        num_heads=heads,
        num_kv_heads=int(_field(hf, "num_key_value_heads", heads)),
        head_dim=int(_field(hf, "head_dim", d_model // heads if heads else 0)),
        d_ff=int(_field(hf, "intermediate_size")),
        norm="rmsnorm",
        norm_eps=float(_field(hf, "rms_norm_eps", 1e-6)),
        block="pre_ln",
        final_norm=True,
        position="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        mlp="swiglu",
        tie_embeddings=bool(_field(hf, "tie_word_embeddings", False)),
        use_bias=False,
        dropout=0.0,
        attention_dropout=0.0,
        init_std=float(_field(hf, "initializer_range", 0.02)),
    )


def hf_to_config(hf_config: Mapping[str, Any]) -> ModelConfig:
    """jaxllm's model section for a Hugging Face config.json (as a dict).

    Dropout is set to 0: an imported model is for inference or fine-tuning, where the
    fine-tuning config decides dropout, not the pre-training one."""
    family = ARCHITECTURES[hf_architecture(hf_config)]
    model = _gpt2_config(hf_config) if family == "gpt2" else _llama_config(hf_config)
    try:
        validate_model(model)
    except ConfigError as e:
        raise ConversionError(f"config.json describes a model jaxllm cannot build: {e}") from None
    return model


def model_family(model: ModelConfig) -> str:
    """The torch_layout family ("gpt2" or "llama") whose Hugging Face architecture holds
    this model exactly; ConversionError naming each architecture's first misfit otherwise."""
    if model.head != "lm":
        raise ConversionError(f"model.head={model.head!r}: only language models (head 'lm') export to Hugging Face")
    reasons = []
    for family in ("gpt2", "llama"):
        try:
            check_family(model, family)
        except ValueError as e:
            reasons.append(f"{_ARCHITECTURE_OF[family]}: {e}")
            continue
        if not model.final_norm:
            reasons.append(f"{_ARCHITECTURE_OF[family]}: model.final_norm=False, but it always has a final norm")
        elif family == "gpt2" and not model.use_bias:
            reasons.append("GPT2LMHeadModel: model.use_bias=False, but GPT-2 always has biases")
        else:
            return family
    raise ConversionError("the model fits no supported Hugging Face architecture: " + "; ".join(reasons))


def config_to_hf(
    model: ModelConfig,
    *,
    bos_id: int | None = None,
    eos_id: int | None = None,
    pad_id: int | None = None,
    dtype: str = "float32",
) -> dict[str, Any]:
    """config.json for a jaxllm model section, as the installed transformers reads it.

    Special token ids are written explicitly (null when unknown): left out, transformers
    would default GPT-2's to 50256, outside a small vocabulary."""
    family = model_family(model)
    common = {
        "architectures": [_ARCHITECTURE_OF[family]],
        "model_type": family,
        "vocab_size": model.vocab_size,
        "tie_word_embeddings": model.tie_embeddings,
        "initializer_range": model.init_std,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "dtype": dtype,  # transformers 5's name
        "torch_dtype": dtype,  # transformers 4's name for the same thing
        "use_cache": True,
    }
    if family == "gpt2":
        return common | {
            "n_embd": model.d_model,
            "n_layer": model.num_layers,
            "n_head": model.num_heads,
            "n_inner": model.d_ff,
            "n_positions": model.max_seq_len,
            "layer_norm_epsilon": model.norm_eps,
            "activation_function": "gelu_new",
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "resid_pdrop": model.dropout,
            "embd_pdrop": model.dropout,
            "attn_pdrop": model.attention_dropout,
        }
    rope_scaling = None
    s = model.rope_scaling
    if s.kind == "llama3":
        rope_scaling = {
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_seq_len,
        }
    return common | {
        "hidden_size": model.d_model,
        "intermediate_size": model.d_ff,
        "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads,
        "num_key_value_heads": model.num_kv_heads,
        "head_dim": model.head_dim,
        "max_position_embeddings": model.max_seq_len,
        "rms_norm_eps": model.norm_eps,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": model.attention_dropout,
        "mlp_bias": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": model.rope_theta} | (rope_scaling or {}),
        "rope_theta": model.rope_theta,
        "rope_scaling": rope_scaling,
    }


# --------------------------------------------------------------------------- weights


def _hf_key(family: str, layout_key: str) -> str:
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
    from jaxllm.model.api import param_shapes

    zero = np.zeros((), np.float32)
    placeholders = jax.tree.map(lambda s: np.broadcast_to(zero, s.shape), param_shapes(model))
    state = to_torch(model, placeholders, family)
    return {
        _hf_key(family, key): tuple(w.shape[::-1]) if _is_conv1d(family, key) else tuple(w.shape)
        for key, w in state.items()
    }


def _with_base_prefix(family: str, tensors: Mapping[str, Any]) -> Mapping[str, Any]:
    """Keys of a base-model file (no "transformer."/"model." anywhere) given the prefix the
    *ForCausalLM names carry, as transformers does when it loads such a file."""
    prefix = _BASE_PREFIX[family]
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
            raise ConversionError(f"{source} has no tensor {key!r}, which a {_ARCHITECTURE_OF[family]} needs")
        found = tuple(np.shape(tensors[key]))
        if found != shape:
            raise ConversionError(f"tensor {key!r} in {source} has shape {found}, expected {shape} from config.json")
        dtype = np.asarray(tensors[key]).dtype
        if dtype.name not in _FLOAT_DTYPES:
            raise ConversionError(
                f"tensor {key!r} in {source} has dtype {dtype.name}; only float checkpoints convert "
                "(quantized weights are not supported)"
            )
    buffers = _BUFFERS[family]
    unexpected = [k for k in tensors if k not in expected and not buffers.fullmatch(k)]
    if unexpected:
        raise ConversionError(
            f"{source} has tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all), which a "
            f"{_ARCHITECTURE_OF[family]} with this config.json does not have; wrong config.json or architecture?"
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
        out[_hf_key(family, key)] = np.ascontiguousarray(np.asarray(w, dtype=np.float32).astype(np_dtype))
    return out


def _numpy_dtype(dtype: str) -> np.dtype:
    if dtype == "float32":
        return np.dtype(np.float32)
    if dtype == "bfloat16":
        import ml_dtypes  # numpy's bfloat16 (installed with jax)

        return np.dtype(ml_dtypes.bfloat16)
    raise ConversionError(f"dtype={dtype!r} is not supported for export; choose float32 or bfloat16")


# --------------------------------------------------------------------------- safetensors files


def _safetensors():
    try:
        import ml_dtypes  # noqa: F401  registers bfloat16 with numpy, so safetensors.numpy can read it
        import safetensors
        import safetensors.numpy
    except ImportError as e:
        raise ConversionError(
            f"Hugging Face conversion needs the `safetensors` package ({e}): pip install safetensors"
        ) from None
    return safetensors


def safetensors_files(directory: str | os.PathLike[str]) -> dict[Path, list[str] | None]:
    """{file: tensor names it holds per the index, or None for all} of a model directory:
    model.safetensors if present (transformers' own choice), else the shards that
    model.safetensors.index.json lists."""
    d = Path(directory)
    if (d / SAFETENSORS).is_file():
        return {d / SAFETENSORS: None}
    index_path = d / SAFETENSORS_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConversionError(f"{index_path} is not a safetensors index with a weight_map ({e})") from None
        files: dict[Path, list[str] | None] = {}
        for name, file in weight_map.items():
            files.setdefault(d / file, []).append(name)
        for file in files:
            if not file.is_file():
                raise ConversionError(f"{index_path} lists {file.name}, which does not exist in {d}")
        return files
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth")) if d.is_dir() else []
    others = sorted(p.name for p in d.glob("*.safetensors"))
    hint = (
        f"; it holds only pickle checkpoints ({', '.join(pickles)}), which jaxllm never loads (unpickling can run "
        "code): save the model with save_pretrained(..., safe_serialization=True) first"
        if pickles
        else f"; found {', '.join(others)} under other names"
        if others
        else ""
    )
    raise ConversionError(f"{d} has no {SAFETENSORS} or {SAFETENSORS_INDEX}{hint}")


def read_safetensors(directory: str | os.PathLike[str]) -> Tensors:
    """Every tensor of a model directory (single file or shards), in its stored dtype
    (bfloat16 arrives as ml_dtypes.bfloat16). A file that cannot be read is named."""
    st = _safetensors()
    tensors: Tensors = {}
    for path, names in safetensors_files(directory).items():
        try:
            with st.safe_open(str(path), framework="numpy") as f:
                present = set(f.keys())
                for name in names if names is not None else sorted(present):
                    if name not in present:
                        raise ConversionError(f"{path} has no tensor {name!r}, though {SAFETENSORS_INDEX} says so")
                    tensors[name] = f.get_tensor(name)
        except ConversionError:
            raise
        except (st.SafetensorError, OSError, TypeError, ValueError) as e:
            raise ConversionError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    return tensors


def write_safetensors(
    tensors: Mapping[str, np.ndarray], directory: str | os.PathLike[str], max_shard_size: int | None = None
) -> list[Path]:
    """Write tensors as model.safetensors, or as shards model-0000i-of-0000n.safetensors plus
    model.safetensors.index.json (metadata.total_size, weight_map) when they exceed
    max_shard_size bytes. Shards fill in order; a tensor larger than a shard gets its own.
    Old model files in the directory are removed first, so no stale shard is read back."""
    st = _safetensors()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        if old.name in (SAFETENSORS, SAFETENSORS_INDEX) or _SHARD.fullmatch(old.name):
            old.unlink()
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    total = sum(a.nbytes for a in arrays.values())
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, a in arrays.items():
        if max_shard_size is not None and shards[-1] and size + a.nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = a
        size += a.nbytes
    metadata = {"format": "pt"}  # transformers checks this field when it loads
    if len(shards) == 1:
        path = d / SAFETENSORS
        st.numpy.save_file(shards[0], str(path), metadata=metadata)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards):
        path = d / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        st.numpy.save_file(shard, str(path), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, path.name))
        paths.append(path)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (d / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return paths


def _describe_source(directory: Path) -> str:
    files = list(safetensors_files(directory))
    return str(files[0]) if len(files) == 1 else f"the {len(files)} safetensors shards in {directory}"


# --------------------------------------------------------------------------- run directories


def _check_directory(out: Path) -> None:
    """Refuse an output path that is an existing file before any work (mkdir would fail late)."""
    if out.exists() and not out.is_dir():
        raise ConversionError(f"{out} is an existing file, not a directory; give a new or empty directory to write")


def _check_fresh(out: Path) -> None:
    _check_directory(out)
    ckpt_dir = out / "checkpoints"
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        raise ConversionError(f"{out} already holds checkpoints; give a new or empty output directory")


def _import_tokenizer(hf_dir: Path, out: Path, model: ModelConfig, log: Log) -> str:
    """Copy the model's tokenizer into the run; the tokenizer.path to record."""
    from jaxllm.data.tokenizer import load_tokenizer

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
    source = _describe_source(hf_dir)
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
    tokenizer_path = _import_tokenizer(hf_dir, out, model, log)
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
    from jaxllm.train.load import write_run

    write_run(cfg, params, out)
    log(f"wrote {out / 'config.yaml'} and the step-0 checkpoint in {out / 'checkpoints'}")
    return out


def _export_tokenizer(cfg: Config, out: Path, log: Log) -> tuple[int | None, int | None, int | None]:
    """Copy the run's tokenizer next to the weights; its (bos, eos, pad) ids."""
    from jaxllm.data.tokenizer import ByteTokenizer
    from jaxllm.train.load import load_run_tokenizer

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


def export_hf(
    run_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    max_shard_size: int = DEFAULT_MAX_SHARD_SIZE,
    log: Log = print,
    dtype: str = "float32",
) -> Path:
    """A jaxllm run's newest weights -> a Hugging Face model directory that
    `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` loads: config.json,
    safetensors (sharded above max_shard_size bytes) and the tokenizer. Returns out_dir."""
    from jaxllm.train.load import load_run

    out = Path(out_dir)
    _check_directory(out)
    cfg, params, step = load_run(run_dir)
    family = model_family(cfg.model)
    out.mkdir(parents=True, exist_ok=True)
    log(f"exporting {run_dir} (step {step}) as {_ARCHITECTURE_OF[family]} to {out}")
    tensors = params_to_hf(cfg.model, params, dtype)
    del params
    bos, eos, pad = _export_tokenizer(cfg, out, log)
    export_chat_template(cfg.chat, out, log)
    hf = config_to_hf(cfg.model, bos_id=bos, eos_id=eos, pad_id=pad, dtype=dtype)
    (out / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    files = write_safetensors(tensors, out, max_shard_size)
    size = sum(a.nbytes for a in tensors.values())
    log(f"wrote config.json and {len(tensors)} tensors ({size / 1e6:.1f} MB, {dtype}) in {len(files)} file(s)")
    return out


__all__ = [
    "ARCHITECTURES",
    "ConversionError",
    "DEFAULT_MAX_SHARD_SIZE",
    "config_to_hf",
    "export_hf",
    "hf_architecture",
    "hf_to_config",
    "hf_to_params",
    "import_hf",
    "model_family",
    "params_to_hf",
    "read_safetensors",
    "safetensors_files",
    "write_safetensors",
]
