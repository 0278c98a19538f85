"""The decoder model and its functional API."""

from jaxllm.model.api import (
    cross_entropy,
    forward,
    init_params,
    loss,
    param_logical_axes,
    param_shapes,
)
from jaxllm.model.decoder import Decoder
from jaxllm.model.summary import count_params, flops_per_token

__all__ = [
    "Decoder",
    "count_params",
    "cross_entropy",
    "flops_per_token",
    "forward",
    "init_params",
    "loss",
    "param_logical_axes",
    "param_shapes",
]
