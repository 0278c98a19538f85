"""Weight conversion: jaxllm parameters <-> PyTorch state dicts and Hugging Face models."""

from jaxllm.convert.hf import (
    ARCHITECTURES,
    DEFAULT_MAX_SHARD_SIZE,
    ConversionError,
    config_to_hf,
    export_hf,
    hf_architecture,
    hf_to_config,
    hf_to_params,
    import_hf,
    model_family,
    params_to_hf,
    read_safetensors,
    safetensors_files,
    write_safetensors,
)
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
