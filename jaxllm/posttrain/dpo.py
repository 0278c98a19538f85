"""Direct preference optimization (DPO): learn from chosen/rejected pairs without a
reward model or sampling.

For a prompt x with replies y_w (chosen) and y_l (rejected), policy π and frozen
reference π_ref, with log-probabilities summed over the reply tokens only:

    h = β [(log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))]
    loss = −(1 − ε) log σ(h) − ε log σ(−h)          (ε: label smoothing, default 0)

The implicit rewards are r_w = β (log π(y_w|x) − log π_ref(y_w|x)) and likewise r_l;
we report their margin r_w − r_l and the preference accuracy (share with r_w > r_l).
Reference-free DPO drops the π_ref terms. The reference log-probs are computed once,
before training, with the starting weights (which are the reference): no second model
is kept in memory during training. Only the batches the run's train.steps read get them
(BatchCycle.read_by): a run shorter than an epoch does not pay for the rest.

Training runs on the pre-training loop (jaxllm/train/trainer.py) with this loss in
place of next-token cross-entropy; each pair counts once.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config, ConfigError
from jaxllm.model.api import init_params
from jaxllm.model.decoder import Decoder
from jaxllm.model.loss import target_log_probs
from jaxllm.parallel.layout import Layout
from jaxllm.posttrain.data import load_records, split_records
from jaxllm.posttrain.pairs import (
    BatchCycle,
    PairTask,
    batch_function,
    mean_metrics,
    pair_batches,
    pair_rows,
    train_and_measure,
)
from jaxllm.posttrain.sft import run_tokenizer, start_params
from jaxllm.train.trainer import TrainResult


def dpo_loss(
    policy_chosen: jax.Array,
    policy_rejected: jax.Array,
    ref_chosen: jax.Array,
    ref_rejected: jax.Array,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    reference_free: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-pair losses (B,) and per-pair metrics (rewards, margin, accuracy)."""
    if reference_free:
        ref_chosen, ref_rejected = jnp.zeros_like(ref_chosen), jnp.zeros_like(ref_rejected)
    reward_chosen = beta * (policy_chosen - ref_chosen)
    reward_rejected = beta * (policy_rejected - ref_rejected)
    h = reward_chosen - reward_rejected
    losses = -(1 - label_smoothing) * jax.nn.log_sigmoid(h) - label_smoothing * jax.nn.log_sigmoid(-h)
    metrics = {
        "reward_chosen": reward_chosen,
        "reward_rejected": reward_rejected,
        "margin": h,
        "accuracy": (h > 0).astype(jnp.float32),
    }
    return losses, metrics


# ----------------------------------------------------------------------------- training


def policy_logprobs(cfg, params, batch) -> tuple[jax.Array, jax.Array]:
    """(log π(chosen), log π(rejected)), (B,) each: one forward over both halves."""
    inputs = jnp.concatenate([batch["chosen_inputs"], batch["rejected_inputs"]])
    targets = jnp.concatenate([batch["chosen_targets"], batch["rejected_targets"]])
    mask = jnp.concatenate([batch["chosen_mask"], batch["rejected_mask"]])
    x, w = Decoder(cfg.model).apply({"params": params}, inputs, hidden=True)  # right padding: causal, never seen
    logp = jnp.sum(target_log_probs(cfg.model, x, w, targets) * mask, axis=-1)  # the head in chunks of positions
    B = batch["chosen_inputs"].shape[0]
    return logp[:B], logp[B:]


def make_loss_fn(beta: float, label_smoothing: float, reference_free: bool):
    """The train step's loss: (sum of pair losses, number of pairs, metric sums)."""

    def loss_fn(cfg, params, batch, rng, pipeline):
        if pipeline is not None:
            raise ValueError("DPO does not run through the pipeline schedule yet; use mesh.pipeline=1")
        chosen, rejected = policy_logprobs(cfg, params, batch)
        losses, metrics = dpo_loss(chosen, rejected, batch["ref_chosen"], batch["ref_rejected"], beta,
                                   label_smoothing, reference_free)  # fmt: skip
        w = batch["pair_weight"]
        return jnp.sum(losses * w), jnp.sum(w), {k: jnp.sum(v * w) for k, v in metrics.items()}

    return loss_fn


def with_reference(cfg, params, batches: list, layout: Layout | None = None, only: set[int] | None = None) -> list:
    """Each batch plus the reference log-probs of its replies (the starting weights'),
    computed in the run's `layout` when given (every process gets every row's). With
    `only`, the batches outside it are None: not read by the run, not computed."""
    logprobs = batch_function(lambda p, b: policy_logprobs(cfg, p, b), layout)
    out = []
    for i, b in enumerate(batches):
        if only is not None and i not in only:
            out.append(None)
            continue
        chosen, rejected = logprobs(params, b)
        out.append({**b, "ref_chosen": np.asarray(chosen), "ref_rejected": np.asarray(rejected)})
    return out


def preference_metrics(cfg, params, batches: list, layout: Layout | None = None) -> dict[str, float]:
    """Mean DPO loss, preference accuracy and reward margin over `batches` (held-out pairs)."""
    pt = cfg.posttrain
    return mean_metrics(make_loss_fn(pt.beta, pt.label_smoothing, pt.reference_free), cfg, params, batches, layout)


class DPOTask(PairTask):
    """Preference pairs in, the DPO loss out; the reference is the starting run."""

    name = "dpo"

    def __init__(self, cfg: Config, layout: Layout, log: Callable[[str], None] = print):
        pt = cfg.posttrain
        if not pt.data:
            raise ConfigError("posttrain.data is empty; give a preference file with chosen/rejected replies")
        if not pt.init_from and not pt.reference_free:
            raise ConfigError(
                "DPO needs a reference policy: set posttrain.init_from=RUN_DIR (e.g. an SFT run), "
                "or posttrain.reference_free=true"
            )
        tokenizer = run_tokenizer(cfg)
        records = load_records(pt.data)
        train_recs, val_recs = split_records(records, pt.val_fraction, cfg.train.seed)
        T, B = cfg.data.seq_len, cfg.train.batch_size
        self.tokens_per_count = 2.0 * T  # a pair is two rows read: throughput and MFU count tokens
        rows = [[pair_rows(tokenizer, cfg.chat, r, f"{pt.data} record {i}", T) for i, r in enumerate(recs)]
                for recs in (train_recs, val_recs)]  # fmt: skip
        self.start = None
        if pt.init_from:
            self.start, step = start_params(cfg, layout)
            log(f"dpo: reference and start: {pt.init_from} (step {step})")
            ref_params = self.start
        else:
            ref_params = init_params(cfg, jax.random.key(cfg.train.seed))  # unused by the reference-free loss
            ref_params = layout.put(jax.device_get(ref_params), layout.params)
        batches = pair_batches(rows[0], B, T)
        # The reference of the batches the run's steps read, no more: a short run over a big
        # preference file does not wait for log-probs it never uses (resumes read the same).
        read = BatchCycle.read_by(cfg.train.steps, len(batches), cfg.train.seed)
        self.train_batches = with_reference(cfg, ref_params, batches, layout, only=read)
        self.val = with_reference(cfg, ref_params, pair_batches(rows[1], B, T), layout) if rows[1] else []
        self.loss_fn = make_loss_fn(pt.beta, pt.label_smoothing, pt.reference_free)
        log(f"dpo: {len(rows[0])} train / {len(rows[1])} val pairs from {pt.data} ({len(read)} of {len(batches)} "
            f"train batches read by {cfg.train.steps} steps); beta {pt.beta}, label smoothing "
            f"{pt.label_smoothing}{', reference-free' if pt.reference_free else ''}")  # fmt: skip


def dpo(
    cfg: Config, log: Callable[[str], None] = print, stop_after: int | None = None, reset: bool = False
) -> tuple[TrainResult, dict]:
    """Train `cfg` with DPO on posttrain.data; returns the run and held-out preference
    metrics before and after ({"before": {...}, "after": {...}})."""
    label = "dpo held-out: accuracy"
    make_task = lambda layout, log: DPOTask(cfg, layout, log)  # noqa: E731
    return train_and_measure(cfg, make_task, preference_metrics, label, log, stop_after, reset)
