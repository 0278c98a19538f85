"""Hugging Face import/export of Mistral, Qwen2, Qwen3, Gemma 2, Gemma 3 (text), Mixtral and
Qwen3-MoE against transformers itself, offline, on tiny random models.

Each case is a transformers model built here from a config (hidden 64, GQA, 2-4 layers,
a sliding window of 8 keys where the family has one, so 32-40 token inputs cross it),
every weight perturbed by 0.2 N(0, 1) so no norm is 1 and no bias 0, saved with
save_pretrained, imported with import_hf and compared with transformers (eager
attention, float32):
  logits      max|jaxllm - transformers| <= 1e-4 x max(1, max|logit|)
  generation  24 greedy tokens with the KV cache equal generate(do_sample=False)
  export      the imported run exported back: the same tensors bit for bit, loaded by
              from_pretrained with no missing or unexpected keys, the same logits
and every config.json field jaxllm would compute differently is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

import jaxllm
from jaxllm.convert import ConversionError, config_to_hf, export_hf, hf_to_config, import_hf, read_safetensors
from jaxllm.train.load import load_run
from tests.test_hf_convert import _hf_logits

QUIET = lambda _: None  # noqa: E731
RTOL = 1e-4
WINDOW = 8
# What every tiny model shares: GQA (4 query heads, 2 KV heads), no special tokens (so
# generate never stops early), a context long enough for prompt + 24 new tokens.
COMMON = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=64, initializer_range=0.2, bos_token_id=None, eos_token_id=None,
              pad_token_id=None)  # fmt: skip


def _mistral():
    # head_dim set apart from hidden_size // heads (24, not 16), one window on every layer
    return transformers.MistralConfig(**COMMON, num_hidden_layers=2, head_dim=24, sliding_window=WINDOW,
                                      rope_parameters={"rope_type": "default", "rope_theta": 10000.0})  # fmt: skip


def _qwen2():
    # q/k/v biases; local, global, local through layer_types (transformers 5 reads them)
    return transformers.Qwen2Config(**COMMON, num_hidden_layers=3, use_sliding_window=True, sliding_window=WINDOW,
                                    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                                    tie_word_embeddings=True)  # fmt: skip


def _qwen3():
    # QK-norm, head_dim 32 (not 16), tied, no window (as the published Qwen3s)
    return transformers.Qwen3Config(**COMMON, num_hidden_layers=2, head_dim=32, tie_word_embeddings=True)


def _gemma2():
    # local, global, local; caps that bite (the logits reach ~1.3 uncapped); query_pre_attn_scalar
    # 24 (not head_dim 16); untied
    return transformers.Gemma2Config(**COMMON, num_hidden_layers=3, head_dim=16, sliding_window=WINDOW,
                                     query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
                                     final_logit_softcapping=1.0, tie_word_embeddings=False)  # fmt: skip


def _gemma3():
    # pattern 3: local, local, global, local; the global layers with linear RoPE scaling; tied
    rope = {"full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1_000_000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}}  # fmt: skip
    return transformers.Gemma3TextConfig(**COMMON, num_hidden_layers=4, head_dim=16, sliding_window=WINDOW,
                                         layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                                      "sliding_attention"],
                                         rope_parameters=rope, query_pre_attn_scalar=16,
                                         final_logit_softcapping=1.0)  # fmt: skip


def _mixtral():
    return transformers.MixtralConfig(**COMMON, num_hidden_layers=2, num_local_experts=4, num_experts_per_tok=2,
                                      sliding_window=WINDOW)  # fmt: skip


def _qwen3_moe():
    # top-2 of 4 experts without renormalisation (norm_topk_prob false: Mixtral always renormalises)
    return transformers.Qwen3MoeConfig(**COMMON, num_hidden_layers=2, num_experts=4, num_experts_per_tok=2,
                                       moe_intermediate_size=32, norm_topk_prob=False)  # fmt: skip


CASES = {
    "MistralForCausalLM": _mistral,
    "Qwen2ForCausalLM": _qwen2,
    "Qwen3ForCausalLM": _qwen3,
    "Gemma2ForCausalLM": _gemma2,
    "Gemma3ForCausalLM": _gemma3,
    "MixtralForCausalLM": _mixtral,
    "Qwen3MoeForCausalLM": _qwen3_moe,
}

forward = jax.jit(jaxllm.forward, static_argnums=0)


class Case(NamedTuple):
    model: torch.nn.Module  # the transformers model (eager attention)
    root: Path  # root/hf: its save_pretrained directory; root/run: the imported jaxllm run
    cfg: jaxllm.Config
    params: dict


def _tokens(vocab, length, seed):
    return np.random.default_rng(seed).integers(0, vocab, size=(2, length)).astype(np.int32)


def _assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    err, scale = float(np.max(np.abs(actual - expected))), max(1.0, float(np.max(np.abs(expected))))
    assert err <= RTOL * scale, f"{what}: max abs difference {err:.3g} > {RTOL:g} x {scale:.3g}"
    print(f"{what}: max abs logit difference {err:.2e} (logits up to {np.max(np.abs(expected)):.2f})")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """architecture -> Case, each built once: a perturbed random model, save_pretrained, import_hf."""
    cache = {}

    def build(name):
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            torch.manual_seed(list(CASES).index(name))
            config = CASES[name]()
            model = getattr(transformers, name)._from_config(config, attn_implementation="eager")
            with torch.no_grad():
                for p in model.parameters():  # tied weights are one Parameter, perturbed once
                    p.add_(0.2 * torch.randn_like(p))
                if name.startswith("Gemma"):  # its embeddings are multiplied by sqrt(64): scaled back,
                    model.model.embed_tokens.weight.mul_(0.125)  # else the tied head echoes the input token
            model.eval().save_pretrained(root / "hf")
            import_hf(root / "hf", root / "run", log=QUIET)
            cfg, params, _ = load_run(root / "run")
            cache[name] = Case(model, root, cfg, params)
        return cache[name]

    return build


@pytest.mark.parametrize("name", CASES)
def test_import_logits_match(name, built):
    case = built(name)
    m = case.cfg.model
    if m.sliding_window:
        assert m.sliding_window == WINDOW
    x = _tokens(m.vocab_size, 40, seed=1)
    _assert_close(forward(m, case.params, jnp.asarray(x)), _hf_logits(case.model, x), f"{name} import")


@pytest.mark.parametrize("name", CASES)
def test_greedy_generation_matches(name, built):
    case = built(name)
    prompt = [int(t) for t in _tokens(case.cfg.model.vocab_size, 16, seed=2)[0]]
    ours = jaxllm.generate(case.cfg, case.params, [prompt], max_new_tokens=24, temperature=0.0).tokens[0]
    with torch.no_grad():
        ids = case.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=24, min_new_tokens=24)
    assert ours == ids[0, len(prompt) :].tolist()
    assert len(set(ours)) > 3, "a non-degenerate continuation"


@pytest.mark.parametrize("name", CASES)
def test_export_is_bit_identical_and_loads(name, built, tmp_path):
    case = built(name)
    export_hf(case.root / "run", tmp_path, log=QUIET)
    original, exported = read_safetensors(case.root / "hf"), read_safetensors(tmp_path)
    assert set(exported) == set(original)
    for key in original:
        assert exported[key].dtype == np.float32 and np.array_equal(exported[key], original[key]), key
    loaded, info = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True, attn_implementation="eager"
    )
    assert type(loaded).__name__ == name
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    x = _tokens(case.cfg.model.vocab_size, 32, seed=3)
    _assert_close(_hf_logits(loaded.eval(), x), _hf_logits(case.model, x), f"{name} export")
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf_to_config(hf) == case.cfg.model, "config.json reads back as the same model section"
    if hasattr(case.model.config, "layer_types"):
        assert loaded.config.layer_types == case.model.config.layer_types


# --------------------------------------------------------------------------- refusals


def _named(name):
    return lambda **changes: CASES[name]().to_dict() | {"architectures": [name]} | changes


MISTRAL, QWEN2, QWEN3, GEMMA2, GEMMA3, MIXTRAL, QWEN3_MOE = (_named(n) for n in CASES)


@pytest.mark.parametrize(
    "config,match",
    [
        (MISTRAL(hidden_act="gelu"), r"hidden_act='gelu' is not supported"),
        (MISTRAL(rope_parameters={"rope_type": "yarn", "factor": 2.0}), r"rope_parameters\.rope_type='yarn'"),
        (MISTRAL(layer_types=["full_attention", "sliding_attention"]), r"ignores layer_types"),
        (QWEN2(layer_types=["full_attention", "sliding_attention", "sliding_attention"]), r"layer_types gives .*FSS"),
        (QWEN2(layer_types=None, max_window_layers=1), r"use_sliding_window with max_window_layers=1"),
        (QWEN2(layer_types=["full_attention", "chunked_attention", "full_attention"]), r"'chunked_attention'"),
        (QWEN2(use_sliding_window=False), r"sliding layers but the window is None"),
        (QWEN2(rope_parameters={"rope_type": "dynamic", "factor": 2.0}), r"rope_type='dynamic'"),
        (QWEN3(attention_bias=True), r"attention_bias=True"),
        (QWEN3(partial_rotary_factor=0.5), r"partial_rotary_factor=0\.5"),
        (GEMMA2(hidden_activation="gelu"), r"hidden_activation='gelu' is not supported"),
        (GEMMA2(attention_bias=True), r"attention_bias=True"),
        (GEMMA2(use_bidirectional_attention=True), r"use_bidirectional_attention=True"),
        (GEMMA2(layer_types=["sliding_attention", "full_attention", "full_attention"]), r"gives layers SFF"),
        (GEMMA3(attn_logit_softcapping=50.0), r"attn_logit_softcapping=50\.0.*ignores it"),
        (GEMMA3(rope_parameters={"rope_type": "default", "rope_theta": 1e6}), r"keyed by layer type"),
        (GEMMA3(rope_parameters={"full_attention": {"rope_type": "yarn", "factor": 2.0},
                                 "sliding_attention": {"rope_type": "default"}}), r"full_attention\.rope_type='yarn'"),
        (GEMMA3(rope_parameters={"full_attention": {"rope_type": "default"},
                                 "sliding_attention": {"rope_type": "linear", "factor": 2.0}}),
         r"sliding_attention\.rope_type='linear'"),
        (GEMMA3(model_type="gemma3"), r"model_type='gemma3' is not 'gemma3_text'"),
        (MIXTRAL(router_jitter_noise=0.1), r"router_jitter_noise=0\.1"),
        (MIXTRAL(hidden_act="gelu"), r"hidden_act='gelu'"),
        (QWEN3_MOE(decoder_sparse_step=2), r"decoder_sparse_step=2"),
        (QWEN3_MOE(mlp_only_layers=[0]), r"mlp_only_layers=\[0\]"),
        (QWEN3_MOE(attention_bias=True), r"attention_bias=True"),
        ({"architectures": ["Gemma3ForConditionalGeneration"]}, r"'Gemma3ForConditionalGeneration' is not supported"),
    ],
)  # fmt: skip
def test_config_refusals_name_the_field(config, match):
    with pytest.raises(ConversionError, match=match):
        hf_to_config(config)


def test_every_family_config_reads_back():
    """hf_to_config(config_to_hf(m)) == m for each family's model section, and transformers
    builds the architecture config_to_hf names (no weights: cheap)."""
    for name, build in CASES.items():
        model = hf_to_config(build().to_dict() | {"architectures": [name]})
        hf = config_to_hf(model)
        assert hf["architectures"] == [name] and hf_to_config(hf) == model, name
        loaded = transformers.AutoConfig.for_model(**hf)
        assert type(loaded).__name__ == type(build()).__name__, name


def test_imported_router_loss_weighs_the_balance_as_transformers_does():
    """transformers' Mixtral load-balancing loss is k x jaxllm's on the same router logits; the
    import scales the coefficient by k, so coefficient x loss agree, and export divides back."""
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    from jaxllm.model.moe import load_balance_loss, route

    X, k = 4, 2
    model = hf_to_config(MIXTRAL(router_aux_loss_coef=0.02))
    assert model.experts_per_token == k and model.router_aux_loss_coef == 0.02 * k
    logits = np.random.default_rng(0).normal(size=(2, 9, X)).astype(np.float32)
    _, experts, probs = route(jnp.asarray(logits), k, "softmax", True)
    ours = load_balance_loss(probs, experts, X)
    theirs = float(load_balancing_loss_func((torch.from_numpy(logits.reshape(-1, X)),), X, k))
    np.testing.assert_allclose(model.router_aux_loss_coef * float(ours), 0.02 * theirs, rtol=1e-5)
    assert config_to_hf(model)["router_aux_loss_coef"] == 0.02
