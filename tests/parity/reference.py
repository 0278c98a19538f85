"""Small, plain PyTorch reference models for the JAX/Flax parity tests.

The parity suite builds one of these models, copies the weights of a Flax model
into it by state_dict key, runs both on the same tokens and compares logits,
losses and gradients. So these modules are written to be *obviously* right
rather than fast: every step is spelled out, shapes are commented, and the
state_dict key names are a fixed contract (another file maps weights by name).

Conventions used throughout:
    B = batch size, T = sequence length, E = d_model, H = query heads,
    K = key/value heads, D / Dh = head dim, F = feed-forward width, V = vocab.

Everything is float32. Masks passed in as ``attn_mask`` are bool (B, T, T)
"allow" masks: True means query t may attend to key s. They are always ANDed
with the causal mask, never used instead of it.

Nothing here imports the model under test; only torch, math and the stdlib.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "GPTMLP",
    "CausalSelfAttention",
    "CustomLanguageModel",
    "GPTBlock",
    "LlamaAttention",
    "LlamaBackbone",
    "LlamaBlock",
    "LlamaForCausalLM",
    "LlamaMLP",
    "RMSNorm",
    "TransformerBlock",
    "apply_rope",
    "gpt2_model",
    "postln_model",
    "rope_inv_freq",
    "rotate_half",
]


def causal_allow_mask(T: int, device: torch.device | None = None) -> Tensor:
    """Bool (T, T) mask, True where query t may look at key s (s <= t)."""
    return torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))


# ---------------------------------------------------------------------------
# 1. RMSNorm
# ---------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """Root-mean-square norm: rescale by 1/rms(x), no mean subtraction, no bias."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Compute in float32 even if someone feeds a lower-precision tensor.
        x32 = x.float()  # (..., C)
        mean_sq = x32.pow(2).mean(dim=-1, keepdim=True)  # (..., 1)
        inv_rms = torch.rsqrt(mean_sq + self.eps)  # (..., 1)
        y = x32 * inv_rms * self.weight.float()  # (..., C)
        return y.to(x.dtype)


# ---------------------------------------------------------------------------
# 2. GPT-2 style pre-LN block
# ---------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with a fused q/k/v projection (GPT-2 layout).

    The causal mask is built on the fly (not stored as a buffer) so that the
    state_dict holds only c_attn / c_proj weights.
    """

    def __init__(self, d_model: int, num_heads: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        assert d_model % num_heads == 0, "d_model must be divisible by num_heads"
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        B, T, E = x.shape
        H, D = self.num_heads, self.head_dim

        qkv = self.c_attn(x)  # (B, T, 3E)
        # Columns [0:E] are q, [E:2E] are k, [2E:3E] are v.
        q, k, v = qkv.split(E, dim=-1)  # each (B, T, E)
        # Head h owns columns h*D:(h+1)*D of each of q, k, v.
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)

        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # (B, H, T, T)

        allow = causal_allow_mask(T, device=x.device)  # (T, T)
        if attn_mask is not None:
            allow = allow & attn_mask.to(torch.bool)[:, None, :, :]  # (B, 1, T, T)
        scores = scores.masked_fill(~allow, float("-inf"))

        att = F.softmax(scores.float(), dim=-1)  # (B, H, T, T)
        att = self.attn_dropout(att)
        y = att @ v  # (B, H, T, D)

        y = y.transpose(1, 2).contiguous().view(B, T, E)  # (B, T, E) merge heads
        return self.resid_dropout(self.c_proj(y))  # (B, T, E)


class GPTMLP(nn.Module):
    """Position-wise feed-forward: Linear -> GELU(tanh) -> Linear -> dropout."""

    def __init__(self, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_ff, bias=bias)
        self.gelu = nn.GELU(approximate="tanh")
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.gelu(self.c_fc(x))  # (B, T, F)
        return self.dropout(self.c_proj(h))  # (B, T, E)


class GPTBlock(nn.Module):
    """Pre-LN transformer block: normalise *before* each sub-layer, residual after."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        bias: bool = True,
        dropout: float = 0.0,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=eps)
        self.attn = CausalSelfAttention(d_model, num_heads, bias=bias, dropout=dropout)
        self.ln_2 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = GPTMLP(d_model, d_ff, bias=bias, dropout=dropout)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask)  # (B, T, E)
        x = x + self.mlp(self.ln_2(x))  # (B, T, E)
        return x


# ---------------------------------------------------------------------------
# 3. Post-LN ReLU block (original "Attention is all you need" layout)
# ---------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    """Post-LN block using torch's own nn.MultiheadAttention.

    Using PyTorch's attention here (rather than our hand-written one) gives the
    parity suite a reference that shares no code with the rest of this file.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        d_ff: int,
        dropout: float = 0.0,
        eps: float = 1e-5,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, bias=bias, batch_first=True)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff, bias=bias),
            nn.ReLU(),
            nn.Linear(d_ff, d_model, bias=bias),
        )
        self.ln1 = nn.LayerNorm(d_model, eps=eps)
        self.ln2 = nn.LayerNorm(d_model, eps=eps)
        self.drop = nn.Dropout(dropout)

    def _mha_mask(self, B: int, T: int, attn_mask: Tensor | None, device: torch.device) -> Tensor:
        """Build the mask nn.MultiheadAttention wants.

        For nn.MultiheadAttention a bool mask means the opposite of ours:
        True = NOT allowed. A per-example mask must be (B*H, T, T), with
        example b's mask repeated for its H heads at rows b*H .. b*H+H-1.
        """
        allow = causal_allow_mask(T, device=device)  # (T, T)
        if attn_mask is None:
            return ~allow  # (T, T)
        allow = allow & attn_mask.to(torch.bool)  # (B, T, T)
        blocked = ~allow  # (B, T, T)
        return blocked.repeat_interleave(self.num_heads, dim=0)  # (B*H, T, T)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        B, T, _ = x.shape
        mask = self._mha_mask(B, T, attn_mask, x.device)
        a = self.attn(x, x, x, attn_mask=mask, need_weights=False)[0]  # (B, T, E)
        x = self.ln1(x + self.drop(a))  # (B, T, E)
        x = self.ln2(x + self.drop(self.ff(x)))  # (B, T, E)
        return x


# ---------------------------------------------------------------------------
# 4. Language model wrapper with learned positions (GPT-2 / post-LN)
# ---------------------------------------------------------------------------


class CustomLanguageModel(nn.Module):
    """Token + learned position embeddings, a stack of blocks, final norm, LM head.

    Blocks must accept ``block(x, attn_mask=...)``. With tied embeddings the LM
    head reuses the token-embedding matrix, so both keys appear in the
    state_dict but point at one tensor.
    """

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        d_model: int,
        blocks: list[nn.Module],
        dropout: float = 0.0,
        eps: float = 1e-5,
        tie_embeddings: bool = True,
        final_norm: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(max_seq_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList(blocks)
        self.ln_f: nn.Module = nn.LayerNorm(d_model, eps=eps) if final_norm else nn.Identity()
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        T = idx.shape[1]
        assert T <= self.max_seq_len, f"sequence length {T} > max_seq_len {self.max_seq_len}"
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, E)
        for block in self.h:
            x = block(x, attn_mask=attn_mask)  # (B, T, E)
        x = self.ln_f(x)  # (B, T, E)
        logits = self.lm_head(x)  # (B, T, V)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, self.vocab_size), targets.view(-1))
        return logits, loss


def gpt2_model(
    vocab_size: int,
    max_seq_len: int,
    d_model: int,
    num_layers: int,
    num_heads: int,
    d_ff: int,
    bias: bool = True,
    dropout: float = 0.0,
    eps: float = 1e-5,
    tie_embeddings: bool = True,
) -> CustomLanguageModel:
    """GPT-2 style model: pre-LN GPTBlocks plus a final LayerNorm."""
    blocks: list[nn.Module] = [
        GPTBlock(d_model, num_heads, d_ff, bias=bias, dropout=dropout, eps=eps) for _ in range(num_layers)
    ]
    return CustomLanguageModel(
        vocab_size,
        max_seq_len,
        d_model,
        blocks,
        dropout=dropout,
        eps=eps,
        tie_embeddings=tie_embeddings,
        final_norm=True,
    )


def postln_model(
    vocab_size: int,
    max_seq_len: int,
    d_model: int,
    num_layers: int,
    num_heads: int,
    d_ff: int,
    bias: bool = True,
    dropout: float = 0.0,
    eps: float = 1e-5,
    tie_embeddings: bool = True,
    final_norm: bool = True,
) -> CustomLanguageModel:
    """Post-LN ReLU model: a stack of TransformerBlocks.

    ``final_norm`` (extra, defaults to True like CustomLanguageModel) lets a
    test drop ln_f, since a post-LN stack already ends in a LayerNorm.
    """
    blocks: list[nn.Module] = [
        TransformerBlock(d_model, num_heads, d_ff, dropout=dropout, eps=eps, bias=bias) for _ in range(num_layers)
    ]
    return CustomLanguageModel(
        vocab_size,
        max_seq_len,
        d_model,
        blocks,
        dropout=dropout,
        eps=eps,
        tie_embeddings=tie_embeddings,
        final_norm=final_norm,
    )


# ---------------------------------------------------------------------------
# 5. Llama style: RoPE, GQA, SwiGLU, RMSNorm
# ---------------------------------------------------------------------------


def rope_inv_freq(head_dim: int, theta: float, scaling: dict | None = None) -> Tensor:
    """Rotary frequencies, one per pair of dimensions: shape (Dh/2,), float32.

    inv_freq[i] = 1 / theta ** (2i / Dh). With a Llama-3.1 ``scaling`` dict the
    low frequencies (long wavelengths) are slowed down by ``factor``, the high
    ones are left alone, and those in between are blended linearly.
    """
    assert head_dim % 2 == 0, "RoPE needs an even head_dim"
    exponents = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim  # (Dh/2,)
    inv_freq = 1.0 / (theta**exponents)  # (Dh/2,)
    if scaling is None:
        return inv_freq

    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    original_max_seq_len = float(scaling["original_max_seq_len"])
    # Wavelengths longer than low_freq_wavelen get scaled; shorter than
    # high_freq_wavelen are kept; anything in between is blended.
    low_freq_wavelen = original_max_seq_len / low_freq_factor
    high_freq_wavelen = original_max_seq_len / high_freq_factor

    new_freqs: list[float] = []
    for freq in inv_freq.tolist():
        wavelen = 2.0 * math.pi / freq
        if wavelen < high_freq_wavelen:
            new_freqs.append(freq)
        elif wavelen > low_freq_wavelen:
            new_freqs.append(freq / factor)
        else:
            smooth = (original_max_seq_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
            new_freqs.append((1.0 - smooth) * freq / factor + smooth * freq)
    return torch.tensor(new_freqs, dtype=torch.float32)


def rotate_half(x: Tensor) -> Tensor:
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension."""
    half = x.shape[-1] // 2
    x1 = x[..., :half]  # (..., Dh/2)
    x2 = x[..., half:]  # (..., Dh/2)
    return torch.cat((-x2, x1), dim=-1)  # (..., Dh)


def apply_rope(x: Tensor, positions: Tensor, inv_freq: Tensor, pairing: str = "half") -> Tensor:
    """Rotate each pair of dimensions of x by angle position * freq.

    x: (B, H, T, Dh); positions: (B, T) or (T,); inv_freq: (Dh/2,).

    pairing="half":        dim i pairs with dim i + Dh/2 (HF Llama rotate_half).
    pairing="interleaved": dim 2i pairs with dim 2i+1 (original complex form).
    Both are valid rotations but they are *different* functions of the same
    weights, which is exactly what the parity suite relies on.
    """
    Dh = x.shape[-1]
    pos = positions.to(torch.float32)[..., None]  # (B, T, 1) or (T, 1)
    freqs = inv_freq.to(x.device, torch.float32)  # (Dh/2,)
    angles = pos * freqs  # (B, T, Dh/2) or (T, Dh/2)
    if angles.dim() == 3:
        angles = angles[:, None, :, :]  # (B, 1, T, Dh/2) broadcast over heads

    if pairing == "half":
        emb = torch.cat((angles, angles), dim=-1)  # (..., T, Dh)
        cos, sin = emb.cos(), emb.sin()
        return x * cos + rotate_half(x) * sin  # (B, H, T, Dh)

    if pairing == "interleaved":
        cos, sin = angles.cos(), angles.sin()  # (..., T, Dh/2)
        pairs = x.reshape(*x.shape[:-1], Dh // 2, 2)  # (B, H, T, Dh/2, 2)
        x_even, x_odd = pairs[..., 0], pairs[..., 1]  # (B, H, T, Dh/2) each
        out_even = x_even * cos - x_odd * sin
        out_odd = x_even * sin + x_odd * cos
        out = torch.stack((out_even, out_odd), dim=-1)  # (B, H, T, Dh/2, 2)
        return out.reshape(x.shape)  # (B, H, T, Dh)

    raise ValueError(f"unknown rope pairing {pairing!r}; expected 'half' or 'interleaved'")


class LlamaAttention(nn.Module):
    """Causal self-attention with RoPE and grouped-query attention (GQA).

    K key/value heads are shared by H query heads: kv head j serves query heads
    j*G .. (j+1)*G - 1 with G = H // K.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        rope_pairing: str = "half",
    ) -> None:
        super().__init__()
        assert num_heads % num_kv_heads == 0, "num_heads must be a multiple of num_kv_heads"
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.rope_pairing = rope_pairing
        self.q_proj = nn.Linear(d_model, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * head_dim, d_model, bias=False)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        inv_freq: Tensor,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        B, T, _ = x.shape
        H, K, Dh = self.num_heads, self.num_kv_heads, self.head_dim
        G = H // K

        q = self.q_proj(x).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
        k = self.k_proj(x).view(B, T, K, Dh).transpose(1, 2)  # (B, K, T, Dh)
        v = self.v_proj(x).view(B, T, K, Dh).transpose(1, 2)  # (B, K, T, Dh)

        q = apply_rope(q, positions, inv_freq, self.rope_pairing)
        k = apply_rope(k, positions, inv_freq, self.rope_pairing)

        if G > 1:
            # kv head j -> query heads j*G .. j*G+G-1 (repeat each head G times in place).
            k = k.repeat_interleave(G, dim=1)  # (B, H, T, Dh)
            v = v.repeat_interleave(G, dim=1)  # (B, H, T, Dh)

        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, Dh)
        else:
            # For SDPA a bool mask means True = may attend, same as ours.
            allow = causal_allow_mask(T, device=x.device)  # (T, T)
            allow = allow & attn_mask.to(torch.bool)[:, None, :, :]  # (B, 1, T, T)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=allow)

        y = y.transpose(1, 2).contiguous().view(B, T, H * Dh)  # (B, T, H*Dh)
        return self.o_proj(y)  # (B, T, E)


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, d_ff, bias=False)
        self.up_proj = nn.Linear(d_model, d_ff, bias=False)
        self.down_proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, E)


class LlamaBlock(nn.Module):
    """Pre-norm Llama decoder layer (RMSNorm, RoPE/GQA attention, SwiGLU)."""

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        d_ff: int,
        eps: float,
        rope_pairing: str = "half",
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(d_model, eps)
        self.self_attn = LlamaAttention(d_model, num_heads, num_kv_heads, head_dim, rope_pairing)
        self.post_attention_layernorm = RMSNorm(d_model, eps)
        self.mlp = LlamaMLP(d_model, d_ff)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        inv_freq: Tensor,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        h = self.input_layernorm(x)  # (B, T, E)
        x = x + self.self_attn(h, positions, inv_freq, attn_mask)  # (B, T, E)
        x = x + self.mlp(self.post_attention_layernorm(x))  # (B, T, E)
        return x


class LlamaBackbone(nn.Module):
    """Embeddings + decoder layers + final RMSNorm (HF's ``LlamaModel``).

    ``inv_freq`` is a non-persistent buffer so it follows ``.to(device)`` but
    stays out of the state_dict key contract.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        d_ff: int,
        eps: float,
        rope_theta: float,
        rope_scaling: dict | None = None,
        rope_pairing: str = "half",
    ) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        self.layers = nn.ModuleList(
            LlamaBlock(d_model, num_heads, num_kv_heads, head_dim, d_ff, eps, rope_pairing) for _ in range(num_layers)
        )
        self.norm = RMSNorm(d_model, eps)
        self.register_buffer(
            "inv_freq",
            rope_inv_freq(head_dim, rope_theta, rope_scaling),
            persistent=False,
        )

    def forward(self, idx: Tensor, positions: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self.embed_tokens(idx)  # (B, T, E)
        for layer in self.layers:
            x = layer(x, positions, self.inv_freq, attn_mask)  # (B, T, E)
        return self.norm(x)  # (B, T, E)


class LlamaForCausalLM(nn.Module):
    """Llama backbone + LM head, with Hugging Face state_dict key names."""

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        d_ff: int,
        eps: float,
        rope_theta: float,
        rope_scaling: dict | None = None,
        tie_embeddings: bool = False,
        rope_pairing: str = "half",
    ) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.model = LlamaBackbone(
            vocab_size,
            d_model,
            num_layers,
            num_heads,
            num_kv_heads,
            head_dim,
            d_ff,
            eps,
            rope_theta,
            rope_scaling,
            rope_pairing,
        )
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(
        self,
        idx: Tensor,
        targets: Tensor | None = None,
        attn_mask: Tensor | None = None,
        positions: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        T = idx.shape[1]
        if positions is None:
            positions = torch.arange(T, device=idx.device)  # (T,)
        x = self.model(idx, positions, attn_mask)  # (B, T, E)
        logits = self.lm_head(x)  # (B, T, V)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, self.vocab_size), targets.view(-1))
        return logits, loss


# ---------------------------------------------------------------------------
# Self-check: python3 tests/parity/reference.py
# ---------------------------------------------------------------------------


def _plain_llama_attention(attn: LlamaAttention, x: Tensor, positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Hand-written attention (explicit softmax, no GQA repeat) for the self-check."""
    B, T, _ = x.shape
    H, Dh = attn.num_heads, attn.head_dim
    assert attn.num_kv_heads == H
    q = attn.q_proj(x).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
    k = attn.k_proj(x).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
    v = attn.v_proj(x).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
    q = apply_rope(q, positions, inv_freq, attn.rope_pairing)
    k = apply_rope(k, positions, inv_freq, attn.rope_pairing)
    scores = q @ k.transpose(-2, -1) / math.sqrt(Dh)  # (B, H, T, T)
    scores = scores.masked_fill(~causal_allow_mask(T, x.device), float("-inf"))
    y = F.softmax(scores, dim=-1) @ v  # (B, H, T, Dh)
    return attn.o_proj(y.transpose(1, 2).reshape(B, T, H * Dh))  # (B, T, E)


def _self_check() -> None:
    torch.manual_seed(0)
    V, E, L, H, K, T, B = 37, 24, 2, 4, 2, 7, 2
    Dh, F_ = E // H, 4 * E
    idx = torch.randint(0, V, (B, T))
    targets = torch.randint(0, V, (B, T))
    # A padding-style allow mask: example 1 cannot see its first two tokens
    # (except each token always sees itself).
    pad_mask = torch.ones(B, T, T, dtype=torch.bool)
    pad_mask[1, :, :2] = False
    pad_mask[1] |= torch.eye(T, dtype=torch.bool)
    all_true = torch.ones(B, T, T, dtype=torch.bool)
    scaling = {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_seq_len": 256,
    }

    models: dict[str, nn.Module] = {
        "gpt2": gpt2_model(V, 16, E, L, H, F_),
        "postln": postln_model(V, 16, E, L, H, F_),
        "llama": LlamaForCausalLM(V, E, L, H, K, Dh, F_, 1e-5, 10000.0, rope_scaling=scaling),
    }
    for name, model in models.items():
        model.eval()
        logits, loss = model(idx, targets)
        assert loss is not None and torch.isfinite(loss)
        loss.backward()
        grads_ok = all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        assert grads_ok, f"{name}: missing or non-finite gradient"
        with torch.no_grad():
            same = torch.allclose(model(idx, attn_mask=all_true)[0], logits, atol=1e-5)
            masked = model(idx, attn_mask=pad_mask)[0]
        assert same, f"{name}: all-True attn_mask should equal the causal-only path"
        assert torch.allclose(masked[0], logits[0].detach(), atol=1e-5), f"{name}: mask leaked across batch"
        assert not torch.allclose(masked[1], logits[1].detach(), atol=1e-3), f"{name}: mask had no effect"
        print(f"{name:7s} logits {tuple(logits.shape)}  loss {loss.item():.4f}  keys {len(model.state_dict())}")

    # Key contract spot-checks.
    gpt_keys = set(models["gpt2"].state_dict())
    assert {
        "wte.weight",
        "wpe.weight",
        "h.0.attn.c_attn.weight",
        "h.1.mlp.c_proj.bias",
        "ln_f.weight",
    } <= gpt_keys
    llama_keys = set(models["llama"].state_dict())
    assert {
        "model.embed_tokens.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    } <= llama_keys
    assert not any("inv_freq" in k for k in llama_keys)

    # RoPE: both pairings are rotations (norm-preserving), identical at position 0,
    # and different from each other elsewhere.
    x = torch.randn(B, H, T, Dh)
    inv_freq = rope_inv_freq(Dh, 10000.0, None)
    pos = torch.arange(T)
    half = apply_rope(x, pos, inv_freq, "half")
    inter = apply_rope(x, pos, inv_freq, "interleaved")
    assert torch.allclose(half.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(inter.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(half[:, :, 0], x[:, :, 0]) and torch.allclose(inter[:, :, 0], x[:, :, 0])
    rope_diff = (half - inter).abs().max().item()
    assert rope_diff > 1e-2
    # (B, T) positions give the same answer as (T,) positions.
    assert torch.allclose(apply_rope(x, pos.expand(B, T), inv_freq, "half"), half)
    scaled = rope_inv_freq(Dh, 10000.0, scaling)
    print(f"rope    half vs interleaved max|diff| {rope_diff:.4f}; inv_freq {inv_freq.tolist()} -> {scaled.tolist()}")

    # GQA: with K == H the SDPA path matches a hand-written plain attention...
    mha = LlamaAttention(E, H, H, Dh).eval()
    xe = torch.randn(B, T, E)
    with torch.no_grad():
        d_plain = (mha(xe, pos, inv_freq) - _plain_llama_attention(mha, xe, pos, inv_freq)).abs().max().item()
    assert d_plain < 1e-5, d_plain
    # ...and a K < H model equals a K == H model whose kv heads are copied per group.
    gqa = LlamaAttention(E, H, K, Dh).eval()
    G = H // K
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for proj in ("k_proj", "v_proj"):
            w = getattr(gqa, proj).weight.view(K, Dh, E)  # (K, Dh, E)
            getattr(mha, proj).weight.copy_(w.repeat_interleave(G, dim=0).reshape(H * Dh, E))
        d_gqa = (gqa(xe, pos, inv_freq) - mha(xe, pos, inv_freq)).abs().max().item()
    assert d_gqa < 1e-5, d_gqa
    print(f"gqa     K==H vs plain max|diff| {d_plain:.2e}; K={K} vs duplicated-kv K={H} max|diff| {d_gqa:.2e}")
    print("self-check OK")


if __name__ == "__main__":
    _self_check()
