"""The functional API: (config, params, tokens) in, arrays out. No hidden state.

Parameters are plain nested dicts of arrays (logical-axis metadata is stripped after
init; `param_logical_axes` gives it back as a separate tree of PartitionSpecs).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxllm.config import Config, ModelConfig, validate_model
from jaxllm.model.decoder import Decoder
from jaxllm.model.loss import next_token_loss
from jaxllm.model.moe import router_losses

Params = dict


def model_config(config: Config | ModelConfig) -> ModelConfig:
    """Accept the whole run config or just its model section (validated either way)."""
    m = config.model if isinstance(config, Config) else config
    validate_model(m)
    return m


def boxed_init_fn(config: ModelConfig):
    """rng -> parameters still boxed with their logical names (what sharding code reads)."""
    model = Decoder(config)
    tokens = jnp.zeros((1, min(8, config.max_seq_len)), jnp.int32)  # shapes only depend on config
    return lambda rng: model.init({"params": rng}, tokens)["params"]


def init_params(config: Config | ModelConfig, rng: jax.Array) -> Params:
    """Fresh parameters (float32 by default), as one compiled program."""
    boxed = jax.jit(boxed_init_fn(model_config(config)))(rng)
    return nn.meta.unbox(boxed)


def param_shapes(config: Config | ModelConfig) -> Params:
    """ShapeDtypeStructs of every parameter, without allocating anything."""
    boxed = jax.eval_shape(boxed_init_fn(model_config(config)), jax.random.key(0))
    return nn.meta.unbox(boxed)


def param_logical_axes(config: Config | ModelConfig) -> Params:
    """PartitionSpec of logical axis names for every parameter (same tree as params)."""
    boxed = jax.eval_shape(boxed_init_fn(model_config(config)), jax.random.key(0))
    return nn.get_partition_spec(boxed)


def _apply(m: ModelConfig, params: Params, tokens, positions, segment_ids, deterministic, rng, hidden: bool, verb: str,
           mutable: list[str] | bool = False):
    """The decoder on tokens, with dropout's rng checked once for `forward` and `loss`."""
    if not deterministic and rng is None:
        raise ValueError(f"{verb}(deterministic=False) applies dropout and needs rng=jax.random.key(...)")
    rngs = {"dropout": rng} if rng is not None else {}
    return Decoder(m).apply(
        {"params": params}, tokens, positions, segment_ids, deterministic, hidden=hidden, rngs=rngs, mutable=mutable
    )


def forward(
    config: Config | ModelConfig,
    params: Params,
    tokens: jax.Array,
    *,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    deterministic: bool = True,
    rng: jax.Array | None = None,
) -> jax.Array:
    """Logits (B, T, V) in float32 for tokens (B, T). Dropout needs deterministic=False and rng."""
    return _apply(model_config(config), params, tokens, positions, segment_ids, deterministic, rng, False, "forward")


def cross_entropy(logits: jax.Array, targets: jax.Array, mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """(sum of token losses, number of counted tokens), both float32.

    Returning the sum and the count, not the mean, is what makes averaging exact over
    any set of microbatches or hosts: add the sums, add the counts, divide once.
    """
    logits = logits.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)  # (B, T)
    target_logit = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    nll = log_z - target_logit
    weight = jnp.ones_like(nll) if mask is None else mask.astype(jnp.float32)
    return jnp.sum(nll * weight), jnp.sum(weight)


def loss(
    config: Config | ModelConfig,
    params: Params,
    tokens: jax.Array,
    targets: jax.Array,
    *,
    target_mask: jax.Array | None = None,
    positions: jax.Array | None = None,
    segment_ids: jax.Array | None = None,
    deterministic: bool = True,
    rng: jax.Array | None = None,
    aux: bool = False,
) -> tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
    """Next-token cross-entropy: (summed loss, token count); the mean is sum / count.

    target_mask (B, T) selects which targets count (e.g. not padding, not the prompt).
    aux: also return a mixture-of-experts model's router losses, {"load_balance", "z_loss"},
    each the mean over layers (jaxllm/model/moe.py; zeros for a dense model), for an
    objective that adds them, as training does: sum / count + router_aux_loss_coef *
    load_balance + router_z_loss_coef * z_loss. Without it the return is the same for every model.
    """
    m = model_config(config)
    out = _apply(m, params, tokens, positions, segment_ids, deterministic, rng, True, "loss", ["moe"] if aux else False)
    (x, w), sown = out if aux else (out, {})
    loss_sum, count = next_token_loss(m, x, w, targets, target_mask)[:2]  # the head in chunks of m.loss_chunk positions
    return (loss_sum, count, router_losses(sown.get("moe", {}))) if aux else (loss_sum, count)


__all__ = [
    "cross_entropy",
    "forward",
    "init_params",
    "loss",
    "model_config",
    "param_logical_axes",
    "param_shapes",
]
