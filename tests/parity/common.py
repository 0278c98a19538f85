"""Shared pieces of the PyTorch parity suite: tiny configs, weight copying, comparison."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import torch

from jaxllm import param_shapes
from jaxllm.config import ModelConfig, RopeScalingConfig
from jaxllm.convert import to_torch
from tests.parity import reference as ref  # noqa: I001

# Tiny, deliberately odd sizes: vocab 37, T 7, head_dim 6; GQA with 2 KV heads.
GPT2 = ModelConfig(
    vocab_size=37, max_seq_len=16, d_model=24, num_layers=2, num_heads=4, d_ff=40,
    norm="layernorm", block="pre_ln", position="learned", mlp="gelu", tie_embeddings=True, use_bias=True,
)  # fmt: skip
POSTLN = dataclasses.replace(GPT2, block="post_ln", mlp="relu")
LLAMA = ModelConfig(
    vocab_size=37, max_seq_len=64, d_model=24, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=6, d_ff=40,
    norm="rmsnorm", norm_eps=1e-6, block="pre_ln", position="rope", rope_theta=10000.0, mlp="swiglu",
    tie_embeddings=False, use_bias=False,
)  # fmt: skip
# Llama-3 scaling whose three frequency bands (kept, blended, divided) all occur at head_dim 6.
LLAMA3_SCALING = RopeScalingConfig(
    kind="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_seq_len=64
)


def torch_model(cfg: ModelConfig, family: str, **overrides) -> torch.nn.Module:
    """The textbook PyTorch model of `family` with the shapes of `cfg`."""
    if family == "llama":
        scaling = None
        if cfg.rope_scaling.kind == "llama3":
            s = cfg.rope_scaling
            scaling = dict(
                factor=s.factor, low_freq_factor=s.low_freq_factor, high_freq_factor=s.high_freq_factor,
                original_max_seq_len=s.original_max_seq_len,
            )  # fmt: skip
        kwargs = dict(
            vocab_size=cfg.vocab_size, d_model=cfg.d_model, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
            num_kv_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, d_ff=cfg.d_ff, eps=cfg.norm_eps,
            rope_theta=cfg.rope_theta, rope_scaling=scaling, tie_embeddings=cfg.tie_embeddings,
        )  # fmt: skip
        kwargs.update(overrides)
        return ref.LlamaForCausalLM(**kwargs)
    build = ref.gpt2_model if family == "gpt2" else ref.postln_model
    kwargs = dict(
        vocab_size=cfg.vocab_size, max_seq_len=cfg.max_seq_len, d_model=cfg.d_model, num_layers=cfg.num_layers,
        num_heads=cfg.num_heads, d_ff=cfg.d_ff, bias=cfg.use_bias, eps=cfg.norm_eps,
        tie_embeddings=cfg.tie_embeddings,
    )  # fmt: skip
    kwargs.update(overrides)
    return build(**kwargs)


def random_params(cfg: ModelConfig, seed: int = 0) -> dict:
    """Random weights in the model's parameter tree, every leaf perturbed so that each
    parameter, norms and biases included, visibly changes the output (an identity norm or
    zero bias would hide a bad mapping): norm scales (init 1) are 1 + 0.2 N(0, 1), every
    other leaf 0.2 N(0, 1).

    The tree comes from `param_shapes` and the noise from numpy, so nothing is compiled:
    `init_params` (jit-compiled afresh on each call) and a jax.random draw per leaf shape
    made this the slowest step of the parity suite, for values that were overwritten anyway."""
    rng = np.random.default_rng(seed)

    def perturb(path, leaf: jax.ShapeDtypeStruct) -> jax.Array:
        noise = rng.standard_normal(leaf.shape).astype(np.float32)
        is_norm_scale = path[-1].key == "scale"  # exactly the leaves init sets to ones
        return jnp.asarray(1.0 + 0.2 * noise if is_norm_scale else 0.2 * noise)

    return jax.tree_util.tree_map_with_path(perturb, param_shapes(cfg))


def load_into(model: torch.nn.Module, state: dict[str, np.ndarray]) -> torch.nn.Module:
    """Copy a mapped state dict into the torch model; every key must match."""
    tensors = {k: torch.tensor(np.asarray(v, dtype=np.float32)) for k, v in state.items()}
    model.load_state_dict(tensors, strict=True)
    return model.eval()


def build_pair(cfg: ModelConfig, family: str, seed: int = 0, **torch_overrides):
    """(params, torch model holding the same weights)."""
    params = random_params(cfg, seed)
    return params, load_into(torch_model(cfg, family, **torch_overrides), to_torch(cfg, params, family))


def tokens(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length)).astype(np.int32)


def t(x) -> torch.Tensor:
    return torch.from_numpy(np.asarray(x))


def assert_close(actual, expected, rtol: float, what: str = "") -> None:
    """max|actual - expected| <= rtol * max|expected|: error relative to the tensor's scale,
    so entries near zero don't make the check meaningless or flaky."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected.detach().numpy() if isinstance(expected, torch.Tensor) else expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    scale = max(float(np.max(np.abs(e))), 1e-12)
    err = float(np.max(np.abs(a - e))) / scale
    assert err <= rtol, f"{what}: relative error {err:.3g} > {rtol:g}"
