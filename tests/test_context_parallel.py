"""Context parallelism: with the sequence split over 2, 4 or 8 CPU devices (and context 2 x
fsdp 2 x tensor 2), the loss and every gradient equal the single-device model's, for both
strategies (all-gather, ring), balanced and contiguous layouts, on packed rows; a layout that
the attention does not expect is caught; the splash kernel's sharded mask equals XLA."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.config import MeshConfig, ModelConfig
from jaxllm.model import decoder as decoder_mod
from jaxllm.model.api import cross_entropy
from jaxllm.model.context import from_layout, layout_order, to_layout
from jaxllm.model.decoder import Decoder
from jaxllm.parallel.mesh import make_mesh
from jaxllm.parallel.rules import flax_rules, parse_rules
from tests.sharded import max_rel_error, on_mesh

CFG = ModelConfig(vocab_size=64, max_seq_len=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, d_ff=64,
                  norm="rmsnorm", position="rope", mlp="swiglu", use_bias=False, attention_impl="xla")  # fmt: skip
B, T = 4, 64
RNG = np.random.default_rng(0)
TOKENS = jnp.asarray(RNG.integers(0, 64, (B, T)), jnp.int32)
TARGETS = jnp.asarray(RNG.integers(0, 64, (B, T)), jnp.int32)


def _packed() -> tuple[jax.Array, jax.Array]:
    """Documents of uneven lengths crossing every shard boundary, positions restarting per
    document, and padding (segment 0) at the end of each row."""
    seg, pos = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
    for b in range(B):
        cuts = [0, *sorted(RNG.choice(np.arange(3, T - 8), 3, replace=False)), T - 1 - b]
        for d, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False)):
            seg[b, lo:hi], pos[b, lo:hi] = d + 1, np.arange(hi - lo)
    return jnp.asarray(seg), jnp.asarray(pos)


SEGMENTS, POSITIONS = _packed()


def loss_and_grads(params, cfg: ModelConfig = CFG, mesh_cfg: MeshConfig | None = None, pipe=None):
    def mean_loss(p):
        logits = Decoder(cfg, pipeline=pipe).apply({"params": p}, TOKENS, POSITIONS, SEGMENTS, True)
        s, c = cross_entropy(logits, TARGETS, SEGMENTS > 0)
        return s / c

    if mesh_cfg is None:
        return jax.jit(jax.value_and_grad(mean_loss))(params)
    return on_mesh(jax.value_and_grad(mean_loss), params, cfg, mesh_cfg)[0]


@pytest.fixture(scope="module")
def reference():
    """Weights well away from init, so every layer visibly shapes the output."""
    from tests.parity.common import random_params

    params = random_params(CFG)
    return params, loss_and_grads(params)


MESHES = {
    "context2-data4": MeshConfig(data=4, context=2),
    "context4-data2": MeshConfig(data=2, context=4),
    "context8": MeshConfig(data=1, context=8),
    "context2-fsdp2-tensor2": MeshConfig(data=1, fsdp=2, context=2, tensor=2),
}
CASES = [(mesh, strategy, True) for mesh in MESHES for strategy in ("allgather", "ring")]
CASES += [("context4-data2", "ring", False)]  # the contiguous layout


IDS = [f"{m}-{s}{'' if b else '-contiguous'}" for m, s, b in CASES]


@pytest.mark.parametrize("mesh, kind, balanced", CASES, ids=IDS)
def test_context_parallel_loss_and_every_gradient_equal_one_device(mesh, kind, balanced, reference):
    params, (ref_loss, ref_grads) = reference
    cfg = dataclasses.replace(CFG, context_attention=kind, context_load_balance=balanced)
    loss, grads = loss_and_grads(params, cfg, MESHES[mesh])
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert max_rel_error(grads, ref_grads) <= 1e-5


def test_context_parallel_composes_with_the_pipeline(reference):
    """context 2 x pipeline 2 x data 2, GPipe with 2 microbatches: the schedule's stages
    run the context-parallel attention inside; loss and gradients still equal one device."""
    params, (ref_loss, ref_grads) = reference
    loss, grads = loss_and_grads(params, CFG, MeshConfig(data=2, context=2, pipeline=2), pipe=(2, 1, 2))
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * abs(float(ref_loss))
    assert max_rel_error(grads, ref_grads) <= 1e-5


def test_a_layout_the_attention_does_not_expect_is_caught(reference, monkeypatch):
    """Tokens left in natural order while attention masks by the balanced layout's positions:
    the loss moves far outside the tolerance above (so that tolerance can fail)."""
    params, (ref_loss, _) = reference
    monkeypatch.setattr(decoder_mod, "to_layout", lambda x, shards: x)
    monkeypatch.setattr(decoder_mod, "from_layout", lambda x, shards: x)
    loss, _ = loss_and_grads(params, CFG, MESHES["context4-data2"])
    assert abs(float(loss) - float(ref_loss)) > 1e-3 * abs(float(ref_loss))


def test_balanced_layout_gives_each_device_an_early_and_a_late_chunk():
    order = layout_order(16, 4, balanced=True).reshape(4, 4)  # 4 devices, 4 slots each
    assert order.tolist() == [[0, 1, 14, 15], [2, 3, 12, 13], [4, 5, 10, 11], [6, 7, 8, 9]]
    work = [sum(p + 1 for p in row) for row in order]  # keys each device's queries see, causally
    assert len(set(work)) == 1
    x = jnp.arange(2 * 16 * 3).reshape(2, 16, 3)
    assert (to_layout(x, 4)[:, :, 0] // 3 % 16 == jnp.asarray(layout_order(16, 4, True))).all()
    assert (from_layout(to_layout(x, 4), 4) == x).all()


def _attend_in_layout(q, k, v, seg, shards: int, strategy: str, kernel: bool):
    """context_attention on natural-order inputs: into the balanced layout and back."""
    from jaxllm.model.context import context_attention

    lay = lambda a: to_layout(a, shards)  # noqa: E731
    with nn.logical_axis_rules(flax_rules(parse_rules(()))):
        out = context_attention(lay(q), lay(k), lay(v), lay(seg), strategy, True, kernel=kernel, block=128)
    return from_layout(out, shards)


def test_splash_kernel_with_a_sharded_balanced_mask_equals_xla_attention():
    """allgather through the splash kernel (Pallas interpret mode on CPU): each device's
    query rows carry their natural positions in the kernel's mask (q_sequence)."""
    from jaxllm.model.attention import attention_mask, xla_attention
    from tests.test_splash import outputs_and_grads, packed_segments, qkv, relative

    mesh = MeshConfig(data=2, context=2, tensor=2)  # heads split too
    Bk, Tk, H, K, D = 2, 512, 4, 2, 64
    q, k, v, cotangent = qkv(Bk, Tk, H, K, D)
    seg = jnp.asarray(packed_segments(Bk, Tk, 1))
    kernel = lambda q, k, v: _attend_in_layout(q, k, v, seg, mesh.context, "allgather", True)  # noqa: E731
    with jax.set_mesh(make_mesh(mesh)):
        out, grads = jax.jit(lambda *a: outputs_and_grads(kernel, *a))(q, k, v, cotangent)
    reference = lambda q, k, v: xla_attention(q, k, v, attention_mask(seg, Tk))  # noqa: E731
    ref_out, ref_grads = jax.jit(lambda *a: outputs_and_grads(reference, *a))(q, k, v, cotangent)
    assert relative(out, ref_out) < 1e-5
    for name, g, ref in zip("qkv", grads, ref_grads, strict=True):
        assert relative(g, ref) < 1e-4, f"d{name}"


def test_ring_passes_blocks_and_allgather_gathers_them():
    """The compiled programs move K/V as each strategy says: collective-permutes (C - 1 hops
    forward, more backward) and no all-gather for the ring; all-gathers for allgather.
    Inputs and output stay split along the length, so no other collective is needed."""
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxllm.hlo import collectives
    from jaxllm.model.context import context_attention

    mesh = make_mesh(MeshConfig(data=2, context=4))
    split = NamedSharding(mesh, PartitionSpec("data", "context"))
    q, kv, seg = jnp.zeros((2, 64, 4, 8)), jnp.zeros((2, 64, 2, 8)), jnp.ones((2, 64), jnp.int32)
    counts = {}
    with jax.set_mesh(mesh), nn.logical_axis_rules(flax_rules(parse_rules(()))):
        for strategy in ("ring", "allgather"):

            def loss(q, k, v, s, strategy=strategy):
                return jnp.sum(context_attention(q, k, v, s, strategy, True) ** 2)

            f = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), in_shardings=split, out_shardings=split)
            counts[strategy] = collectives(f.lower(q, kv, kv, seg).compile().as_text())
    assert counts["ring"].get("collective-permute", 0) >= 3 and "all-gather" not in counts["ring"], counts
    assert counts["allgather"].get("all-gather", 0) >= 2 and "collective-permute" not in counts["allgather"], counts


def test_context_settings_that_cannot_run_are_refused_at_load():
    from jaxllm.config import ConfigError

    base = ["mesh.data=1", "mesh.context=4"]
    with pytest.raises(ConfigError, match=r"data.seq_len=100 does not split into mesh.context=4 .* data.seq_len=104"):
        jaxllm.load_config("shakespeare-char", [*base, "data.seq_len=100"])
    jaxllm.load_config("shakespeare-char", [*base, "data.seq_len=100", "model.context_load_balance=false"])
    splash = ["model.max_seq_len=2048", "model.attention_impl=splash"]
    with pytest.raises(ConfigError, match="context_attention=ring computes each block with xla"):
        jaxllm.load_config("shakespeare-char", [*base, *splash, "data.seq_len=2048", "model.context_attention=ring"])
    with pytest.raises(ConfigError, match=r"data.seq_len / mesh.context = 768 / 4 cannot be tiled"):
        jaxllm.load_config("shakespeare-char", [*base, *splash, "data.seq_len=768"])


def test_generation_with_the_cache_split_over_context_equals_one_device():
    """Decoding does not reorder anything: the KV cache's length goes to `context` by the
    same rule and GSPMD moves the data; greedy tokens equal the one-device run's."""
    overrides = ["model.num_layers=2", "model.d_model=64", "model.num_heads=4", "model.num_kv_heads=2",
                 "model.d_ff=128", "model.vocab_size=256", "model.max_seq_len=64", "data.seq_len=64"]  # fmt: skip
    cfg = jaxllm.load_config("llama-125m", overrides)
    params = jaxllm.init_params(cfg, jax.random.key(0))
    prompts = [[1, 2, 3, 4, 5], [7, 8, 9], [3] * 7, [5]]
    one = jaxllm.generate(cfg, params, prompts, 12, temperature=0.0)
    split = jaxllm.load_config("llama-125m", [*overrides, "mesh.data=2", "mesh.context=4"])
    many = jaxllm.generate(split, params, prompts, 12, temperature=0.0, mesh=make_mesh(split.mesh))
    assert many.tokens == one.tokens
