"""Published parameter counts and FLOPs of the presets, from shapes alone (jax.eval_shape)."""

import math

import jax
import pytest

import jaxllm
from jaxllm import count_params, flops_per_token, load_config

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
