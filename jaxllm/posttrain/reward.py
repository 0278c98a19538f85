"""Reward model: the decoder with a scalar head, trained on chosen/rejected pairs.

The model is the same Decoder with `model.head: scalar`: a vector `score` (d_model,)
replaces the vocabulary projection and gives one value per position; the reward of a
conversation is the value at its last real token (right padding: index length − 1).
Starting from a language-model run keeps every backbone weight and starts the score at
zero, so every reward starts at 0 and the first loss is log 2.

Bradley–Terry loss per pair, with an optional margin m and reward-centering term
(which pins the otherwise free offset of the rewards near 0):

    loss = −log σ(r_chosen − r_rejected − m) + c · (r_chosen + r_rejected)²

Pairwise accuracy (share with r_chosen > r_rejected) is logged every step and measured
on the held-out pairs before and after training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.config import Config, ConfigError
from jaxllm.model.api import init_params
from jaxllm.model.decoder import Decoder
from jaxllm.parallel.layout import Layout
from jaxllm.posttrain.data import load_records, split_records
from jaxllm.posttrain.pairs import PairTask, mean_metrics, pair_batches, pair_rows, train_and_measure
from jaxllm.posttrain.sft import run_tokenizer
from jaxllm.train.load import load_run
from jaxllm.train.trainer import TrainResult


def bradley_terry_loss(
    r_chosen: jax.Array, r_rejected: jax.Array, margin: float = 0.0, center: float = 0.0
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Per-pair losses (B,) and per-pair metrics."""
    losses = -jax.nn.log_sigmoid(r_chosen - r_rejected - margin) + center * (r_chosen + r_rejected) ** 2
    metrics = {
        "accuracy": (r_chosen > r_rejected).astype(jnp.float32),
        "reward_chosen": r_chosen,
        "reward_rejected": r_rejected,
        "margin": r_chosen - r_rejected,
    }
    return losses, metrics


def last_token_rewards(cfg: Config, params, inputs: jax.Array, last: jax.Array) -> jax.Array:
    """(B,) the scalar head's value at position last[b] of each row (its last real token)."""
    values = Decoder(cfg.model).apply({"params": params}, inputs)  # (B, T): causal, so padding after is unseen
    return jnp.take_along_axis(values, last[:, None], axis=-1)[:, 0]


def make_loss_fn(margin: float, center: float):
    def loss_fn(cfg, params, batch, rng, pipeline):
        if pipeline is not None:
            raise ValueError("reward training does not run through the pipeline schedule yet; use mesh.pipeline=1")
        inputs = jnp.concatenate([batch["chosen_inputs"], batch["rejected_inputs"]])
        last = jnp.concatenate([batch["chosen_last"], batch["rejected_last"]])
        rewards = last_token_rewards(cfg, params, inputs, last)
        B = batch["chosen_inputs"].shape[0]
        losses, metrics = bradley_terry_loss(rewards[:B], rewards[B:], margin, center)
        w = batch["pair_weight"]
        return jnp.sum(losses * w), jnp.sum(w), {k: jnp.sum(v * w) for k, v in metrics.items()}

    return loss_fn


def with_last_index(batches: list) -> list:
    """Add each row's last real position. The pair rows are next-token inputs, ids[:-1], so
    this is the conversation's second-to-last token: the whole conversation but the
    template's closing newline."""
    return [{**b, **{f"{side}_last": np.maximum(b[f"{side}_length"] - 1, 0).astype(np.int32)
                     for side in ("chosen", "rejected")}} for b in batches]  # fmt: skip


def accuracy_metrics(cfg: Config, params, batches: list, layout: Layout | None = None) -> dict[str, float]:
    """Mean loss, pairwise accuracy and reward margin over held-out pair batches."""
    pt = cfg.posttrain
    return mean_metrics(make_loss_fn(pt.reward_margin, pt.reward_center), cfg, params, batches, layout)


def backbone_params(cfg: Config, log: Callable[[str], None], layout: Layout | None = None):
    """The start run's weights with the LM head swapped for a zero score vector (read
    straight into the run's `layout` when given)."""
    src_cfg, params, step = load_run(cfg.posttrain.init_from, layout=layout)
    lm_model = dataclasses.replace(cfg.model, head="lm")
    if src_cfg.model != lm_model and src_cfg.model != cfg.model:
        raise ConfigError(f"posttrain.init_from={cfg.posttrain.init_from!r} has a different backbone than model.*")
    fresh = init_params(cfg, jax.random.key(cfg.train.seed))
    params = {k: v for k, v in params.items() if k != "lm_head"}
    score = fresh["score"] if layout is None else layout.put(np.asarray(fresh["score"]), layout.params["score"])
    params["score"] = params.get("score", score)
    log(f"reward: backbone from {cfg.posttrain.init_from} (step {step}); score head starts at zero")
    return params


class RewardTask(PairTask):
    """Preference pairs in, a Bradley–Terry-trained scalar head out."""

    name = "reward"

    def __init__(self, cfg: Config, layout: Layout, log: Callable[[str], None] = print):
        pt = cfg.posttrain
        if cfg.model.head != "scalar":
            raise ConfigError("a reward model needs model.head=scalar (jaxllm reward sets it)")
        if not pt.data:
            raise ConfigError("posttrain.data is empty; give a preference file with chosen/rejected replies")
        tokenizer = run_tokenizer(cfg)
        train_recs, val_recs = split_records(load_records(pt.data), pt.val_fraction, cfg.train.seed)
        T, B = cfg.data.seq_len, cfg.train.batch_size
        self.tokens_per_count = 2.0 * T  # a pair is two rows read: throughput and MFU count tokens
        rows = [[pair_rows(tokenizer, cfg.chat, r, f"{pt.data} record {i}", T) for i, r in enumerate(recs)]
                for recs in (train_recs, val_recs)]  # fmt: skip
        self.train_batches = with_last_index(pair_batches(rows[0], B, T))
        self.val = with_last_index(pair_batches(rows[1], B, T)) if rows[1] else []
        self.start = backbone_params(cfg, log, layout) if pt.init_from else None
        self.loss_fn = make_loss_fn(pt.reward_margin, pt.reward_center)
        log(f"reward: {len(rows[0])} train / {len(rows[1])} val pairs from {pt.data}")


def reward(
    cfg: Config, log: Callable[[str], None] = print, stop_after: int | None = None, reset: bool = False
) -> tuple[TrainResult, dict]:
    """Train a reward model; returns the run and held-out metrics before and after."""
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, head="scalar"))
    label = "reward held-out: pairwise accuracy"
    make_task = lambda layout, log: RewardTask(cfg, layout, log)  # noqa: E731
    return train_and_measure(cfg, make_task, accuracy_metrics, label, log, stop_after, reset)
