"""The model, mesh and pipeline sections: what runs, and how it is laid out on devices.

Why together: these are the sections whose values fix array shapes and shardings; the
cross-field rules between them live in jaxllm/config/validation.py.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

Norm = Literal["layernorm", "rmsnorm"]
BlockKind = Literal["pre_ln", "post_ln"]
Position = Literal["learned", "rope"]
MLPKind = Literal["gelu", "relu", "swiglu"]
AttentionImpl = Literal["xla", "dot_product"]
Remat = Literal["none", "full", "save_dots", "save_dots_no_batch"]
DType = Literal["float32", "bfloat16", "float16"]
RopeScalingKind = Literal["none", "llama3"]
Head = Literal["lm", "scalar"]


@dataclasses.dataclass(frozen=True)
class RopeScalingConfig:
    """Llama-3.1 style RoPE frequency scaling (long-context extension).

    Frequencies whose wavelength is longer than `original_max_seq_len / low_freq_factor`
    are divided by `factor`; those shorter than `original_max_seq_len / high_freq_factor`
    are kept; the band in between is interpolated smoothly.
    """

    kind: RopeScalingKind = "none"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The decoder's architecture: every family is a choice of these fields."""

    vocab_size: int = 256
    max_seq_len: int = 256
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: = num_heads (MHA); 1 is MQA; between is GQA
    head_dim: int | None = None  # None: d_model // num_heads
    d_ff: int | None = None  # None: 4 * d_model
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    block: BlockKind = "pre_ln"
    final_norm: bool = True  # ln_f after the stack (GPT-2 and Llama have it)
    position: Position = "learned"
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = RopeScalingConfig()
    mlp: MLPKind = "gelu"
    attention_impl: AttentionImpl = "xla"
    tie_embeddings: bool = True
    use_bias: bool = True  # biases on attention and MLP projections
    dropout: float = 0.0  # on embeddings and on each residual branch (GPT-2 resid/embd)
    attention_dropout: float = 0.0  # on the attention probabilities
    init_std: float = 0.02
    remat: Remat = "none"
    # Unroll every loop over layers (and the pipeline schedule's ticks and the accumulation
    # microbatches) into straight-line code. Compiles grow with depth; XLA's cost analysis
    # counts a loop body once, so `jaxllm plan` compiles small unrolled probes to count all.
    scan_unroll: bool = False
    head: Head = "lm"  # "lm": next-token logits; "scalar": one value per position (reward models)
    dtype: DType = "float32"  # compute dtype of matmuls and activations
    param_dtype: DType = "float32"

    def __post_init__(self) -> None:
        # Derived sizes are filled in at construction, so every ModelConfig (from YAML
        # or built in code) says exactly what runs and prints/saves concretely.
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None and self.num_heads > 0:
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; their product is the device count, -1 means "the rest"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    pipeline: int = 1
    # Changes to the logical-axis rules table (jaxllm/parallel/rules.py), each
    # "logical=axis" or "logical=axis1+axis2" or "logical=" (replicated), e.g. ["embed=", "mlp=tensor"].
    rules: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The pipeline schedule used when mesh.pipeline > 1 (jaxllm/model/pipelined.py)."""

    repeats: int = 1  # 1: GPipe; R > 1: circular, each stage holds R non-adjacent layer chunks
