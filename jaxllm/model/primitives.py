"""Hand-written backward passes for the layers every token goes through.

Autodiff is correct but not frugal. For each op it keeps whatever its forward
intermediates happen to be and derives the gradient in whatever orientation its rules
give. Two costs follow, and the train-step profile on CPU showed both
(BENCHMARKS.md, "train_step"):

- Residuals. `jax.nn.gelu` keeps five (B, T, d_ff) intermediates for the backward, and
  flax's LayerNorm keeps four (B, T, E) arrays. Inside the scanned layer stack every
  residual becomes a stacked [layers, ...] buffer that XLA zero-fills, writes slice by
  slice and copies. On the 4-layer nanoGPT recipe that was about a third of the step.
- Transposes. Autodiff's kernel gradient of x @ W contracts the output gradient first,
  so XLA materialises a transposed copy of the larger operand, e.g. the (B*T, d_ff)
  activation gradient of up_proj.

The functions here compute the same values (the parity suite holds them to PyTorch),
keep the minimum (x and two per-row statistics for a norm, x alone for GELU, x and W
for a matmul), and write each gradient in the orientation that costs least.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

# GELU's tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715

# Masked scores use the most negative finite float32, not -inf: a row whose every key
# is masked then softmaxes to a uniform distribution instead of NaN.
MASK_VALUE = float(jnp.finfo(jnp.float32).min)


# --------------------------------------------------------------------------- linear


def _contract(x: jax.Array, kernel: jax.Array, in_axes: int, out_dtype=None) -> jax.Array:
    """x's last `in_axes` axes against kernel's first `in_axes` axes."""
    dims = ((tuple(range(x.ndim - in_axes, x.ndim)), tuple(range(in_axes))), ((), ()))
    return jax.lax.dot_general(x, kernel, dims, preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def linear(x: jax.Array, kernel: jax.Array, in_axes: int = 1, out_dtype=None) -> jax.Array:
    """x @ kernel over x's last `in_axes` axes (kernel: (*in, *out)); `out_dtype` as
    dot_general's preferred_element_type (the LM head asks for float32 logits).

    The kernel gradient is a 2-D [N, K_in]^T x [N, K_out] product (N = tokens) that
    transposes whichever of x and dy is smaller; autodiff's version transposes dy
    whatever its size (for up_proj: d_ff columns instead of d_model; for the LM head the
    whole (tokens, vocab) logits gradient).
    """
    return _contract(x, kernel, in_axes, out_dtype)


def _linear_fwd(x, kernel, in_axes, out_dtype):
    return _contract(x, kernel, in_axes, out_dtype), (x, kernel)


def _linear_bwd(in_axes, out_dtype, residuals, dy):
    x, kernel = residuals
    dy = dy.astype(kernel.dtype)  # as autodiff's transpose of a preferred_element_type dot does
    out_axes = kernel.ndim - in_axes
    dx_dims = ((tuple(range(dy.ndim - out_axes, dy.ndim)), tuple(range(in_axes, kernel.ndim))), ((), ()))
    dx = jax.lax.dot_general(dy, kernel, dx_dims).astype(x.dtype)
    k_in, k_out = math.prod(kernel.shape[:in_axes]), math.prod(kernel.shape[in_axes:])
    x2, dy2 = x.reshape(-1, k_in), dy.reshape(-1, k_out)  # rows are tokens
    by_rows = (((0,), (0,)), ((), ()))
    if k_in <= k_out:
        dk = jax.lax.dot_general(x2, dy2, by_rows)  # transposes x, the smaller
    else:
        dk = jax.lax.dot_general(dy2, x2, by_rows).T  # transposes dy and the (small) result
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


linear.defvjp(_linear_fwd, _linear_bwd)


# ----------------------------------------------------------------------------- GELU


@jax.custom_vjp
def gelu_tanh(x: jax.Array) -> jax.Array:
    """GPT-2's GELU (tanh approximation), exactly `jax.nn.gelu(x, approximate=True)`;
    the backward keeps only x and recomputes tanh, in float32."""
    return jax.nn.gelu(x, approximate=True)


def _gelu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return gelu_tanh(x), x


def _gelu_bwd(x: jax.Array, dy: jax.Array) -> tuple[jax.Array]:
    xf = x.astype(jnp.float32)
    x2 = xf * xf
    t = jnp.tanh(_GELU_C * xf * (1.0 + _GELU_A * x2))
    slope = 0.5 * (1.0 + t) + 0.5 * _GELU_C * xf * (1.0 - t * t) * (1.0 + 3.0 * _GELU_A * x2)
    return ((dy.astype(jnp.float32) * slope).astype(x.dtype),)


gelu_tanh.defvjp(_gelu_fwd, _gelu_bwd)


# ---------------------------------------------------------------------------- norms


def _row_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=-1, keepdims=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    """(x - mean) / sqrt(var + eps) * scale + bias over the last axis, in float32.

    Two-pass variance (as PyTorch computes it). Returns float32; the caller casts.
    """
    return _layer_norm_fwd(x, scale, bias, eps)[0]


def _layer_norm_fwd(x, scale, bias, eps):
    xf = x.astype(jnp.float32)
    mean = _row_mean(xf)
    xc = xf - mean
    rstd = jax.lax.rsqrt(_row_mean(xc * xc) + eps)
    y = xc * rstd * scale.astype(jnp.float32) + bias.astype(jnp.float32)
    return y, (x, mean, rstd, scale, bias)


def _layer_norm_bwd(eps, residuals, dy):
    x, mean, rstd, scale, bias = residuals
    xhat = (x.astype(jnp.float32) - mean) * rstd
    dy = dy.astype(jnp.float32)
    lead = tuple(range(x.ndim - 1))
    dscale = jnp.sum(dy * xhat, axis=lead)
    dbias = jnp.sum(dy, axis=lead)
    g = dy * scale.astype(jnp.float32)
    dx = rstd * (g - _row_mean(g) - xhat * _row_mean(g * xhat))
    return dx.astype(x.dtype), dscale.astype(scale.dtype), dbias.astype(bias.dtype)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x^2) + eps) * scale over the last axis, in float32 (caller casts)."""
    return _rms_norm_fwd(x, scale, eps)[0]


def _rms_norm_fwd(x, scale, eps):
    xf = x.astype(jnp.float32)
    rstd = jax.lax.rsqrt(_row_mean(xf * xf) + eps)
    return xf * rstd * scale.astype(jnp.float32), (x, rstd, scale)


def _rms_norm_bwd(eps, residuals, dy):
    x, rstd, scale = residuals
    xhat = x.astype(jnp.float32) * rstd
    dy = dy.astype(jnp.float32)
    dscale = jnp.sum(dy * xhat, axis=tuple(range(x.ndim - 1)))
    g = dy * scale.astype(jnp.float32)
    dx = rstd * (g - xhat * _row_mean(g * xhat))
    return dx.astype(x.dtype), dscale.astype(scale.dtype)


rms_norm.defvjp(_rms_norm_fwd, _rms_norm_bwd)


# ------------------------------------------------------------------------ attention


def _scores(
    qh: jax.Array, kh: jax.Array, mask: jax.Array, scale: float, softcap: float
) -> tuple[jax.Array, jax.Array | None]:
    """Masked float32 scores (B, K, G, T, S) of qh (B, K, G, T, D) against kh (B, K, S, D),
    soft-capped to softcap * tanh(s / softcap) when softcap > 0 (Gemma 2); with the tanh
    itself, which the backward needs (None without a cap)."""
    s = jnp.einsum("bkgtd,bksd->bkgts", qh, kh, preferred_element_type=jnp.float32) * scale
    t = None
    if softcap:
        t = jnp.tanh(s / softcap)
        s = softcap * t
    return jnp.where(mask[:, None, None], s, MASK_VALUE), t


# Contract the (G, T) query axes of two head-major arrays, batch over (B, K):
# (B, K, G, T, X) x (B, K, G, T, S) -> (B, K, X, S). The (T, S) operand is read as stored,
# so the big matrix is never transposed; only the small (T, D) side is.
_BY_QUERIES = (((2, 3), (2, 3)), ((0, 1), (0, 1)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, softcap: float = 0.0) -> jax.Array:
    """softmax(q k^T / sqrt(D), masked) v, grouped: q (B, T, K, G, D), k/v (B, S, K, D),
    mask (B|1, T, S) bool. The softmax runs in float32. softcap > 0 caps the scores at
    +-softcap with a tanh before the mask (Gemma 2's attention logit soft-capping).

    The backward keeps q, k, v, the output and one float32 log-sum-exp per query, and
    recomputes the (T, S) probabilities from them, as flash attention does: autodiff
    would keep the probabilities themselves, layers x B x H x T x S floats that the
    scanned stack must stack, zero-fill and copy, for one extra q k^T matmul per layer.
    Inside, everything is head-major, (B, K, G, T, D), and every product is arranged so
    the (T, S) matrices keep one layout from the forward to the gradients: on CPU a
    transposed read of those is several times slower than the arithmetic on them.
    """
    return _attention_fwd(q, k, v, mask, softcap)[0]


def _attention_fwd(q, k, v, mask, softcap):
    qh, kh, vh = q.transpose(0, 2, 3, 1, 4), k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    s, _ = _scores(qh, kh, mask, q.shape[-1] ** -0.5, softcap)
    m = jnp.max(s, axis=-1, keepdims=True)
    p = jnp.exp(s - m)
    denom = jnp.sum(p, axis=-1, keepdims=True)  # (B, K, G, T, 1)
    # Normalise the (T, D) output rather than the (T, S) probabilities: one pass fewer.
    oh = jnp.einsum("bkgts,bksd->bkgtd", p.astype(v.dtype), vh, preferred_element_type=jnp.float32) / denom
    oh = oh.astype(v.dtype)
    lse = m + jnp.log(denom)
    return oh.transpose(0, 3, 1, 2, 4), (qh, kh, vh, mask, oh, lse)


def _attention_bwd(softcap, residuals, d_out):
    qh, kh, vh, mask, oh, lse = residuals
    scale = qh.shape[-1] ** -0.5
    do = d_out.transpose(0, 2, 3, 1, 4)  # (B, K, G, T, D)
    s, t = _scores(qh, kh, mask, scale, softcap)
    p = jnp.exp(s - lse)  # (B, K, G, T, S) float32
    dv = jax.lax.dot_general(do, p.astype(vh.dtype), _BY_QUERIES)  # (B, K, D, S)
    dp = jnp.einsum("bkgtd,bksd->bkgts", do, vh, preferred_element_type=jnp.float32)
    # softmax backward: ds = p * (dp - rowsum(dp * p)), and rowsum(dp * p) = rowsum(d_out * out)
    delta = jnp.sum(do.astype(jnp.float32) * oh.astype(jnp.float32), axis=-1, keepdims=True)
    ds = p * (dp - delta) * scale
    if t is not None:  # through cap * tanh(s / cap): d/ds = 1 - tanh^2
        ds = ds * (1.0 - t * t)
    ds = ds.astype(qh.dtype)
    dq = jnp.einsum("bkgts,bksd->bkgtd", ds, kh)
    dk = jax.lax.dot_general(qh, ds, _BY_QUERIES)  # (B, K, D, S)
    return dq.transpose(0, 3, 1, 2, 4), dk.transpose(0, 3, 1, 2), dv.transpose(0, 3, 1, 2).astype(vh.dtype), None


attention.defvjp(_attention_fwd, _attention_bwd)
