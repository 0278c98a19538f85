"""Weight conversion between jaxllm parameters and PyTorch state dicts."""

from jaxllm.convert.torch_layout import FAMILIES, check_family, from_torch, to_torch

__all__ = ["FAMILIES", "check_family", "from_torch", "to_torch"]
