"""Weight conversion: jaxllm parameters <-> PyTorch state dicts and Hugging Face models."""

from jaxllm.convert.hf import export_hf, import_hf
from jaxllm.convert.hf_config import (
    ARCHITECTURES,
    ConversionError,
    config_to_hf,
    hf_architecture,
    hf_to_config,
    model_family,
)
from jaxllm.convert.hf_weights import hf_to_params, params_to_hf
from jaxllm.convert.safetensors_io import DEFAULT_MAX_SHARD_SIZE, read_safetensors, safetensors_files, write_safetensors
from jaxllm.convert.torch_layout import FAMILIES, check_family, from_torch, to_torch

__all__ = [
    "ARCHITECTURES",
    "DEFAULT_MAX_SHARD_SIZE",
    "FAMILIES",
    "ConversionError",
    "check_family",
    "config_to_hf",
    "export_hf",
    "from_torch",
    "hf_architecture",
    "hf_to_config",
    "hf_to_params",
    "import_hf",
    "model_family",
    "params_to_hf",
    "read_safetensors",
    "safetensors_files",
    "to_torch",
    "write_safetensors",
]
