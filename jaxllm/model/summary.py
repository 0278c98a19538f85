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
  A sliding-window layer counts min(T, window) keys instead of T: by the same
  convention (the mask's shape ignored), those are the keys a query can reach.
- Mixture of experts: a token goes through experts_per_token of the num_experts
  experts, so N_matmul counts that many expert MLPs (and the shared ones, and the
  router's E x num_experts kernel); the parameter total counts every expert, and
  `active_params` the ones a token uses.
"""

from __future__ import annotations

import math

import jax

from jaxllm.config import Config, ConfigError, ModelConfig
from jaxllm.model import lora
from jaxllm.model.api import model_config, param_shapes
from jaxllm.model.attention import layer_is_local

# Parameter groups for the summary, by where they live in the params tree.
_GROUPS = {"wte": "embedding", "wpe": "position", "lm_head": "lm_head", "ln_f": "norm", "score": "lm_head"}
_BLOCK_GROUPS = {"attn": "attention", "mlp": "mlp", "ln_1": "norm", "ln_2": "norm", "ln_1_post": "norm",
                 "ln_2_post": "norm"}  # fmt: skip
_GROUP_ORDER = ("embedding", "position", "attention", "mlp", "router", "experts", "norm", "lm_head")
# Under blocks/mlp of an MoE layer: the routed experts' kernels, (L, num_experts, ...) each.
_EXPERT_KERNELS = ("gate_proj", "up_proj", "down_proj")


def _path_names(path) -> list[str]:
    return [str(getattr(p, "key", p)) for p in path]


def _group(names: list[str], moe: bool) -> str:
    """The summary group of the parameter at `names`. In an MoE layer, blocks/mlp holds the
    router, the routed experts and (under its own name) the shared experts' dense MLP."""
    if names[0] != "blocks":
        return _GROUPS[names[0]]
    if moe and names[1] == "mlp":
        return "router" if names[2] == "router" else "experts" if names[2] in _EXPERT_KERNELS else "mlp"
    return _BLOCK_GROUPS[names[1]]


def param_counts(config: Config | ModelConfig) -> dict[str, int]:
    """Parameters per group: embedding, position, attention, mlp, router, experts, norm, lm_head
    (mlp is the dense MLP, or an MoE layer's shared experts)."""
    m = model_config(config)
    moe = m.num_experts > 0
    counts: dict[str, int] = {}
    # The architecture's own weights: LoRA adapters and quantized storage are counted apart (lora_params).
    for path, leaf in jax.tree_util.tree_leaves_with_path(param_shapes(lora.base_model(m))):
        group = _group(_path_names(path), moe)
        counts[group] = counts.get(group, 0) + math.prod(leaf.shape)
    return counts


def count_params(config: Config | ModelConfig) -> int:
    """Total number of parameters (exact, from the shapes of the real init)."""
    return sum(param_counts(config).values())


def active_params(config: Config | ModelConfig) -> int:
    """Parameters one token's forward pass uses: the total less the routed experts it is not
    sent to (experts_per_token of num_experts); the total for a dense model."""
    m = model_config(config)
    counts = param_counts(config)
    total = sum(counts.values())
    if not m.num_experts:
        return total
    return total - counts.get("experts", 0) * (m.num_experts - m.experts_per_token) // m.num_experts


def _mlp_mats(m: ModelConfig) -> int:
    """Kernels of one MLP: gated (swiglu, geglu) have a gate beside up and down."""
    return 3 if m.mlp in ("swiglu", "geglu") else 2


def matmul_params(config: Config | ModelConfig) -> dict[str, int]:
    """Weights multiplied per token, by group (kernels only; see module docstring)."""
    m = model_config(config)
    E, H, K, D, F, L = m.d_model, m.num_heads, m.num_kv_heads, m.head_dim, m.d_ff, m.num_layers
    out = {"attention": L * (E * H * D + 2 * E * K * D + H * D * E), "mlp": L * _mlp_mats(m) * E * F}
    if m.num_experts:
        routed = m.experts_per_token * m.expert_d_ff
        shared = m.num_shared_experts * m.shared_expert_d_ff
        out["mlp"] = L * _mlp_mats(m) * E * (routed + shared)
        out["router"] = L * E * m.num_experts
    out["lm_head"] = E * m.vocab_size
    return out


def local_layers(m: ModelConfig) -> int:
    """How many layers have the sliding window (jaxllm.model.attention.layer_is_local)."""
    return int(layer_is_local(m).sum())


def attended_keys(config: Config | ModelConfig, seq_len: int) -> int:
    """Keys per query summed over the layers, as the FLOPs count them: seq_len on a global
    layer, min(seq_len, sliding_window) on a local one."""
    m = model_config(config)
    local = local_layers(m)
    return local * min(seq_len, m.sliding_window) + (m.num_layers - local) * seq_len


def causal_keys(config: Config | ModelConfig, seq_len: int) -> float:
    """Keys per query summed over the layers that the causal mask leaves, averaged over the
    queries: seq_len / 2 on a global layer (the convention the FLOP counts use); on a local
    one the mean over t of min(t + 1, W), W = min(seq_len, sliding_window), which for a
    sequence much longer than the window is nearly W: a window is almost all work."""
    m = model_config(config)
    local, T = local_layers(m), seq_len
    W = min(T, m.sliding_window) if local else 0
    per_local = (W * (W + 1) / 2 + (T - W) * W) / T if local else 0.0
    return local * per_local + (m.num_layers - local) * T / 2


def flops_per_token(config: Config | ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward): 6 * N_matmul + 12 * L * T * H * D (4 * N_matmul
    plus the adapters' 6 per parameter for a LoRA model, whose base gets no weight gradients)."""
    return sum(flops_breakdown(config, seq_len).values())


def flops_breakdown(config: Config | ModelConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token by component. A frozen weight costs 4 per token, not 6 (forward
    and the input gradient; no weight gradient), so a LoRA model's base counts 4 N and its
    adapters 6 per parameter, as any trained weight."""
    m = model_config(config)
    frozen = 4.0 if m.lora.rank else 6.0
    out = {k: frozen * v for k, v in matmul_params(config).items()}
    if m.lora.rank:
        out["lora_adapters"] = 6.0 * lora_params(config)
    out["attention_scores"] = 12.0 * attended_keys(m, seq_len) * m.num_heads * m.head_dim
    return out


def lora_params(config: Config | ModelConfig) -> int:
    """Parameters of the LoRA adapters (model.lora), the only ones such a run trains; 0 without."""
    m = model_config(config)
    if not m.lora.rank:
        return 0
    adapters = lora.split(m, param_shapes(config))[0]
    return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(adapters))


def memory_bytes(config: Config | ModelConfig) -> dict[str, int]:
    """Bytes for parameters as stored (a QLoRA base in its codes and scales), AdamW moments
    (float32 mu and nu) and gradients, both of the trained parameters only (the adapters of
    a LoRA model, float32)."""
    param_bytes = sum(
        math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(param_shapes(config))
    )
    adapters = lora_params(config)
    if adapters:
        return {"params": param_bytes, "adamw_state": 8 * adapters, "grads": 4 * adapters}
    return {"params": param_bytes, "adamw_state": 8 * count_params(config), "grads": param_bytes}


def family_lines(m: ModelConfig) -> list[str]:
    """The summary's lines for the options beyond GPT-2 and Llama (windows, QK-norm, soft-caps,
    Gemma's norms, experts): none for a model that uses none, so those summaries are unchanged."""
    attention = []
    if m.sliding_window:
        local = local_layers(m)
        where = "every layer" if local == m.num_layers else f"{local} of {m.num_layers} layers"
        local_rope = f", RoPE theta {m.rope_local_theta:g} there" if m.rope_local_theta else ""
        attention.append(f"sliding window {m.sliding_window} on {where}{local_rope}")
    if m.rope_scaling.kind != "none" and m.position == "rope":
        attention.append(f"{m.rope_scaling.kind} RoPE scaling x{m.rope_scaling.factor:g}")
    attention += ["q/k/v biases"] * (m.qkv_bias and not m.use_bias) + ["QK-norm"] * m.qk_norm
    if m.query_pre_attn_scalar:
        attention.append(f"scores scaled by {m.query_pre_attn_scalar:g}^-0.5")
    if m.attn_logit_softcap:
        attention.append(f"scores soft-capped at {m.attn_logit_softcap:g}")
    other = ["RMSNorm (1 + w)"] * m.norm_unit_offset + ["embeddings x sqrt(d_model)"] * m.scale_embeddings
    if m.final_logit_softcap:
        other.append(f"logits soft-capped at {m.final_logit_softcap:g}")
    lines = [f"       attention: {', '.join(attention)}"] if attention else []
    lines += [f"       {', '.join(other)}"] if other else []
    if m.num_experts:
        shared = f", {m.num_shared_experts} shared of d_ff {m.shared_expert_d_ff}" if m.num_shared_experts else ""
        renorm = ", top-k renormalised" if m.router_norm_topk else ""
        lines.append(
            f"       experts: {m.num_experts}, {m.experts_per_token} per token ({m.router} router{renorm}){shared}"
        )
    return lines


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
    ffn = f"d_ff {m.expert_d_ff} per expert" if m.num_experts else f"d_ff {m.d_ff}"  # an MoE model's d_ff is unused
    lines = [
        f"model: {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads "
        f"({m.num_kv_heads} kv), head_dim {m.head_dim}, {ffn}, vocab {m.vocab_size}",
        f"       {m.norm}/{m.block}, {m.position} positions, {m.mlp} MLP, "
        f"{'tied' if m.tie_embeddings else 'untied'} embeddings, bias={m.use_bias}",
        *family_lines(m),
        "",
        f"{'component':<18}{'params':>16}{'share':>8}",
    ]
    for group in _GROUP_ORDER:
        if group in counts:
            lines.append(f"{group:<18}{counts[group]:>16,}{counts[group] / total:>8.1%}")
    lines.append(f"{'total':<18}{total:>16,}")
    if m.num_experts:
        active = active_params(config)
        lines.append(f"{'active per token':<18}{active:>16,}{active / total:>8.1%}")
    if m.lora.rank:
        adapters, base = lora_params(config), "" if m.lora.quantize == "none" else f"; projections in {m.lora.quantize}"
        lines.append(f"{'lora adapters':<18}{adapters:>16,}{adapters / total:>8.1%}  (trained; the rest frozen{base})")
    rule = "4N frozen + 6 per adapter weight + 12LTHD" if m.lora.rank else "6N + 12LTHD"
    lines += ["", f"training FLOPs per token at seq_len {T} ({rule}):"]
    ftotal = sum(flops.values())
    for k, v in flops.items():
        lines.append(f"  {k:<16}{v:>16.4g}{v / ftotal:>8.1%}")
    lines.append(f"  {'total':<16}{ftotal:>16.4g}")
    gib, only = 1024**3, ", adapters only" if m.lora.rank else ""
    lines += [
        "",
        "memory (no activations):",
        f"  params        {mem['params'] / gib:10.3f} GiB",
        f"  AdamW state   {mem['adamw_state'] / gib:10.3f} GiB  (mu + nu, float32{only})",
        f"  params+AdamW  {(mem['params'] + mem['adamw_state']) / gib:10.3f} GiB",
        f"  + gradients   {(mem['params'] + mem['adamw_state'] + mem['grads']) / gib:10.3f} GiB  (peak during a step)",
    ]
    return "\n".join(lines)
