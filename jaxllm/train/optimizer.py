"""AdamW with linear warmup + cosine decay, global-norm clipping, and a weight-decay mask.

Weight decay applies to matmul kernels only: embeddings, norm scales/biases and biases
are not decayed (DESIGN.md §7). Decaying a norm's scale pulls it towards 0, which
fights the normalization; embeddings rows of rare tokens would decay to nothing.
"""

from __future__ import annotations

import jax
import optax

from jaxllm.config import ModelConfig, OptimizerConfig
from jaxllm.model import lora


def lr_schedule(opt: OptimizerConfig) -> optax.Schedule:
    """0 -> lr linearly over warmup_steps, then cosine to lr * min_lr_ratio at decay_steps, flat after."""
    decay_steps = max(opt.decay_steps or 0, opt.warmup_steps + 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.lr,
        warmup_steps=opt.warmup_steps,
        decay_steps=decay_steps,
        end_value=opt.lr * opt.min_lr_ratio,
    )


def _is_kernel(path) -> bool:
    """True for a matmul weight: a `kernel` leaf or a LoRA adapter (the last dict key of its
    path, boxed or not)."""
    keys = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
    return bool(keys) and keys[-1] in ("kernel", "lora_a", "lora_b")


def decay_mask(params):
    """Same tree as params: True where weight decay applies (kernels only)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)


def make_optimizer(opt: OptimizerConfig, model: ModelConfig | None = None) -> optax.GradientTransformation:
    """The optimizer the trainer uses; its state mirrors params (mu, nu) plus step counters,
    of the adapters alone when `model` has them (model.lora: lora.adapter_optimizer)."""
    parts = []
    if opt.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(opt.grad_clip))
    parts.append(
        optax.adamw(
            lr_schedule(opt), b1=opt.beta1, b2=opt.beta2, eps=opt.eps, weight_decay=opt.weight_decay, mask=decay_mask
        )
    )
    tx = optax.chain(*parts)
    return tx if model is None else lora.adapter_optimizer(tx, model)
