"""The model, mesh and pipeline sections: what runs, and how it is laid out on devices.

Why together: these are the sections whose values fix array shapes and shardings; the
cross-field rules between them live in jaxllm/config/validation.py.

Every field has a `#:` comment on the lines above it: what it means and its unit. Those
comments are the reference: `python -m jaxllm.config.docs` turns them into docs/config.md.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxllm.config.schema_posttrain import LoraConfig

Norm = Literal["layernorm", "rmsnorm"]
BlockKind = Literal["pre_ln", "post_ln", "sandwich"]
Position = Literal["learned", "rope"]
MLPKind = Literal["gelu", "relu", "swiglu", "geglu"]
Router = Literal["softmax", "sigmoid"]
AttentionImpl = Literal["auto", "xla", "dot_product", "splash"]
ContextAttention = Literal["allgather", "ring"]
Remat = Literal["none", "full", "minimal", "offload", "save_dots", "save_dots_no_batch"]
DType = Literal["float32", "bfloat16", "float16"]
RopeScalingKind = Literal["none", "llama3", "linear"]
Head = Literal["lm", "scalar"]


@dataclasses.dataclass(frozen=True)
class RopeScalingConfig:
    """Llama-3.1 style RoPE frequency scaling (long-context extension).

    Frequencies whose wavelength is longer than `original_max_seq_len / low_freq_factor`
    are divided by `factor`; those shorter than `original_max_seq_len / high_freq_factor`
    are kept; the band in between is interpolated smoothly.
    """

    #: "none": plain RoPE; "llama3": scale the low frequencies as Llama 3.1 does; "linear": divide every
    #: frequency by `factor` (position interpolation, Gemma 3's global layers). Needs model.position=rope.
    kind: RopeScalingKind = "none"
    #: How many times longer the context gets: low frequencies are divided by it (>= 1).
    factor: float = 8.0
    #: Wavelengths above original_max_seq_len / low_freq_factor (in tokens) are scaled by 1 / factor.
    low_freq_factor: float = 1.0
    #: Wavelengths below original_max_seq_len / high_freq_factor (in tokens) are kept as they are.
    high_freq_factor: float = 4.0
    #: The context length, in tokens, the model was pre-trained with before the extension.
    original_max_seq_len: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The decoder's architecture: every family is a choice of these fields."""

    #: Rows of the token embedding (and logits per position), in token ids; at least the tokenizer's vocabulary.
    vocab_size: int = 256
    #: The longest sequence the model can attend over, in tokens: the learned position table's size, the KV
    #: cache's length in generation, and the cap on data.seq_len (the training row length, which may be shorter).
    max_seq_len: int = 256
    #: Width of the residual stream (the embedding size), in features.
    d_model: int = 128
    #: Number of decoder blocks (attention + MLP) in the stack.
    num_layers: int = 2
    #: Attention (query) heads per layer; must divide d_model.
    num_heads: int = 4
    #: Key/value heads per layer. null: = num_heads (MHA); 1 is MQA; a divisor in between is GQA.
    num_kv_heads: int | None = None
    #: Features per attention head. null: d_model // num_heads.
    head_dim: int | None = None
    #: Hidden width of the MLP, in features (for swiglu: of each of the gate and up projections). null: 4 * d_model.
    d_ff: int | None = None
    #: Normalisation layer: "layernorm" (scale and bias, GPT-2) or "rmsnorm" (scale only, Llama).
    norm: Norm = "layernorm"
    #: Epsilon added to the variance inside every norm, for numerical stability.
    norm_eps: float = 1e-5
    #: Where the norms sit: "pre_ln" (before each branch, GPT-2 and Llama), "post_ln" (after each residual
    #: add, the original Transformer) or "sandwich" (before each branch and on its output before the residual
    #: add, Gemma 2 and 3).
    block: BlockKind = "pre_ln"
    #: RMSNorm multiplies by (1 + scale) with the scale initialised to 0 (Gemma), instead of by the scale.
    norm_unit_offset: bool = False
    #: Apply a final norm (ln_f) after the stack, before the output head (GPT-2 and Llama have it).
    final_norm: bool = True
    #: Position information: "learned" (an embedding table of max_seq_len rows, GPT-2) or "rope" (rotary
    #: embeddings applied to queries and keys, Llama).
    position: Position = "learned"
    #: RoPE base: the wavelength scale of the rotation frequencies (10000 GPT-NeoX, 500000 Llama 3).
    rope_theta: float = 10000.0
    #: Long-context scaling of the RoPE frequencies (see the rope_scaling keys).
    rope_scaling: RopeScalingConfig = RopeScalingConfig()
    #: RoPE base of the sliding-window (local) layers; 0: the same RoPE as the global layers. When set, local
    #: layers use it without rope_scaling (Gemma 3: 10000 local, 1000000 global).
    rope_local_theta: float = 0.0
    #: Tokens a query sees on a sliding-window layer, itself included (Mistral 4096, Gemma 2 4096, Gemma 3 512);
    #: 0: every layer attends to the whole causal prefix.
    sliding_window: int = 0
    #: With sliding_window > 0: layer i is global when (i + 1) is a multiple of this, local otherwise. 1: every
    #: layer local (Mistral); 2: alternating, local first (Gemma 2); 6: five local then one global (Gemma 3).
    sliding_window_pattern: int = 1
    #: Biases on the q, k and v projections only (Qwen2 / Qwen2.5), whatever use_bias says of the others.
    qkv_bias: bool = False
    #: RMSNorm over head_dim on every query and key head, before RoPE (Qwen3, Gemma 3).
    qk_norm: bool = False
    #: Attention scores are scaled by query_pre_attn_scalar^-0.5 (Gemma); 0: by head_dim^-0.5.
    query_pre_attn_scalar: float = 0.0
    #: Soft-cap the attention scores: cap * tanh(score / cap) before the mask and softmax (Gemma 2: 50); 0: off.
    attn_logit_softcap: float = 0.0
    #: Soft-cap the output logits: cap * tanh(logit / cap) (Gemma 2: 30); 0: off.
    final_logit_softcap: float = 0.0
    #: Multiply the token embeddings by sqrt(d_model) before the first block (Gemma), rounded to the compute dtype.
    scale_embeddings: bool = False
    #: MLP kind: "gelu" (GPT-2, tanh approximation), "relu", "swiglu" (gated SiLU, Llama) or "geglu" (gated GELU,
    #: tanh approximation, Gemma).
    mlp: MLPKind = "gelu"
    #: How attention is computed: "auto" (the splash kernel when compiling for TPU and the length is a multiple
    #: of 128, else xla), "xla" (einsums and a float32 softmax; supports attention_dropout), "splash" (JAX's
    #: Pallas flash kernel for TPU, jaxllm/model/splash.py: no (T, T) scores kept; in Pallas interpret mode
    #: elsewhere, slow) or "dot_product" (jax.nn.dot_product_attention, which runs XLA unless told otherwise).
    #: Decoding with a KV cache always uses xla.
    attention_impl: AttentionImpl = "auto"
    #: The splash kernel's tile edge (query and key blocks), a multiple of 128 dividing data.seq_len; 0: the
    #: largest of 512, 256, 128 dividing the length.
    attention_block: int = 0
    #: With mesh.context > 1 (the sequence split over devices), how attention reads the other shards' keys and
    #: values: "allgather" gathers them all, then attends (the splash kernel on TPU, xla elsewhere); "ring"
    #: passes them around the context devices one block at a time (ppermute), attending each block as it
    #: arrives with an online softmax, so no device holds the whole sequence's keys (xla blocks).
    context_attention: ContextAttention = "allgather"
    #: With mesh.context = C > 1: split each sequence into 2C chunks and give device i chunks i and 2C-1-i, so
    #: under the causal mask every device does the same attention work (otherwise the last does C times the first).
    context_load_balance: bool = True
    #: The output head reuses the token embedding's matrix (GPT-2); false: a separate lm_head (most Llamas).
    tie_embeddings: bool = True
    #: Biases on the attention and MLP projections (GPT-2 has them, Llama does not).
    use_bias: bool = True
    #: Dropout probability on the embeddings and on each residual branch (GPT-2's resid/embd dropout).
    dropout: float = 0.0
    #: Dropout probability on the attention probabilities (needs attention_impl=xla).
    attention_dropout: float = 0.0
    #: Standard deviation of the normal initialisation of weights and embeddings; residual output projections
    #: are scaled by 1 / sqrt(2 * num_layers) (GPT-2).
    init_std: float = 0.02
    #: Activation checkpointing per layer: "none" keeps every activation for the backward pass; "full"
    #: recomputes the whole layer; "minimal" keeps the projections' outputs (matmuls without a batch dimension:
    #: q/k/v/o and the MLP) and recomputes the rest (attention, norms, activations); "offload" keeps the same
    #: but in host memory, copied out in the forward and back in the backward (TPU/GPU; memory kinds
    #: device/pinned_host); "save_dots" keeps every matmul output; "save_dots_no_batch" is "minimal" by its
    #: JAX policy name. More recomputation, less memory.
    remat: Remat = "none"
    #: Unroll every loop over layers (and the pipeline schedule's ticks, the accumulation microbatches and the
    #: loss's chunks) into straight-line code. Compiles grow with depth; XLA's cost analysis counts a loop body
    #: once, so `jaxllm plan` compiles small unrolled probes to count all.
    scan_unroll: bool = False
    #: Positions per chunk of the output head and the losses read from it (jaxllm/model/loss.py): training
    #: holds (batch, loss_chunk, vocab) float32 logits at a time, recomputed in the backward pass, never
    #: (batch, seq, vocab). A sequence no longer than this takes one plain pass (so short-context runs are
    #: unchanged); 0: always one pass.
    loss_chunk: int = 1024
    #: Mixture of experts: routed experts per MLP (jaxllm/model/moe.py); 0: the dense MLP.
    num_experts: int = 0
    #: Experts each token is routed to (top-k).
    experts_per_token: int = 2
    #: Hidden width of each routed expert (an `mlp`-kind MLP), in features; null: d_ff.
    expert_d_ff: int | None = None
    #: Router scores: "softmax" over the experts (Mixtral, Qwen3-MoE) or "sigmoid" per expert (DeepSeek-V3).
    router: Router = "softmax"
    #: Renormalise each token's top-k router weights to sum to 1 (Mixtral; Qwen3-MoE's norm_topk_prob).
    router_norm_topk: bool = True
    #: Shared experts: one dense MLP of num_shared_experts * shared_expert_d_ff hidden units every token goes
    #: through beside the routed ones (DeepSeek-style); 0: none.
    num_shared_experts: int = 0
    #: Hidden width of each shared expert, in features; null: expert_d_ff.
    shared_expert_d_ff: int | None = None
    #: Weight of the load-balancing loss (Switch Transformer: E * sum_e f_e P_e) added to the training loss.
    router_aux_loss_coef: float = 0.01
    #: Weight of the router z-loss (ST-MoE: mean logsumexp(router logits)^2) added to the training loss.
    router_z_loss_coef: float = 0.0
    #: Expert capacity as a multiple of the even share (tokens * k / E); tokens past it are dropped. 0: dropless.
    expert_capacity_factor: float = 0.0
    #: Low-rank adapters on the projections, and the frozen base's storage (LoRA / QLoRA; see the lora keys).
    lora: LoraConfig = LoraConfig()
    #: Output head: "lm" gives next-token logits; "scalar" gives one value per position (reward models, critics).
    head: Head = "lm"
    #: Compute dtype of matmuls and activations.
    dtype: DType = "float32"
    #: Storage dtype of the parameters (what a checkpoint holds); matmuls cast them to dtype.
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
        if self.expert_d_ff is None:
            object.__setattr__(self, "expert_d_ff", self.d_ff)
        if self.shared_expert_d_ff is None:
            object.__setattr__(self, "shared_expert_d_ff", self.expert_d_ff)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; their product is the device count, -1 means "the rest".

    The size fields are the mesh axes (jaxllm.parallel.axes.MESH_AXES), in mesh order.
    """

    #: Devices along the data-parallel axis (each holds a full copy of the parameters); -1: the rest.
    data: int = -1
    #: Devices along the FSDP axis: data parallel, with parameters and optimizer moments split along d_model.
    fsdp: int = 1
    #: Devices along the context-parallel axis: each holds 1/context of every sequence (long context); attention
    #: reads the other shards' keys and values (model.context_attention). They also share the parameters as FSDP does.
    context: int = 1
    #: Devices along the expert-parallel axis: each holds num_experts / expert of every MoE layer's experts, and
    #: like a data-parallel device its own share of the batch (tokens travel to their experts by all-to-all).
    expert: int = 1
    #: Devices along the tensor-parallel axis: heads, MLP hidden units and vocabulary are split over it.
    tensor: int = 1
    #: Pipeline stages: the layers are split into this many consecutive groups (see the pipeline section).
    pipeline: int = 1
    #: TPU slices the mesh spans (multi-slice, joined by the data-centre network): 0 takes the count from the
    #: devices' slice_index. Only `data` crosses slices (mesh.data must be a multiple of it); the other axes stay
    #: inside each slice, on its fast interconnect.
    slices: int = 0
    #: Changes to the logical-axis rules table (jaxllm/parallel/axes.py), each "logical=axis",
    #: "logical=axis1+axis2" or "logical=" (replicated), e.g. ["embed=", "mlp=tensor"].
    rules: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The pipeline schedule used when mesh.pipeline > 1 (jaxllm/model/pipelined.py)."""

    #: Layer chunks per stage: 1 is GPipe; R > 1 is the circular schedule, each stage holding R non-adjacent
    #: chunks (a smaller bubble, more transfers).
    repeats: int = 1
