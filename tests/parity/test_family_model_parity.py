"""End to end for the families (Mistral, Qwen2/3, Gemma 2/3, Mixtral, Qwen3-MoE): logits, loss
and every gradient match the PyTorch references, with the weights copied through each
family's torch layout table; and each option the cases switch on visibly changes the
reference's logits, so a match is not a match by default."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import jaxllm
from jaxllm.convert import from_torch, to_torch
from tests.parity import reference_families as rf
from tests.parity.common import assert_close, load_into, t, tokens
from tests.parity.families import CASES, build_family_pair, spec_of


def _mean_loss(cfg, params, x, y):
    loss_sum, count = jaxllm.loss(cfg, params, x, y)
    return loss_sum / count


def _forward(cfg, params, x, **kwargs):
    """jaxllm.forward as one compiled program (a third of the time of running it op by op)."""
    return jax.jit(lambda p, x, kw: jaxllm.forward(cfg, p, x, **kw))(params, jnp.asarray(x), kwargs)


# case -> reference options turned off (or changed) one at a time; each must change the logits
TEETH = {
    "mistral-window": [dict(sliding_window=0)],
    "gemma2": [
        dict(sliding_window=0), dict(attn_softcap=0.0), dict(final_softcap=0.0), dict(query_pre_attn_scalar=0.0),
        dict(scale_embeddings=False), dict(unit_offset=False), dict(activation="silu"),
        dict(layer_types=("full_attention", "sliding_attention")),
    ],
    "gemma3": [dict(rope_local_theta=0.0), dict(rope_scaling=None), dict(sliding_window=0)],
    "qwen3-moe-no-renorm": [dict(norm_topk=True), dict(experts_per_token=1)],
}  # fmt: skip


def _swap(a: str, b: str):
    """A state-dict breaker: tensors a and b (same shape) exchanged."""

    def breaker(state: dict) -> dict:
        return {**state, a: state[b], b: state[a]}

    return breaker


LAYER0 = "model.layers.0"
# case -> mapping mistakes (two same-shaped tensors exchanged) that must be caught as well
BROKEN = {
    "qwen3-qk-norm-wide-heads": [_swap(f"{LAYER0}.self_attn.q_norm.weight", f"{LAYER0}.self_attn.k_norm.weight")],
    "gemma2": [
        _swap(f"{LAYER0}.post_attention_layernorm.weight", f"{LAYER0}.pre_feedforward_layernorm.weight"),
        _swap(f"{LAYER0}.input_layernorm.weight", f"{LAYER0}.post_feedforward_layernorm.weight"),
    ],
    "mixtral": [
        _swap(f"{LAYER0}.block_sparse_moe.experts.0.w1.weight", f"{LAYER0}.block_sparse_moe.experts.1.w1.weight"),
        _swap(f"{LAYER0}.block_sparse_moe.experts.2.w1.weight", f"{LAYER0}.block_sparse_moe.experts.2.w3.weight"),
    ],
}


def assert_options_matter(case, cfg, family, state, x, logits) -> None:
    """With any one of the case's options changed, or two of its tensors exchanged, the reference
    no longer gives jaxllm's logits: the sizes make every option and tensor count, so the match
    above is not one by default."""
    spec = spec_of(cfg, family)
    variants = [(rf.FamilyForCausalLM(dataclasses.replace(spec, **change)), state) for change in TEETH.get(case, [])]
    variants += [(rf.FamilyForCausalLM(spec), broken(state)) for broken in BROKEN.get(case, [])]
    with torch.no_grad():
        for model, variant_state in variants:
            changed = load_into(model, variant_state)(t(x).long())[0]
            with pytest.raises(AssertionError, match="relative error"):
                assert_close(logits, changed, 1e-3, "a changed reference")


@pytest.mark.parametrize("case", CASES)
def test_logits_loss_and_every_gradient(case):
    cfg, family, params, model = build_family_pair(case)
    x, y = tokens(3, 13, cfg.vocab_size, seed=1), tokens(3, 13, cfg.vocab_size, seed=2)
    logits = _forward(cfg, params, x)
    loss, grads = jax.jit(jax.value_and_grad(_mean_loss, argnums=1), static_argnums=0)(
        cfg, params, jnp.asarray(x), jnp.asarray(y)
    )
    model.zero_grad()
    ref_logits, ref_loss = model(t(x).long(), t(y).long())
    ref_loss.backward()
    assert logits.dtype == jnp.float32
    assert_close(logits, ref_logits, 1e-5, "logits")
    assert_close(loss, ref_loss, 1e-5, "loss")
    mapped = to_torch(cfg, grads, family)  # the mapping is linear, so it maps gradients too
    named = dict(model.named_parameters(remove_duplicate=False))
    assert set(mapped) == set(named), "every torch parameter has exactly one jaxllm gradient"
    for name, p in named.items():
        assert_close(mapped[name], p.grad, 1e-4, f"grad {name}")
    assert_options_matter(case, cfg, family, to_torch(cfg, params, family), x, logits)


@pytest.mark.parametrize("case", ["mistral-window", "gemma3"])
def test_packed_documents_with_windows(case):
    """Two documents and padding in a row: the window counts within a document (positions
    restart there), and the reference given the block-diagonal mask agrees."""
    cfg, _, params, model = build_family_pair(case)
    x = tokens(2, 13, cfg.vocab_size, seed=5)
    seg = np.array([[1] * 7 + [2] * 4 + [0] * 2, [1] * 13], np.int32)
    pos = np.array([list(range(7)) + list(range(4)) + [0, 1], list(range(13))], np.int32)
    allow = seg[:, :, None] == seg[:, None, :]
    logits = _forward(cfg, params, x, segment_ids=jnp.asarray(seg), positions=jnp.asarray(pos))
    with torch.no_grad():
        ref_logits, _ = model(t(x).long(), attn_mask=t(allow), positions=t(pos).long())
    assert_close(logits, ref_logits, 1e-5, "packed logits")


@pytest.mark.parametrize("case", CASES)
def test_mapping_round_trips(case):
    cfg, family, params, _ = build_family_pair(case)
    back = from_torch(cfg, to_torch(cfg, params, family), family)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, np.asarray(b))
