"""The output head and the losses in chunks of positions (jaxllm/model/loss.py) equal the
plain path, value and every gradient, and the compiled step stops holding the logits."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import pytest

import jaxllm
from jaxllm.model.decoder import Decoder
from jaxllm.model.loss import chunked_over_positions, next_token_loss, target_log_probs
from jaxllm.posttrain import ppo as ppo_math
from jaxllm.posttrain.ppo_models import token_logprobs
from tests.fixtures import TINY_MODEL

T = 41  # 40 targets: chunks of 16 leave a padded last chunk, chunks of 8 divide evenly


def tiny(tied: bool, chunk: int = 0):
    cfg = jaxllm.load_config("shakespeare-char", [*TINY_MODEL, "model.max_seq_len=64", f"model.tie_embeddings={tied}"])
    return dataclasses.replace(cfg.model, loss_chunk=chunk)


def relative(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


@pytest.fixture(scope="module")
def batch():
    tokens = jax.random.randint(jax.random.key(1), (3, T), 0, 256)
    mask = jax.random.uniform(jax.random.key(2), (3, T - 1)) > 0.2
    return tokens[:, :-1], tokens[:, 1:], mask


@pytest.mark.parametrize("tied, chunk", [(True, 16), (False, 8)], ids=["tied-padded", "untied-even"])
def test_chunked_loss_and_every_gradient_equal_the_plain_loss(tied, chunk, batch):
    inputs, targets, mask = batch
    params = jaxllm.init_params(tiny(tied), jax.random.key(0))

    def value_and_grads(model):
        summed = lambda p: jaxllm.loss(model, p, inputs, targets, target_mask=mask)[0]  # noqa: E731
        return jax.jit(jax.value_and_grad(summed))(params)

    (plain, plain_grads), (chunked, chunked_grads) = value_and_grads(tiny(tied)), value_and_grads(tiny(tied, chunk))
    # the plain path is the full logits' cross-entropy, as before chunks existed
    logits = jax.jit(lambda p: jaxllm.forward(tiny(tied), p, inputs))(params)
    assert relative(plain, jaxllm.cross_entropy(logits, targets, mask)[0]) < 1e-6
    assert relative(chunked, plain) < 1e-6
    for path, g in jax.tree_util.tree_leaves_with_path(chunked_grads):
        expected = plain_grads
        for key in path:
            expected = expected[key.key]
        assert relative(g, expected) < 1e-6, jax.tree_util.keystr(path)


def test_target_log_probs_are_the_log_softmax_of_the_targets(batch):
    inputs, targets, _ = batch
    model = tiny(False, chunk=16)
    params = jaxllm.init_params(model, jax.random.key(0))
    x, w = Decoder(model).apply({"params": params}, inputs, hidden=True)
    logp = jax.nn.log_softmax(jaxllm.forward(model, params, inputs), axis=-1)
    expected = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    assert relative(target_log_probs(model, x, w, targets), expected) < 1e-6


def test_ppo_log_probs_and_entropy_in_chunks_equal_the_sampler_s(batch):
    """Temperature and a padded vocabulary's masked rows, as the rollout sampler drew them."""
    inputs, _, _ = batch
    model = tiny(True, chunk=8)
    params = jaxllm.init_params(model, jax.random.key(0))
    seq = jnp.concatenate([inputs, inputs[:, :1]], axis=1)
    logits = jaxllm.forward(model, params, seq[:, :-1])
    logp, entropy = ppo_math.token_logprobs(logits, seq[:, 1:], 0.7, 200)
    chunked_logp, chunked_entropy = token_logprobs(model, params, seq, 0.7, 200)
    assert relative(chunked_logp, logp) < 1e-6 and relative(chunked_entropy, entropy) < 1e-6


def test_z_loss_adds_its_weight_times_log_z_squared(batch):
    inputs, targets, mask = batch
    model = tiny(True, chunk=16)
    params = jaxllm.init_params(model, jax.random.key(0))
    x, w = Decoder(model).apply({"params": params}, inputs, hidden=True)
    ce, count, _ = next_token_loss(model, x, w, targets, mask)
    total, _, z_sum = next_token_loss(model, x, w, targets, mask, z_loss=1e-2)
    log_z = jax.nn.logsumexp(jaxllm.forward(model, params, inputs), axis=-1)
    assert relative(z_sum, jnp.sum(jnp.square(log_z) * mask)) < 1e-6
    assert relative(total, ce + 1e-2 * z_sum) < 1e-6 and float(count) == float(mask.sum())


def test_any_per_token_pytree_comes_back_per_position():
    x = jax.random.normal(jax.random.key(0), (2, 10, 4))
    w = jax.random.normal(jax.random.key(1), (4, 6))
    targets = jnp.arange(20).reshape(2, 10) % 6

    def per_token(logits, t):
        return {"max": logits.max(-1), "target": jnp.take_along_axis(logits, t[..., None], -1)[..., 0]}

    plain = per_token(x @ w, targets)
    for chunk in (3, 4, 10):
        out = jax.jit(chunked_over_positions, static_argnums=(3, 4))(x, w, targets, per_token, chunk)
        assert all(relative(out[k], plain[k]) < 1e-6 for k in plain), chunk


def test_the_compiled_step_no_longer_holds_the_full_logits():
    """memory_analysis of the real train step: chunks of 128 positions save more than one
    whole (B, T, V) float32 logits array (the logits and their gradient were both held)."""
    from jaxllm.plan import compile_train_step

    sizes = ["model.vocab_size=8192", "model.max_seq_len=512", "data.seq_len=512", "model.d_model=64",
             "model.num_layers=1", "model.num_heads=2", "model.d_ff=128", "train.batch_size=4"]  # fmt: skip
    temps = {}
    for chunk in (0, 128):
        cfg = jaxllm.load_config("shakespeare-char", [*sizes, f"model.loss_chunk={chunk}"])
        temps[chunk] = compile_train_step(cfg, jax.devices()[:1])[1].memory_analysis().temp_size_in_bytes
    logits_bytes = 4 * 512 * 8192 * 4
    assert temps[128] < temps[0] - logits_bytes, temps


def test_the_defaults_leave_a_short_context_cpu_step_unchanged():
    """attention_impl=auto and loss_chunk=1024 (the defaults) lower the CPU train step at
    1024 tokens to exactly the program of attention_impl=xla and loss_chunk=0: auto is
    XLA attention off TPU, and a sequence within one chunk takes the plain head. So the
    CPU benchmarks (`python -m benchmarks train_step`, sequences up to 1024) run the same
    program as before the defaults changed."""
    from jaxllm.parallel.layout import Layout
    from jaxllm.parallel.mesh import make_mesh
    from jaxllm.plan import abstract_batch
    from jaxllm.train.optimizer import make_optimizer
    from jaxllm.train.state import abstract_state
    from jaxllm.train.step import make_train_step

    sizes = ["model.vocab_size=512", "model.max_seq_len=1024", "data.seq_len=1024", "model.d_model=64",
             "model.num_layers=2", "model.num_heads=2", "model.d_ff=128", "train.batch_size=2"]  # fmt: skip
    texts = []
    for extra in ([], ["model.attention_impl=xla", "model.loss_chunk=0"]):
        cfg = jaxllm.load_config("shakespeare-char", [*sizes, *extra])
        mesh = make_mesh(cfg.mesh, jax.devices()[:1])
        tx = make_optimizer(cfg.optimizer)
        layout = Layout.build(cfg, mesh, tx)
        step = make_train_step(cfg, layout, tx)
        with jax.set_mesh(mesh):
            texts.append(step.jitted.lower(abstract_state(cfg, tx, layout.state), abstract_batch(cfg, mesh)).as_text())
    assert texts[0] == texts[1]
    cfg = jaxllm.load_config("shakespeare-char", [*sizes])
    assert cfg.model.attention_impl == "auto" and cfg.model.loss_chunk == 1024  # the defaults this is about
