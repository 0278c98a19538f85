"""Parameter counts, FLOPs per token and memory, computed from shapes alone.

flops_per_token(config, T) = 6 * N_matmul + 12 * L * T * H * D_head

- N_matmul counts the weights that multiply an activation once per token: the q/k/v/o
  projections, the MLP kernels and the LM head (a tied embedding counts once, as the
  head). The input embedding lookup, learned positions, norms and biases are not
  matmuls and are left out (biases and norms are < 0.1% of the FLOPs).
- 6 = 2 FLOPs per multiply-add x (1 forward + 2 backward) passes.
- 12 * L * T * H * D_head: per layer, q.k^T and probs.v cost 2 * T * H * D_head
  multiply-adds each in the forward pass for a token attending over T keys, x3 for
  backward. T is counted in full (no halving for the causal mask), the convention
  of the PaLM paper's MFU and of nanoGPT, so MFU figures are comparable with theirs.
"""

from __future__ import annotations

import math

import jax

from jaxllm.config import Config, ConfigError, ModelConfig
from jaxllm.model.api import model_config, param_shapes

# Parameter groups for the summary, by where they live in the params tree.
_GROUPS = {"wte": "embedding", "wpe": "position", "lm_head": "lm_head", "ln_f": "norm"}
_BLOCK_GROUPS = {"attn": "attention", "mlp": "mlp", "ln_1": "norm", "ln_2": "norm"}


def _path_names(path) -> list[str]:
    return [str(getattr(p, "key", p)) for p in path]


def param_counts(config: Config | ModelConfig) -> dict[str, int]:
    """Parameters per group: embedding, position, attention, mlp, norm, lm_head."""
    counts: dict[str, int] = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(param_shapes(config)):
        names = _path_names(path)
        group = _BLOCK_GROUPS[names[1]] if names[0] == "blocks" else _GROUPS[names[0]]
        counts[group] = counts.get(group, 0) + math.prod(leaf.shape)
    return counts


def count_params(config: Config | ModelConfig) -> int:
    """Total number of parameters (exact, from the shapes of the real init)."""
    return sum(param_counts(config).values())


def matmul_params(config: Config | ModelConfig) -> dict[str, int]:
    """Weights multiplied per token, by group (kernels only; see module docstring)."""
    m = model_config(config)
    E, H, K, D, F, L = m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.d_ff, m.num_layers
    mlp_mats = 3 if m.mlp == "swiglu" else 2
    return {
        "attention": L * (E * H * D + 2 * E * K * D + H * D * E),
        "mlp": L * mlp_mats * E * F,
        "lm_head": E * m.vocab_size,
    }


def flops_per_token(config: Config | ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 * N_matmul + 12 * L * T * H * D."""
    return sum(flops_breakdown(config, seq_len).values())


def flops_breakdown(config: Config | ModelConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token by component."""
    m = model_config(config)
    out = {k: 6.0 * v for k, v in matmul_params(config).items()}
    out["attention_scores"] = 12.0 * m.num_layers * seq_len * m.num_heads * m.head_dim
    return out


def memory_bytes(config: Config | ModelConfig) -> dict[str, int]:
    """Bytes for parameters, AdamW moments (float32 mu and nu) and gradients."""
    n = count_params(config)
    param_bytes = sum(
        math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(param_shapes(config))
    )
    return {"params": param_bytes, "adamw_state": 8 * n, "grads": param_bytes}


def summary_table(config: Config, seq_len: int | None = None) -> str:
    """Human-readable summary printed by `jaxllm model summary`."""
    if seq_len is not None and seq_len < 1:  # would print negative attention FLOPs (0 would mean data.seq_len)
        raise ConfigError(f"seq_len={seq_len} must be a positive number of tokens, e.g. {config.data.seq_len}")
    m = config.model
    T = seq_len or config.data.seq_len
    counts = param_counts(config)
    flops = flops_breakdown(config, T)
    mem = memory_bytes(config)
    total = sum(counts.values())
    lines = [
        f"model: {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads "
        f"({m.num_kv_heads} kv), head_dim {m.head_dim}, d_ff {m.d_ff}, vocab {m.vocab_size}",
        f"       {m.norm}/{m.block}, {m.position} positions, {m.mlp} MLP, "
        f"{'tied' if m.tie_embeddings else 'untied'} embeddings, bias={m.use_bias}",
        "",
        f"{'component':<18}{'params':>16}{'share':>8}",
    ]
    for group in ("embedding", "position", "attention", "mlp", "norm", "lm_head"):
        if group in counts:
            lines.append(f"{group:<18}{counts[group]:>16,}{counts[group] / total:>8.1%}")
    lines += [f"{'total':<18}{total:>16,}", "", f"training FLOPs per token at seq_len {T} (6N + 12LTHD):"]
    ftotal = sum(flops.values())
    for k, v in flops.items():
        lines.append(f"  {k:<16}{v:>16.4g}{v / ftotal:>8.1%}")
    lines.append(f"  {'total':<16}{ftotal:>16.4g}")
    gib = 1024**3
    lines += [
        "",
        "memory (no activations):",
        f"  params        {mem['params'] / gib:10.3f} GiB",
        f"  AdamW state   {mem['adamw_state'] / gib:10.3f} GiB  (mu + nu, float32)",
        f"  params+AdamW  {(mem['params'] + mem['adamw_state']) / gib:10.3f} GiB",
        f"  + gradients   {(mem['params'] + mem['adamw_state'] + mem['grads']) / gib:10.3f} GiB  (peak during a step)",
    ]
    return "\n".join(lines)
