"""The dense family parts of the one decoder (Mistral, Qwen2/3, Gemma 2/3): what each
option computes, checked against a direct computation, across the backends (xla, splash
in interpret mode, the pipeline schedule) and through the KV cache, ring included.
Logits against transformers are in tests/test_hf_families.py."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.config import ConfigError, ModelConfig, validate_model
from jaxllm.generation import decode_step, prefill
from jaxllm.generation.steps import left_pad
from jaxllm.model.attention import attention_mask, layer_is_local, xla_attention
from jaxllm.model.decoder import Decoder
from jaxllm.model.kv_cache import init_cache
from jaxllm.model.splash import splash_attention

BASE = dict(
    vocab_size=61, max_seq_len=40, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, norm="rmsnorm",
    position="rope", mlp="swiglu", use_bias=False, tie_embeddings=False,
)  # fmt: skip
MISTRAL = ModelConfig(**BASE, sliding_window=5)
QWEN = ModelConfig(**BASE, qkv_bias=True, qk_norm=True)
GEMMA = ModelConfig(
    **{**BASE, "num_layers": 3, "mlp": "geglu", "tie_embeddings": True, "head_dim": 16},
    block="sandwich", norm_unit_offset=True, scale_embeddings=True, sliding_window=5, sliding_window_pattern=2,
    rope_local_theta=100.0, rope_theta=10000.0, query_pre_attn_scalar=24.0, attn_logit_softcap=5.0,
    final_logit_softcap=3.0, qk_norm=True,
)  # fmt: skip
FAMILIES = {"mistral": MISTRAL, "qwen": QWEN, "gemma": GEMMA}
RAGGED = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13], [12], [40, 41, 42, 43, 44, 45, 46, 47]]


def random_params(cfg: ModelConfig, seed: int):
    """Parameters with every weight random, norms and biases included (their init is 0 or 1,
    which would hide a mix-up)."""
    params = jaxllm.init_params(cfg, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    noisy = [0.3 * jax.random.normal(k, x.shape) + x for k, x in zip(keys, leaves, strict=True)]
    return jax.tree.unflatten(tree, noisy)


_forward = jax.jit(jaxllm.forward, static_argnums=0)


def full_logits(cfg, params, rows):
    padded = np.zeros((len(rows), cfg.max_seq_len), np.int32)
    for b, r in enumerate(rows):
        padded[b, : len(r)] = r
    logits = np.asarray(_forward(cfg, params, jnp.asarray(padded)))
    return np.stack([logits[b, len(r) - 1] for b, r in enumerate(rows)])


def test_the_layer_pattern_and_the_window_mask():
    assert layer_is_local(GEMMA).tolist() == [True, False, True]
    assert layer_is_local(dataclasses.replace(GEMMA, num_layers=7, sliding_window_pattern=6)).tolist() == [
        True, True, True, True, True, False, True,
    ]  # fmt: skip
    assert layer_is_local(MISTRAL).all() and not layer_is_local(QWEN).any()
    mask = np.asarray(attention_mask(None, 6, 3))[0]
    t, s = np.indices((6, 6))
    np.testing.assert_array_equal(mask, (s <= t) & (t - s < 3))


def test_a_windowed_layer_does_not_see_past_its_window():
    """One layer, window W: the logits at t move with token t - W + 1 and not with t - W."""
    cfg = dataclasses.replace(MISTRAL, num_layers=1)
    params = random_params(cfg, 3)
    tokens = jnp.asarray(np.random.default_rng(0).integers(1, 61, (1, 16)), jnp.int32)
    base = _forward(cfg, params, tokens)
    t, W = 12, cfg.sliding_window
    outside = _forward(cfg, params, tokens.at[0, t - W].set((tokens[0, t - W] + 1) % 61))
    inside = _forward(cfg, params, tokens.at[0, t - W + 1].set((tokens[0, t - W + 1] + 1) % 61))
    np.testing.assert_array_equal(np.asarray(outside[0, t]), np.asarray(base[0, t]))
    assert float(jnp.max(jnp.abs(inside[0, t] - base[0, t]))) > 1e-3


@pytest.mark.parametrize("family", list(FAMILIES))
def test_cached_logits_equal_the_full_forward_pass_at_every_step(family):
    """Prompts longer than the window, left-padded; Mistral's cache is a ring of W slots."""
    cfg = FAMILIES[family]
    params = random_params(cfg, 5)
    tokens, start = left_pad(RAGGED, width=16)
    logits, cache = prefill(cfg, params, tokens, start, slots=16 + 10)
    if family == "mistral":
        assert cache.k.shape[2] == cfg.sliding_window  # the ring keeps only the window
    seqs = [list(r) for r in RAGGED]
    for _ in range(10):
        np.testing.assert_allclose(np.asarray(logits), full_logits(cfg, params, seqs), atol=3e-5, rtol=1e-5)
        nxt = np.asarray(jnp.argmax(logits, axis=-1))
        for b, seq in enumerate(seqs):
            seq.append(int(nxt[b]))
        logits, cache = decode_step(cfg, params, nxt, cache)


def test_a_ring_prefill_in_pieces_equals_one_prefill():
    """Writing a prompt into the ring in two pieces (each longer than the window) gives the
    same last logits as one piece: the ring keeps the newest W of every write."""
    cfg = MISTRAL
    params = random_params(cfg, 7)
    rows = np.asarray(np.random.default_rng(1).integers(1, 61, (2, 20)), np.int32)
    whole = Decoder(cfg).apply({"params": params}, jnp.asarray(rows), cache=init_cache(cfg, 2, 30), last_only=True)[0]
    cache = init_cache(cfg, 2, 30)
    _, cache = Decoder(cfg).apply({"params": params}, jnp.asarray(rows[:, :12]), cache=cache, last_only=True)
    part, _ = Decoder(cfg).apply({"params": params}, jnp.asarray(rows[:, 12:]), cache=cache, last_only=True)
    np.testing.assert_allclose(np.asarray(part), np.asarray(whole), atol=2e-5, rtol=1e-5)


def test_softcapped_attention_gradients_equal_autodiff_of_the_formula():
    key = jax.random.split(jax.random.key(0), 4)
    B, T, H, K, D = 2, 12, 4, 2, 8
    q, cot = (3 * jax.random.normal(k, (B, T, H, D)) for k in (key[0], key[3]))
    k, v = (jax.random.normal(kk, (B, T, K, D)) for kk in key[1:3])
    mask = attention_mask(jnp.asarray([[1] * 7 + [2] * 5, [1] * 12]), T, 4)

    def reference(q, k, v):
        qg = q.reshape(B, T, K, H // K, D)
        s = jnp.einsum("btkgd,bskd->bkgts", qg, k) / np.sqrt(D)
        s = jnp.where(mask[:, None, None], 2.0 * jnp.tanh(s / 2.0), -1e30)
        return jnp.einsum("bkgts,bskd->btkgd", jax.nn.softmax(s, -1), v).reshape(B, T, H, D)

    ours, vjp = jax.vjp(lambda q, k, v: xla_attention(q, k, v, mask, softcap=2.0), q, k, v)
    ref, ref_vjp = jax.vjp(reference, q, k, v)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    for a, b in zip(vjp(cot), ref_vjp(cot), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("window,softcap", [(100, 0.0), (0, 20.0), (130, 30.0)])
def test_splash_window_and_softcap_equal_xla(window, softcap):
    key = jax.random.split(jax.random.key(1), 4)
    B, T, H, K, D = 1, 256, 2, 1, 64
    q, cot = (jax.random.normal(k, (B, T, H, D)) for k in (key[0], key[3]))
    k, v = (jax.random.normal(kk, (B, T, K, D)) for kk in key[1:3])
    seg = jnp.asarray([[1] * 150 + [2] * 100 + [0] * 6])
    mask = attention_mask(seg, T, window)
    out, vjp = jax.vjp(lambda q, k, v: splash_attention(q, k, v, seg, 128, window, softcap), q, k, v)
    ref, ref_vjp = jax.vjp(lambda q, k, v: xla_attention(q, k, v, mask, softcap=softcap), q, k, v)
    np.testing.assert_allclose(out, ref, atol=2e-5, rtol=1e-5)
    for a, b in zip(vjp(cot), ref_vjp(cot), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_gemma_layers_through_splash_and_the_pipeline_equal_xla():
    """Alternating local/global layers: the splash kernel picks its mask per layer (lax.cond),
    and the pipeline schedule carries each layer's flag with its weights."""
    cfg = dataclasses.replace(GEMMA, num_layers=4, max_seq_len=256, sliding_window=100, attn_logit_softcap=0.0)
    params = random_params(cfg, 9)
    tokens = jnp.asarray(np.random.default_rng(2).integers(1, 61, (2, 256)), jnp.int32)
    xla = Decoder(cfg).apply({"params": params}, tokens)
    kernel = Decoder(dataclasses.replace(cfg, attention_impl="splash")).apply({"params": params}, tokens)
    np.testing.assert_allclose(kernel, xla, atol=2e-4, rtol=1e-4)
    piped = Decoder(cfg, pipeline=(2, 1, 2)).apply({"params": params}, tokens)
    np.testing.assert_allclose(piped, xla, atol=2e-5, rtol=1e-5)


def test_final_softcap_reaches_the_chunked_loss():
    cfg = dataclasses.replace(GEMMA, loss_chunk=8)
    params = random_params(cfg, 11)
    tokens = jnp.asarray(np.random.default_rng(3).integers(1, 61, (2, 24)), jnp.int32)
    logits = jaxllm.forward(cfg, params, tokens)
    assert float(jnp.max(jnp.abs(logits))) <= cfg.final_logit_softcap
    total, count = jaxllm.loss(cfg, params, tokens[:, :-1], tokens[:, 1:])
    ref, _ = jaxllm.cross_entropy(jaxllm.forward(cfg, params, tokens[:, :-1]), tokens[:, 1:])
    np.testing.assert_allclose(total, ref, rtol=1e-5)


@pytest.mark.parametrize(
    "change,words",
    [
        ({"sliding_window": -1}, "sliding_window=-1"),
        ({"sliding_window_pattern": 0}, "sliding_window_pattern=0"),
        ({"rope_local_theta": 10.0}, "rope_local_theta=10.0"),
        ({"norm_unit_offset": True, "norm": "layernorm"}, "norm_unit_offset"),
        ({"attn_logit_softcap": 5.0, "attention_impl": "dot_product"}, "attn_logit_softcap"),
    ],
)
def test_bad_family_options_are_refused_by_name(change, words):
    with pytest.raises(ConfigError, match=words):
        validate_model(dataclasses.replace(QWEN, **change))


def test_causal_keys_count_what_the_masks_leave():
    """The FLOP counts' causal keys per query: on local layers exactly the mask's mean row
    count, on global ones T / 2 (the convention of the dense counts)."""
    from jaxllm.model.summary import causal_keys

    T = 40
    mask = np.asarray(attention_mask(None, T, GEMMA.sliding_window))[0]
    local, glob = int(layer_is_local(GEMMA).sum()), int((~layer_is_local(GEMMA)).sum())
    np.testing.assert_allclose(causal_keys(GEMMA, T), local * mask.sum(-1).mean() + glob * T / 2)
    assert causal_keys(QWEN, T) == QWEN.num_layers * T / 2
