"""The hand-written backward passes equal autodiff of the textbook formulas."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxllm.model.primitives import gelu_tanh, layer_norm, linear, rms_norm


def _rand(key: int, shape: tuple[int, ...], scale: float = 1.0) -> jax.Array:
    return scale * jax.random.normal(jax.random.key(key), shape, jnp.float32)


def _close(a, b, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype, (x.shape, x.dtype, y.shape, y.dtype)
        np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), rtol=rtol, atol=atol)


@pytest.mark.parametrize(
    ("x_shape", "k_shape", "in_axes"),
    [
        ((3, 5, 8), (8, 32), 1),  # k_in < k_out: x is transposed (up_proj)
        ((3, 5, 32), (32, 8), 1),  # k_in > k_out: dy is transposed (down_proj)
        ((3, 5, 8), (8, 4, 6), 1),  # q_proj: (E) -> (H, D)
        ((3, 5, 4, 6), (4, 6, 8), 2),  # o_proj: (H, D) -> (E)
    ],
)
def test_linear_matches_autodiff(x_shape, k_shape, in_axes):
    x, k, c = _rand(0, x_shape), _rand(1, k_shape), None
    dims = ((tuple(range(len(x_shape) - in_axes, len(x_shape))), tuple(range(in_axes))), ((), ()))

    def plain(x, k):
        return jax.lax.dot_general(x, k, dims)

    c = _rand(2, plain(x, k).shape)
    ours = jax.grad(lambda x, k: jnp.sum(jnp.tanh(linear(x, k, in_axes)) * c), (0, 1))(x, k)
    ref = jax.grad(lambda x, k: jnp.sum(jnp.tanh(plain(x, k)) * c), (0, 1))(x, k)
    _close(linear(x, k, in_axes), plain(x, k))
    _close(ours, ref)


def test_linear_keeps_bf16():
    x, k = _rand(0, (2, 3, 8)).astype(jnp.bfloat16), _rand(1, (8, 16)).astype(jnp.bfloat16)
    dx, dk = jax.grad(lambda x, k: jnp.sum(linear(x, k).astype(jnp.float32)), (0, 1))(x, k)
    assert dx.dtype == jnp.bfloat16 and dk.dtype == jnp.bfloat16
    ref = jax.grad(lambda x, k: jnp.sum((x @ k).astype(jnp.float32)), (0, 1))(x, k)
    _close((dx, dk), ref, rtol=2e-2, atol=2e-2)


def test_gelu_matches_autodiff():
    x = _rand(0, (4, 7, 33), scale=3.0)  # covers both tails
    c = _rand(1, x.shape)
    _close(gelu_tanh(x), jax.nn.gelu(x, approximate=True))
    ours = jax.grad(lambda x: jnp.sum(gelu_tanh(x) * c))(x)
    ref = jax.grad(lambda x: jnp.sum(jax.nn.gelu(x, approximate=True) * c))(x)
    _close(ours, ref)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_layer_norm_matches_flax(dtype):
    x = (_rand(0, (3, 5, 16), scale=2.0) + 0.5).astype(dtype)
    scale, bias = _rand(1, (16,)) + 1.0, _rand(2, (16,))
    c = _rand(3, x.shape)
    ref_ln = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, use_fast_variance=False)
    variables = {"params": {"scale": scale, "bias": bias}}

    def ours(x, s, b):
        return jnp.sum(layer_norm(x, s, b, 1e-5) * c)

    def ref(x, s, b):
        return jnp.sum(ref_ln.apply({"params": {"scale": s, "bias": b}}, x) * c)

    tol = 1e-5 if dtype == jnp.float32 else 1e-2
    _close(layer_norm(x, scale, bias, 1e-5), ref_ln.apply(variables, x), rtol=tol, atol=tol)
    _close(jax.grad(ours, (0, 1, 2))(x, scale, bias), jax.grad(ref, (0, 1, 2))(x, scale, bias), rtol=tol, atol=tol)


def test_rms_norm_matches_flax():
    x, scale = _rand(0, (3, 5, 16), scale=2.0), _rand(1, (16,)) + 1.0
    c = _rand(3, x.shape)
    ref_rms = nn.RMSNorm(epsilon=1e-6, dtype=jnp.float32)

    def ours(x, s):
        return jnp.sum(rms_norm(x, s, 1e-6) * c)

    def ref(x, s):
        return jnp.sum(ref_rms.apply({"params": {"scale": s}}, x) * c)

    _close(rms_norm(x, scale, 1e-6), ref_rms.apply({"params": {"scale": scale}}, x))
    _close(jax.grad(ours, (0, 1))(x, scale), jax.grad(ref, (0, 1))(x, scale))


def test_residuals_are_the_inputs_only():
    """What the backward keeps: GELU saves x alone; the norms x plus per-row statistics."""
    x = _rand(0, (2, 3, 8))
    _, gelu_res = jax.vjp(gelu_tanh, x)
    _, ln_res = jax.vjp(lambda x: layer_norm(x, jnp.ones(8), jnp.zeros(8), 1e-5), x)
    big = lambda f: sum(a.size for a in jax.tree.leaves(f) if a.size >= x.size)  # noqa: E731
    assert big(gelu_res) == x.size
    assert big(ln_res) == x.size


@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (4, 2), (4, 1)])
def test_attention_matches_autodiff(heads, kv_heads):
    from jaxllm.model.attention import attention_mask
    from jaxllm.model.primitives import attention

    B, T, D, K, G = 2, 7, 8, kv_heads, heads // kv_heads
    q, k, v = _rand(0, (B, T, K, G, D)), _rand(1, (B, T, K, D)), _rand(2, (B, T, K, D))
    segments = jnp.array([[1, 1, 1, 2, 2, 2, 0], [1, 1, 1, 1, 1, 1, 1]])
    mask = attention_mask(segments, T)
    c = _rand(3, (B, T, K, G, D))

    def plain(q, k, v):
        s = jnp.einsum("btkgd,bskd->bkgts", q, k) / jnp.sqrt(jnp.float32(D))
        p = jax.nn.softmax(jnp.where(mask[:, None, None], s, jnp.finfo(jnp.float32).min), axis=-1)
        return jnp.einsum("bkgts,bskd->btkgd", p, v)

    _close(attention(q, k, v, mask), plain(q, k, v))
    ours = jax.grad(lambda q, k, v: jnp.sum(attention(q, k, v, mask) * c), (0, 1, 2))(q, k, v)
    ref = jax.grad(lambda q, k, v: jnp.sum(plain(q, k, v) * c), (0, 1, 2))(q, k, v)
    _close(ours, ref)
