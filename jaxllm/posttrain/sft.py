"""Supervised instruction tuning: the pre-training loop with conversation batches.

SFT is not a second trainer: it is `jaxllm.train.trainer.train` with a Task that
supplies (a) batches built from instruction data, whose target weights are 1 on reply
tokens and 0 on prompt tokens, and (b) the starting weights of a pre-trained run. The
train step's loss is sum(token loss x weight) / sum(weight) over the whole global batch,
accumulated microbatches included, so the mean over reply tokens is exact.

The run's config records the chat template with `chat.enabled: true`, so `jaxllm chat`
and the evaluation code prompt the tuned model the way it was trained.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import jax

from jaxllm.config import OVERRIDES_ENV, Config, ConfigError, apply_overrides, from_dict, load_config, to_dict
from jaxllm.errors import DataError
from jaxllm.parallel import distributed
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.mesh import make_mesh
from jaxllm.posttrain.batches import SFTBatches, eval_batches
from jaxllm.posttrain.data import Example, load_records, split_records, to_messages, tokenize_conversation
from jaxllm.train import adapters
from jaxllm.train.load import load_run, load_run_tokenizer
from jaxllm.train.loop import quiet
from jaxllm.train.trainer import Task, TrainResult, train


def run_tokenizer(cfg: Config):
    """The tokenizer of the run being tuned (its start run's, when there is one)."""
    if cfg.posttrain.init_from:
        return load_run_tokenizer(load_config(Path(cfg.posttrain.init_from) / "config.yaml"))
    return load_run_tokenizer(cfg)


def start_params(cfg: Config, layout: Layout | None = None):
    """The newest parameters of posttrain.init_from, after checking the architectures match
    (up to model.lora: a LoRA run adds adapters to its start, jaxllm/train/adapters.py);
    read straight into the run's `layout` when given."""
    src_cfg, params, step = load_run(cfg.posttrain.init_from, layout=layout)
    if src_cfg.model != cfg.model:  # adapters to add (LoRA on a base run) or to merge; else an error
        layout = layout if layout is not None else Layout.build(cfg, make_mesh(cfg.mesh))
        params = adapters.start_params(cfg, layout, src_cfg, params)
    return params, step


class SFTTask(Task):
    """Instruction data in, reply-only loss out."""

    name = "sft"
    global_batches = True  # every process packs the same batches (seeded) and keeps its rows

    def __init__(self, cfg: Config, log: Callable[[str], None] = print):
        pt = cfg.posttrain
        if not pt.data:
            raise ConfigError("posttrain.data is empty; give an instruction file, e.g. posttrain.data=data.json")
        self.tokenizer = run_tokenizer(cfg)
        if self.tokenizer.vocab_size > cfg.model.vocab_size:
            raise DataError(
                f"the tokenizer has {self.tokenizer.vocab_size} ids but model.vocab_size={cfg.model.vocab_size}"
            )
        records = load_records(pt.data)
        train_recs, val_recs = split_records(records, pt.val_fraction, cfg.train.seed)
        self.train_examples = self._tokenize(cfg, train_recs, pt.data)
        self.val_examples = self._tokenize(cfg, val_recs, pt.data)
        self.log = log
        T = cfg.data.seq_len
        cut = sum(len(e.ids) - 1 > T for e in self.train_examples + self.val_examples)
        reply = sum(float(e.weights.sum()) for e in self.train_examples)
        log(f"sft: {len(self.train_examples)} train / {len(self.val_examples)} val conversations from {pt.data}; "
            f"{reply:,.0f} reply tokens to learn; packing {'on' if pt.packing else 'off'}"
            + (f"; {cut} longer than data.seq_len={T} are cut" if cut else ""))  # fmt: skip

    def _tokenize(self, cfg: Config, records: Sequence[dict], where: str) -> list[Example]:
        return [
            tokenize_conversation(self.tokenizer, cfg.chat, to_messages(r, f"{where} record {i}"))
            for i, r in enumerate(records)
        ]

    def train_iter(self, cfg: Config) -> SFTBatches:
        return SFTBatches(self.train_examples, cfg.train.batch_size, cfg.data.seq_len, cfg.posttrain.packing,
                          cfg.train.seed)  # fmt: skip

    def has_val(self, cfg: Config) -> bool:
        return bool(self.val_examples)

    def val_batches(self, cfg: Config):
        return eval_batches(self.val_examples, cfg.train.batch_size, cfg.data.seq_len)

    def initial_params(self, cfg: Config, layout: Layout):
        if not cfg.posttrain.init_from:
            self.log("sft: no posttrain.init_from: starting from random weights")
            return None
        params, step = start_params(cfg, layout)
        self.log(f"sft: starting from {cfg.posttrain.init_from} (step {step})")
        return params


def sft_config(source: str | os.PathLike[str], overrides: Sequence[str] = (), suffix: str = "sft") -> Config:
    """The config of an SFT (or DPO) run. `source` is a preset/YAML, or a run directory: then its
    config is the base, its weights the start (posttrain.init_from), and the schedule
    restarts (optimizer.decay_steps follows the new train.steps)."""
    src = Path(source)
    if src.is_dir():
        if not (src / "config.yaml").is_file():
            raise DataError(f"{src} is not a run directory (no config.yaml); give a run or a config")
        raw = to_dict(load_config(src / "config.yaml"))
        raw["optimizer"]["decay_steps"] = None
        raw["posttrain"]["init_from"] = str(src)
        raw["train"]["out_dir"] = str(src.parent / f"{src.name}-{suffix}")
        extra = os.environ.get(OVERRIDES_ENV, "").split()  # after the command's, as load_config applies them
        cfg = from_dict(apply_overrides(raw, [*overrides, *extra]))
    else:
        cfg = load_config(source, overrides)
    return dataclasses.replace(cfg, chat=dataclasses.replace(cfg.chat, enabled=True))


def sft(
    cfg: Config, log: Callable[[str], None] = print, stop_after: int | None = None, reset: bool = False
) -> TrainResult:
    """Instruction-tune: train `cfg` on posttrain.data with the loss on replies only
    (`reset`: archive what train.out_dir holds first, as `jaxllm sft --reset`). Joins the
    multi-process run the environment describes (jaxllm/parallel/distributed.py)."""
    cfg = dataclasses.replace(cfg, chat=dataclasses.replace(cfg.chat, enabled=True))
    with distributed.joined():
        task_log = log if jax.process_index() == 0 else quiet  # one voice per run, as the trainer's
        return train(cfg, log, stop_after, task=SFTTask(cfg, task_log), reset=reset)
