"""Rules for LoRA / QLoRA (model.lora) and GRPO (the grpo section).

Why apart from validation.py: they belong to the post-training options of
jaxllm/config/schema_posttrain.py; keeping their rules together keeps each file one concept.
"""

from __future__ import annotations

from jaxllm.config.schema_model import ModelConfig
from jaxllm.config.schema_posttrain import LORA_TARGETS, GRPOConfig
from jaxllm.errors import ConfigError


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def check_lora(m: ModelConfig) -> None:
    """model.lora's own rules and its fit to the model's widths."""
    lo = m.lora
    _need(lo.rank >= 0, f"model.lora.rank={lo.rank} must be >= 0 (0: no adapters)")
    if lo.quantize != "none":
        _need(lo.rank > 0, f"model.lora.quantize={lo.quantize!r} freezes the base; it needs model.lora.rank > 0")
        widths = {"d_model": m.d_model, "num_heads x head_dim": m.num_heads * m.head_dim, "d_ff": m.d_ff}
        for name, width in widths.items():
            _need(
                lo.quant_block > 0 and width % lo.quant_block == 0,
                f"model.lora.quant_block={lo.quant_block} does not divide {name}={width} (a projection's input "
                "width); choose a divisor, e.g. 64 or 32",
            )
    if lo.rank == 0:
        return
    _need(lo.alpha > 0, f"model.lora.alpha={lo.alpha} must be > 0 (the adapter's output is scaled by alpha / rank)")
    _need(0 <= lo.dropout < 1, f"model.lora.dropout={lo.dropout} must be in [0, 1)")
    _need(bool(lo.targets), f"model.lora.targets is empty; choose from {', '.join(LORA_TARGETS)}")
    for t in lo.targets:
        _need(t in LORA_TARGETS, f"model.lora.targets has {t!r}; choose from {', '.join(LORA_TARGETS)}")
    mlp = [t for t in lo.targets if t in ("gate_proj", "up_proj", "down_proj")]
    _need(
        not (mlp and m.num_experts),
        f"model.lora.targets has {', '.join(mlp)} but model.num_experts={m.num_experts}: adapters on routed "
        "experts are not supported yet; target the attention projections (q_proj, k_proj, v_proj, o_proj)",
    )
    _need(m.head == "lm", f"model.lora needs model.head=lm (got {m.head!r}): reward models train every weight")


def check_grpo(g: GRPOConfig) -> None:
    """GRPO sizes, coefficients and ranges."""
    for name in ("group_size", "prompts_per_rollout", "epochs", "max_new_tokens", "eval_prompts"):
        value = getattr(g, name)
        _need(value > 0, f"grpo.{name}={value} must be a positive integer")
    _need(g.group_size >= 2, f"grpo.group_size={g.group_size} must be >= 2: advantages are measured within a group")
    _need(g.temperature > 0, f"grpo.temperature={g.temperature} must be > 0 (rollouts sample; 1.0 is usual)")
    for name in ("kl_coef", "missing_stop_penalty"):
        value = getattr(g, name)
        _need(value >= 0, f"grpo.{name}={value} must be >= 0")
    for name in ("clip_low", "clip_high"):
        value = getattr(g, name)
        _need(value > 0, f"grpo.{name}={value} must be > 0")
    _need(g.clip_low < 1, f"grpo.clip_low={g.clip_low} must be < 1 (the ratio's floor is 1 - clip_low)")
    _need(
        g.reward == "exact_match" or ":" in g.reward or bool(g.reward_from),
        f"grpo.reward={g.reward!r} is neither 'exact_match' nor 'module:function'; or set grpo.reward_from=RM_RUN",
    )
