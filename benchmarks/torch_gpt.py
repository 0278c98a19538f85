"""The PyTorch GPT that the train-step benchmark races: nanoGPT's model, written plainly.

This is the baseline a careful PyTorch user would write today, not the parity suite's
textbook reference (tests/parity/reference.py builds the causal mask and softmax by
hand so its intermediate values can be compared). Here attention is
`F.scaled_dot_product_attention(is_causal=True)`, PyTorch's fused kernel, as in nanoGPT.
The parameter names are the reference's (GPT-2's own: c_attn, c_proj, c_fc, ...), so
`jaxllm.convert.to_torch(cfg, params, "gpt2")` loads jaxllm's weights into it and both
frameworks start from the same point.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NanoGPT", "adamw"]


class _Attention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, bias: bool) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.c_attn = nn.Linear(d_model, 3 * d_model, bias=bias)  # q, k, v side by side
        self.c_proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        B, T, E = x.shape
        q, k, v = self.c_attn(x).split(E, dim=-1)
        q, k, v = (t.view(B, T, self.num_heads, E // self.num_heads).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, D)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, E))


class _MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int, bias: bool) -> None:
        super().__init__()
        self.c_fc = nn.Linear(d_model, d_ff, bias=bias)
        self.c_proj = nn.Linear(d_ff, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class _Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, d_ff: int, bias: bool, eps: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model, eps=eps)
        self.attn = _Attention(d_model, num_heads, bias)
        self.ln_2 = nn.LayerNorm(d_model, eps=eps)
        self.mlp = _MLP(d_model, d_ff, bias)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    """GPT-2: token + learned position embeddings, pre-LN blocks, final LayerNorm, tied head."""

    def __init__(
        self,
        vocab_size: int,
        max_seq_len: int,
        d_model: int,
        num_layers: int,
        num_heads: int,
        d_ff: int,
        bias: bool = True,
        tie_embeddings: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab_size, d_model)
        self.wpe = nn.Embedding(max_seq_len, d_model)
        self.h = nn.ModuleList(_Block(d_model, num_heads, d_ff, bias, eps) for _ in range(num_layers))
        self.ln_f = nn.LayerNorm(d_model, eps=eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.wte.weight

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        """Mean next-token cross-entropy of `targets` given `idx`, both (B, T) int64."""
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.reshape(-1))


def adamw(model: nn.Module, lr: float, betas: tuple[float, float], weight_decay: float) -> torch.optim.AdamW:
    """nanoGPT's AdamW: decay matrices and embeddings, not biases or norm parameters.

    PyTorch's default implementation (foreach on CPU); `named_parameters()` lists a tied
    embedding / head tensor once, so it is updated once per step.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)
