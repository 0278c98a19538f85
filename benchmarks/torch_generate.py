"""The PyTorch side of the generation benchmark (benchmarks/generate.py).

The baseline is what a PyTorch user would reach for: Hugging Face `transformers`'
`GPT2LMHeadModel`, random init, float32, eager, `torch.no_grad()`, KV cache on, no
torch.compile. Every forward asks for the last position's logits only
(`logits_to_keep=1`): `model.generate` does that for its own prefill, and jaxllm's
`prefill` computes only the last position's logits too, so the prefill figures compare
the same work (the 50257-wide head over all 128 positions would add about 45% to it).

Each timing function returns seconds of wall time for one call; the caller warms up,
repeats and takes medians.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import transformers
from transformers import GPT2Config, GPT2LMHeadModel


def build_gpt2(
    num_layers: int, d_model: int, num_heads: int, vocab_size: int, context: int, threads: int
) -> GPT2LMHeadModel:
    """A randomly initialised GPT-2 in eval mode, with torch's intra-op threads set to `threads`.

    Dropout is off (eval mode) and the weights are HF's random init, not jaxllm's: the
    benchmark compares speed, never outputs.
    """
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=num_layers, n_embd=d_model, n_head=num_heads, vocab_size=vocab_size, n_positions=context,
        pad_token_id=0,
    )  # fmt: skip
    return GPT2LMHeadModel(config).to(torch.float32).eval()


def versions() -> dict[str, str]:
    """torch / transformers versions, for the report."""
    return {"torch": torch.__version__, "transformers": transformers.__version__}


def attention_impl(model: GPT2LMHeadModel) -> str:
    """The attention kernel HF picked (e.g. "sdpa"), for the report."""
    return str(getattr(model.config, "_attn_implementation", "unknown"))


@torch.no_grad()
def time_prefill(model: GPT2LMHeadModel, tokens: np.ndarray) -> float:
    """One forward over the whole prompt (B, P) that fills the KV cache."""
    ids = torch.from_numpy(tokens).long()
    t = time.perf_counter()
    out = model(ids, use_cache=True, logits_to_keep=1)
    out.logits.sum().item()  # eager CPU is synchronous already; this just keeps the result live
    return time.perf_counter() - t


@torch.no_grad()
def time_generate(model: GPT2LMHeadModel, tokens: np.ndarray, new_tokens: int) -> tuple[float, np.ndarray]:
    """`model.generate`, greedy, exactly `new_tokens` new tokens per row: (seconds, new ids (B, N))."""
    ids = torch.from_numpy(tokens).long()
    mask = torch.ones_like(ids)
    t = time.perf_counter()
    out = model.generate(
        ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
        use_cache=True, pad_token_id=0,
    )  # fmt: skip
    seconds = time.perf_counter() - t
    return seconds, out[:, ids.shape[1] :].numpy()


@torch.no_grad()
def time_step_loop(model: GPT2LMHeadModel, tokens: np.ndarray, new_tokens: int) -> float:
    """A hand-written greedy loop over `past_key_values`: seconds of the new_tokens - 1
    single-token forwards after the prefill (the prefill itself is not timed)."""
    ids = torch.from_numpy(tokens).long()
    out = model(ids, use_cache=True, logits_to_keep=1)
    past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
    t = time.perf_counter()
    for _ in range(new_tokens - 1):
        out = model(nxt[:, None], past_key_values=past, use_cache=True, logits_to_keep=1)
        past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1)
    return time.perf_counter() - t
