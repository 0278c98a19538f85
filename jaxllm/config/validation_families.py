"""Model-section rules for the family options: sliding windows, QK-norm, soft-capping,
Gemma's norms, and mixture of experts.

Why apart from validation.py: these are the fields that make Mistral, Qwen and Gemma (and
MoE) out of the one decoder; keeping their rules in one place keeps each file to one concept.
"""

from __future__ import annotations

from jaxllm.config.schema_model import MeshConfig, ModelConfig
from jaxllm.errors import ConfigError


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def check_families(m: ModelConfig) -> None:
    """The family options' own rules. Raises ConfigError naming the first broken key."""
    _need(m.sliding_window >= 0, f"model.sliding_window={m.sliding_window} must be >= 0 (tokens; 0: no window)")
    _need(
        m.sliding_window_pattern >= 1,
        f"model.sliding_window_pattern={m.sliding_window_pattern} must be >= 1 (1: every layer local)",
    )
    if m.rope_local_theta:
        _need(m.rope_local_theta > 0, f"model.rope_local_theta={m.rope_local_theta} must be positive, or 0")
        _need(
            m.position == "rope" and m.sliding_window > 0,
            f"model.rope_local_theta={m.rope_local_theta} is the RoPE base of sliding-window layers; it needs "
            "model.position=rope and model.sliding_window > 0",
        )
    for name in ("attn_logit_softcap", "final_logit_softcap", "query_pre_attn_scalar"):
        value = getattr(m, name)
        _need(value >= 0, f"model.{name}={value} must be >= 0 (0: off)")
    _need(
        not (m.norm_unit_offset and m.norm != "rmsnorm"),
        f"model.norm_unit_offset=True is Gemma's RMSNorm (1 + scale); it needs model.norm=rmsnorm, not {m.norm!r}",
    )
    _need(
        not (m.attn_logit_softcap and m.attention_impl == "dot_product"),
        "model.attn_logit_softcap needs attention_impl auto, xla or splash: jax.nn.dot_product_attention has no "
        "soft-capping",
    )
    if m.num_experts:
        _check_experts(m)


def _check_experts(m: ModelConfig) -> None:
    E, k = m.num_experts, m.experts_per_token
    _need(E >= 1, f"model.num_experts={E} must be >= 1, or 0 for the dense MLP")
    _need(1 <= k <= E, f"model.experts_per_token={k} must be between 1 and model.num_experts={E}")
    for name in ("expert_d_ff", "shared_expert_d_ff"):
        value = getattr(m, name)
        _need(value is not None and value > 0, f"model.{name}={value} must be a positive integer (or null)")
    _need(m.num_shared_experts >= 0, f"model.num_shared_experts={m.num_shared_experts} must be >= 0")
    for name in ("router_aux_loss_coef", "router_z_loss_coef", "expert_capacity_factor"):
        value = getattr(m, name)
        _need(value >= 0, f"model.{name}={value} must be >= 0")
    _need(
        m.mlp in ("swiglu", "geglu", "gelu", "relu"),
        f"model.mlp={m.mlp!r}: experts are MLPs of a known kind",
    )


def check_expert_mesh(m: ModelConfig, mesh: MeshConfig) -> None:
    """What expert and tensor parallelism split in an MoE layer: whole experts over `expert`,
    each expert's hidden units (and the shared experts') over `tensor`."""
    if not m.num_experts:
        return
    if mesh.expert > 1:
        _need(
            m.num_experts % mesh.expert == 0,
            f"model.num_experts={m.num_experts} is not divisible by mesh.expert={mesh.expert}; every expert "
            "device holds the same number of whole experts, so pick mesh.expert dividing it",
        )
    if mesh.tensor > 1:
        widths = {"expert_d_ff": m.expert_d_ff}
        if m.num_shared_experts:
            widths["num_shared_experts * shared_expert_d_ff"] = m.num_shared_experts * m.shared_expert_d_ff
        for name, value in widths.items():
            _need(
                value % mesh.tensor == 0,
                f"model.{name}={value} is not divisible by mesh.tensor={mesh.tensor}; tensor parallelism splits "
                "each expert's hidden units evenly",
            )
