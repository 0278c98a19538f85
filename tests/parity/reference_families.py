"""Plain PyTorch references of the Llama-derived families: Mistral, Qwen2/3, Gemma 2/3, and the
routed MLP of Mixtral and Qwen3-MoE.

Why a second file next to reference.py: that file's Llama stays as it is (its tests pin it),
and these parts are switched on one by one by a `FamilySpec`, written out as the papers and
model cards describe them: every score, mask and expert is spelled out, nothing is fused.
State-dict keys are Hugging Face's names for each family (the contract the torch layout
tables of jaxllm/convert map to); nothing here imports the model under test.

Conventions as in reference.py: B batch, T length, E d_model, H query heads, K key/value
heads, Dh head dim, F MLP width, X experts, k experts per token. ``attn_mask`` is a bool
(B, T, T) allow mask, ANDed with the causal mask and the layer's window.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.parity.reference import apply_rope, causal_allow_mask, rope_inv_freq

__all__ = [
    "FamilyAttention",
    "FamilyBackbone",
    "FamilyBlock",
    "FamilyForCausalLM",
    "FamilySpec",
    "GatedMLP",
    "MixtralExpert",
    "Norm",
    "RoutedMLP",
    "family_inv_freq",
    "sliding_allow_mask",
    "soft_cap",
]


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """Every shape and switch of the reference; the defaults are a plain Llama."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    eps: float
    rope_theta: float
    rope_scaling: dict | None = None  # {"rope_type": "llama3" | "linear", "factor": ..., ...}
    rope_local_theta: float = 0.0  # the sliding layers' own RoPE base (unscaled); 0: the global RoPE
    sliding_window: int = 0
    layer_types: tuple[str, ...] = ()  # "sliding_attention" | "full_attention" per layer; (): all full
    qkv_bias: bool = False
    qk_norm: bool = False
    unit_offset: bool = False  # Gemma's RMSNorm: x_hat * (1 + w)
    sandwich: bool = False  # Gemma: a norm on each branch's output as well
    activation: str = "silu"  # the gated MLP's: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    query_pre_attn_scalar: float = 0.0  # scores * this^-0.5; 0: head_dim^-0.5
    attn_softcap: float = 0.0
    final_softcap: float = 0.0
    scale_embeddings: bool = False
    tie_embeddings: bool = False
    num_experts: int = 0
    experts_per_token: int = 2
    expert_d_ff: int = 0
    norm_topk: bool = True
    moe_layout: str = "qwen3_moe"  # "qwen3_moe": mlp.experts.{j}.gate_proj; "mixtral": block_sparse_moe.experts.{j}.w1


def soft_cap(x: Tensor, cap: float) -> Tensor:
    """cap * tanh(x / cap): close to x while |x| << cap, never beyond +-cap."""
    return cap * torch.tanh(x / cap)


def sliding_allow_mask(T: int, window: int) -> Tensor:
    """Bool (T, T): query t may see key s when s <= t and t - s < window (itself included)."""
    t = torch.arange(T)[:, None]  # (T, 1) query
    s = torch.arange(T)[None, :]  # (1, T) key
    return (s <= t) & (t - s < window)


def family_inv_freq(head_dim: int, theta: float, scaling: dict | None) -> Tensor:
    """(Dh/2,) RoPE frequencies: plain, Llama-3.1 scaled, or linear (every frequency / factor,
    i.e. every position / factor: position interpolation)."""
    if scaling is None:
        return rope_inv_freq(head_dim, theta)
    if scaling["rope_type"] == "linear":
        return rope_inv_freq(head_dim, theta) / float(scaling["factor"])
    return rope_inv_freq(head_dim, theta, {k: v for k, v in scaling.items() if k != "rope_type"})


class Norm(nn.Module):
    """RMSNorm in float32: x / rms(x) * w, or Gemma's x / rms(x) * (1 + w)."""

    def __init__(self, dim: int, eps: float, unit_offset: bool = False) -> None:
        super().__init__()
        self.eps = eps
        self.unit_offset = unit_offset
        self.weight = nn.Parameter(torch.zeros(dim) if unit_offset else torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()  # (..., C)
        x_hat = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)  # (..., C)
        scale = 1.0 + self.weight.float() if self.unit_offset else self.weight.float()
        return (x_hat * scale).to(x.dtype)


def _activation(name: str, x: Tensor) -> Tensor:
    if name == "silu":
        return F.silu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    raise ValueError(f"unknown activation {name!r}")


class GatedMLP(nn.Module):
    """down(act(gate(x)) * up(x)): SwiGLU with silu, GeGLU with tanh-GELU."""

    def __init__(self, d_model: int, d_ff: int, activation: str = "silu") -> None:
        super().__init__()
        self.activation = activation
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(_activation(self.activation, self.gate_proj(x)) * self.up_proj(x))  # (..., E)


class MixtralExpert(nn.Module):
    """Mixtral's expert, a SwiGLU under its own names: w2(silu(w1(x)) * w3(x))."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ff, bias=False)  # gate
        self.w3 = nn.Linear(d_model, d_ff, bias=False)  # up
        self.w2 = nn.Linear(d_ff, d_model, bias=False)  # down

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RoutedMLP(nn.Module):
    """Top-k routed experts: softmax over the router logits, the k largest kept (renormalised
    to sum to 1 if `norm_topk`), each token's output the weighted sum of its k experts'.

    The experts run one at a time over the tokens routed to them, as the papers describe it.
    """

    def __init__(self, d_model: int, num_experts: int, k: int, d_ff: int, norm_topk: bool, layout: str) -> None:
        super().__init__()
        self.k = k
        self.norm_topk = norm_topk
        self.gate = nn.Linear(d_model, num_experts, bias=False)  # the router
        expert = MixtralExpert if layout == "mixtral" else GatedMLP
        self.experts = nn.ModuleList(expert(d_model, d_ff) for _ in range(num_experts))

    def forward(self, x: Tensor) -> Tensor:
        B, T, E = x.shape
        tokens = x.reshape(B * T, E)  # (N, E)
        probs = F.softmax(self.gate(tokens).float(), dim=-1)  # (N, X)
        weights, chosen = torch.topk(probs, self.k, dim=-1)  # (N, k) each
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(tokens)  # (N, E)
        for j, expert in enumerate(self.experts):
            rows, slot = torch.where(chosen == j)  # the tokens that picked expert j, and where in their top-k
            if rows.numel() == 0:
                continue
            contribution = weights[rows, slot, None].to(tokens.dtype) * expert(tokens[rows])  # (n_j, E)
            out = out.index_add(0, rows, contribution)
        return out.view(B, T, E)


class FamilyAttention(nn.Module):
    """GQA self-attention with RoPE and the family options: q/k/v biases (Qwen2), an RMSNorm
    over each head's query and key before RoPE (Qwen3, Gemma 3), a score scale of
    query_pre_attn_scalar^-0.5 and a soft-cap on the scores (Gemma), a sliding window."""

    def __init__(self, spec: FamilySpec) -> None:
        super().__init__()
        E, H, K, Dh = spec.d_model, spec.num_heads, spec.num_kv_heads, spec.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = H, K, Dh
        self.scale = (spec.query_pre_attn_scalar or Dh) ** -0.5
        self.softcap = spec.attn_softcap
        self.q_proj = nn.Linear(E, H * Dh, bias=spec.qkv_bias)
        self.k_proj = nn.Linear(E, K * Dh, bias=spec.qkv_bias)
        self.v_proj = nn.Linear(E, K * Dh, bias=spec.qkv_bias)
        self.o_proj = nn.Linear(H * Dh, E, bias=False)
        self.qk_norm = spec.qk_norm
        if spec.qk_norm:
            self.q_norm = Norm(Dh, spec.eps, spec.unit_offset)
            self.k_norm = Norm(Dh, spec.eps, spec.unit_offset)

    def forward(
        self, x: Tensor, positions: Tensor, inv_freq: Tensor, window: int = 0, attn_mask: Tensor | None = None
    ) -> Tensor:
        B, T, _ = x.shape
        H, K, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, Dh)  # (B, T, H, Dh)
        k = self.k_proj(x).view(B, T, K, Dh)  # (B, T, K, Dh)
        v = self.v_proj(x).view(B, T, K, Dh).transpose(1, 2)  # (B, K, T, Dh)
        if self.qk_norm:  # over head_dim, one scale shared by every head
            q, k = self.q_norm(q), self.k_norm(k)
        q = apply_rope(q.transpose(1, 2), positions, inv_freq)  # (B, H, T, Dh)
        k = apply_rope(k.transpose(1, 2), positions, inv_freq)  # (B, K, T, Dh)
        k = k.repeat_interleave(H // K, dim=1)  # (B, H, T, Dh): kv head j serves query heads j*G .. j*G+G-1
        v = v.repeat_interleave(H // K, dim=1)  # (B, H, T, Dh)

        scores = (q @ k.transpose(-2, -1)).float() * self.scale  # (B, H, T, T)
        if self.softcap:
            scores = soft_cap(scores, self.softcap)
        allow = sliding_allow_mask(T, window) if window else causal_allow_mask(T)  # (T, T)
        if attn_mask is not None:
            allow = allow & attn_mask.to(torch.bool)[:, None, :, :]  # (B, 1, T, T)
        scores = scores.masked_fill(~allow, float("-inf"))
        probs = F.softmax(scores, dim=-1)  # (B, H, T, T)
        y = (probs.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, H*Dh)
        return self.o_proj(y)  # (B, T, E)


class FamilyBlock(nn.Module):
    """Pre-norm: x + attn(norm(x)), then x + mlp(norm(x)) (Llama, Mistral, Qwen).
    Sandwich (Gemma): x + post_norm(attn(norm(x))), then x + post_norm(mlp(norm(x)))."""

    def __init__(self, spec: FamilySpec) -> None:
        super().__init__()
        E, eps, off = spec.d_model, spec.eps, spec.unit_offset
        self.sandwich = spec.sandwich
        self.input_layernorm = Norm(E, eps, off)
        self.self_attn = FamilyAttention(spec)
        self.post_attention_layernorm = Norm(E, eps, off)  # pre-MLP norm, or (sandwich) the attention output's
        if spec.sandwich:
            self.pre_feedforward_layernorm = Norm(E, eps, off)
            self.post_feedforward_layernorm = Norm(E, eps, off)
        self.moe_layout = spec.moe_layout if spec.num_experts else ""
        if not spec.num_experts:
            self.mlp: nn.Module = GatedMLP(E, spec.d_ff, spec.activation)
        else:
            routed = RoutedMLP(E, spec.num_experts, spec.experts_per_token, spec.expert_d_ff, spec.norm_topk,
                               spec.moe_layout)  # fmt: skip
            if spec.moe_layout == "mixtral":
                self.block_sparse_moe = routed
            else:
                self.mlp = routed

    def feed_forward(self, x: Tensor) -> Tensor:
        return self.block_sparse_moe(x) if self.moe_layout == "mixtral" else self.mlp(x)

    def forward(self, x: Tensor, positions: Tensor, inv_freq: Tensor, window: int, attn_mask=None) -> Tensor:
        a = self.self_attn(self.input_layernorm(x), positions, inv_freq, window, attn_mask)  # (B, T, E)
        if self.sandwich:
            x = x + self.post_attention_layernorm(a)
            return x + self.post_feedforward_layernorm(self.feed_forward(self.pre_feedforward_layernorm(x)))
        x = x + a
        return x + self.feed_forward(self.post_attention_layernorm(x))


class FamilyBackbone(nn.Module):
    """Embeddings (times sqrt(E) for Gemma), the layers, the final norm (HF's ``*Model``).

    Layer i's window and RoPE come from ``spec.layer_types[i]``: a sliding layer sees the
    last ``sliding_window`` keys and, when ``rope_local_theta`` is set, rotates with that base
    and no scaling; a full layer sees the whole prefix with the global (scaled) RoPE.
    """

    def __init__(self, spec: FamilySpec) -> None:
        super().__init__()
        self.spec = spec
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.d_model)
        self.layers = nn.ModuleList(FamilyBlock(spec) for _ in range(spec.num_layers))
        self.norm = Norm(spec.d_model, spec.eps, spec.unit_offset)
        self.register_buffer("inv_freq", family_inv_freq(spec.head_dim, spec.rope_theta, spec.rope_scaling), False)
        local_theta = spec.rope_local_theta or spec.rope_theta
        local_scaling = None if spec.rope_local_theta else spec.rope_scaling
        self.register_buffer("local_inv_freq", family_inv_freq(spec.head_dim, local_theta, local_scaling), False)

    def layer_setup(self, i: int) -> tuple[Tensor, int]:
        """(inv_freq, window) of layer i."""
        sliding = bool(self.spec.layer_types) and self.spec.layer_types[i] == "sliding_attention"
        return (self.local_inv_freq, self.spec.sliding_window) if sliding else (self.inv_freq, 0)

    def forward(self, idx: Tensor, positions: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self.embed_tokens(idx)  # (B, T, E)
        if self.spec.scale_embeddings:
            x = x * torch.tensor(math.sqrt(self.spec.d_model), dtype=x.dtype)
        for i, layer in enumerate(self.layers):
            inv_freq, window = self.layer_setup(i)
            x = layer(x, positions, inv_freq, window, attn_mask)  # (B, T, E)
        return self.norm(x)


class FamilyForCausalLM(nn.Module):
    """Backbone + LM head (tied or not) + the final soft-cap, and cross-entropy on the logits."""

    def __init__(self, spec: FamilySpec) -> None:
        super().__init__()
        self.spec = spec
        self.model = FamilyBackbone(spec)
        self.lm_head = nn.Linear(spec.d_model, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        if positions is None:
            positions = torch.arange(idx.shape[1])  # (T,)
        logits = self.lm_head(self.model(idx, positions, attn_mask))  # (B, T, V)
        if self.spec.final_softcap:
            logits = soft_cap(logits, self.spec.final_softcap)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, self.spec.vocab_size), targets.view(-1))
        return logits, loss
