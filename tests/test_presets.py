"""Published parameter counts and FLOPs of the presets, from shapes alone (jax.eval_shape)."""

import dataclasses
import math

import jax
import pytest
import torch
import transformers

import jaxllm
from jaxllm import count_params, flops_per_token, load_config
from jaxllm.convert.hf_config import hf_to_config
from jaxllm.model.api import param_shapes
from jaxllm.model.summary import active_params, attended_keys, flops_breakdown, matmul_params, summary_table

PUBLISHED = {
    "gpt2-124m": 124_439_808,
    "gpt2-355m": 354_823_168,
    "gpt2-774m": 774_030_080,
    "gpt2-1.5b": 1_557_611_200,
    "llama-8b": 8_030_261_248,
    "llama-70b": 70_553_706_496,
}


@pytest.mark.parametrize(("preset", "published"), list(PUBLISHED.items()))
def test_param_count_matches_published(preset, published):
    n = count_params(load_config(preset))
    assert isinstance(n, int)
    assert abs(n - published) <= 0.01 * published, f"{preset}: {n:,} vs published {published:,}"


def test_flops_per_token_gpt2_124m_by_hand():
    cfg = load_config("gpt2-124m")
    m = cfg.model
    E, L, F, V, H, D = m.d_model, m.num_layers, m.d_ff, m.vocab_size, m.num_heads, m.head_dim
    assert (E, L, F, V, H, D) == (768, 12, 3072, 50257, 12, 64)
    T = 1024
    n_matmul = L * (4 * E * E + 2 * E * F) + E * V
    expected = 6 * n_matmul + 12 * L * T * H * D
    assert expected == 854_438_400
    assert flops_per_token(cfg, T) == pytest.approx(expected, rel=1e-12)
    # the attention term grows with the context
    assert flops_per_token(cfg, 2 * T) - flops_per_token(cfg, T) == pytest.approx(12 * L * T * H * D, rel=1e-12)


def _n_elements(tree):
    return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [
        # GPT-style: learned positions, biases, tied embeddings
        (
            "shakespeare-char",
            ["model.num_layers=2", "model.d_model=64", "model.num_heads=4", "model.max_seq_len=32", "data.seq_len=32"],
        ),
        # Llama-style: RoPE, GQA, SwiGLU, no biases, untied embeddings
        (
            "llama-125m",
            [
                "model.num_layers=2",
                "model.d_model=64",
                "model.num_heads=4",
                "model.num_kv_heads=2",
                "model.d_ff=96",
                "model.vocab_size=300",
                "model.max_seq_len=32",
                "data.seq_len=32",
            ],
        ),
    ],
    ids=["gpt-tiny", "llama-tiny"],
)
def test_count_params_equals_real_init(preset, overrides):
    cfg = load_config(preset, overrides)
    params = jaxllm.init_params(cfg, jax.random.key(0))
    n_real = _n_elements(params)
    assert n_real > 0
    assert count_params(cfg) == n_real
    shapes = jaxllm.param_shapes(cfg)
    assert jax.tree_util.tree_structure(shapes) == jax.tree_util.tree_structure(params)
    assert [s.shape for s in jax.tree_util.tree_leaves(shapes)] == [p.shape for p in jax.tree_util.tree_leaves(params)]


# The family presets, each with the Hugging Face config class and the published config.json's
# values written out by hand (not derived from the preset, so a wrong width or RoPE base in a
# YAML is caught; what is left out is the class's default, equal to the published value), and
# the exact published parameter count (the Hub's safetensors total, which for a
# tied model counts the shared embedding once). Every figure below equals the meta-device count
# of transformers' own model of that config.
FAMILY_PRESETS = {
    "mistral-7b": (
        "MistralConfig",
        dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=8, sliding_window=4096, tie_word_embeddings=False, max_position_embeddings=32768,
             rms_norm_eps=1e-5, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        7_241_732_096,
    ),
    "qwen2.5-0.5b": (
        "Qwen2Config",
        dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
             num_key_value_heads=2, tie_word_embeddings=True, max_position_embeddings=32768, rms_norm_eps=1e-6,
             rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        494_032_768,
    ),
    "qwen2.5-7b": (
        "Qwen2Config",
        dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
             num_key_value_heads=4, tie_word_embeddings=False, max_position_embeddings=131072, rms_norm_eps=1e-6,
             rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        7_615_616_512,
    ),
    "qwen3-0.6b": (
        "Qwen3Config",
        dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
             num_key_value_heads=8, head_dim=128, tie_word_embeddings=True, max_position_embeddings=40960,
             rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        596_049_920,
    ),
    "qwen3-8b": (
        "Qwen3Config",
        dict(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
             num_key_value_heads=8, head_dim=128, tie_word_embeddings=False, max_position_embeddings=40960,
             rms_norm_eps=1e-6, rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        8_190_735_360,
    ),
    "gemma-2-2b": (
        "Gemma2Config",
        dict(vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
             num_key_value_heads=4, head_dim=256, sliding_window=4096, tie_word_embeddings=True,
             max_position_embeddings=8192, rms_norm_eps=1e-6, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
             final_logit_softcapping=30.0, rope_parameters=dict(rope_type="default", rope_theta=10000.0)),
        2_614_341_888,
    ),
    "gemma-3-1b": (
        "Gemma3TextConfig",
        dict(vocab_size=262144, hidden_size=1152, intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
             num_key_value_heads=1, head_dim=256, sliding_window=512, tie_word_embeddings=True,
             max_position_embeddings=32768, rms_norm_eps=1e-6, query_pre_attn_scalar=256,
             rope_parameters=dict(full_attention=dict(rope_type="default", rope_theta=1000000.0),
                                  sliding_attention=dict(rope_type="default", rope_theta=10000.0))),
        999_885_952,
    ),
    "mixtral-8x7b": (
        "MixtralConfig",
        dict(vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
             num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2, tie_word_embeddings=False,
             max_position_embeddings=32768, rms_norm_eps=1e-5, router_aux_loss_coef=0.02,
             rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        46_702_792_704,
    ),
    "qwen3-30b-a3b": (
        "Qwen3MoeConfig",
        dict(vocab_size=151936, hidden_size=2048, intermediate_size=6144, moe_intermediate_size=768, num_experts=128,
             num_experts_per_tok=8, num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
             tie_word_embeddings=False, max_position_embeddings=40960, rms_norm_eps=1e-6, norm_topk_prob=True,
             rope_parameters=dict(rope_type="default", rope_theta=1000000.0)),
        30_532_122_624,
    ),
}  # fmt: skip


def _transformers_count(config_class: str, published_json: dict) -> int:
    """Parameters of transformers' model of this config, built on the meta device (no memory);
    parameters() yields a tied embedding once."""
    hf_config = getattr(transformers, config_class)(**published_json)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(hf_config)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_family_preset_count_equals_transformers_and_published(preset):
    config_class, published_json, published = FAMILY_PRESETS[preset]
    cfg = load_config(preset)
    n = _n_elements(param_shapes(cfg))
    assert n == _transformers_count(config_class, published_json), f"{preset}: jaxllm {n:,}"
    assert n == published, f"{preset}: jaxllm {n:,} vs published {published:,}"
    assert count_params(cfg) == n  # the summary's grouped count covers every parameter


@pytest.mark.parametrize("preset", FAMILY_PRESETS)
def test_family_preset_is_the_published_config_imported(preset):
    """The preset equals what `jaxllm convert` makes of the published config.json, in every
    model field but the presets' training choices (compute dtype, activation checkpointing)."""
    config_class, published_json, _ = FAMILY_PRESETS[preset]
    imported = hf_to_config(getattr(transformers, config_class)(**published_json).to_dict())
    preset_model = load_config(preset).model
    training_choices = {"dtype": "bfloat16", "remat": preset_model.remat}
    assert dataclasses.replace(imported, **training_choices) == preset_model


def test_summary_flops_follow_windows_gated_mlps_and_experts():
    """Sliding-window layers count min(T, window) keys; GeGLU has three kernels like SwiGLU; an
    MoE layer counts experts_per_token experts and the router."""
    mistral = load_config("mistral-7b")  # every layer a 4096 window
    m = mistral.model
    per_key = 12.0 * m.num_layers * m.num_heads * m.head_dim
    assert flops_breakdown(mistral, 2048)["attention_scores"] == per_key * 2048
    assert flops_breakdown(mistral, 16384)["attention_scores"] == per_key * 4096
    gemma = load_config("gemma-2-2b")  # 13 local layers of 4096, 13 global
    g = gemma.model
    assert attended_keys(gemma, 8192) == 13 * 4096 + 13 * 8192
    assert matmul_params(gemma)["mlp"] == g.num_layers * 3 * g.d_model * g.d_ff
    mixtral = load_config("mixtral-8x7b")
    x = mixtral.model
    assert matmul_params(mixtral)["mlp"] == x.num_layers * 3 * x.d_model * 2 * x.expert_d_ff
    assert matmul_params(mixtral)["router"] == x.num_layers * x.d_model * 8


@pytest.mark.parametrize(("preset", "active"), [("mixtral-8x7b", 12.9e9), ("qwen3-30b-a3b", 3.3e9)])
def test_moe_active_params_match_the_model_cards(preset, active):
    cfg = load_config(preset)
    m = cfg.model
    routed = m.num_layers * m.num_experts * 3 * m.d_model * m.expert_d_ff
    n_active = active_params(cfg)
    assert n_active == count_params(cfg) - routed * (m.num_experts - m.experts_per_token) // m.num_experts
    assert abs(n_active - active) < 0.06e9, f"{preset}: {n_active:,} active"  # the cards round to 0.1B
    assert "active per token" in summary_table(cfg)
