"""What a training run learns from (`Task`), what it returns (`TrainResult`), and the checks
and validation loss every task shares.

The host loop (jaxllm/train/loop.py) and the pre-training driver (jaxllm/train/trainer.py)
are the same for every task; a Task supplies the batches, the validation batches, the
loss and the starting parameters (SFT, DPO and reward models: jaxllm/posttrain/).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import jax

from jaxllm.config import Config, ConfigError
from jaxllm.data.loader import make_dataset
from jaxllm.data.manifest import MANIFEST
from jaxllm.data.ready import check_dataset
from jaxllm.data.stream import check_mixture, make_stream
from jaxllm.errors import DataError
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.mesh import BATCH_AXES
from jaxllm.train.loop import quiet
from jaxllm.train.step import shard_batch


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    step: int
    train_losses: dict[int, float]
    val_losses: dict[int, float]
    interrupted: int | None = None  # the signal number, if a signal ended the run
    tokens_per_s: float = 0.0


def check_vocab(cfg: Config, log: Callable[[str], None] = print) -> dict:
    """The prepared dataset's manifest, after checking the data is what the config names
    (its inputs, tokenizer and shard bytes: jaxllm/data/ready.py) and that its tokenizer
    fits the model."""
    manifest = check_dataset(cfg, log)
    vocab = manifest["tokenizer"]["vocab_size"]
    if vocab > cfg.model.vocab_size:
        raise DataError(
            f"model.vocab_size={cfg.model.vocab_size} is smaller than the dataset's tokenizer ({vocab} ids, "
            f"{manifest['tokenizer']['path']}); set model.vocab_size={vocab} or more"
        )
    return manifest


def check_batch(cfg: Config, mesh: jax.sharding.Mesh) -> None:
    """Each microbatch must split evenly over the data-parallel devices (data x fsdp x expert)."""
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    per_micro = cfg.train.batch_size // cfg.train.microbatches
    if per_micro % shards:
        raise ConfigError(
            f"train.batch_size={cfg.train.batch_size} / train.microbatches={cfg.train.microbatches} = {per_micro} rows "
            f"do not split over mesh data x fsdp x expert = {shards} devices; use a batch size that is a multiple of "
            f"{shards * cfg.train.microbatches}"
        )


def process_rows(batch: dict) -> dict:
    """This process's rows of a global batch that every process built alike (instruction
    and preference batches): process i takes the i-th block of rows, the rows its devices
    hold on the mesh, as the pre-training pipeline's per-process slices do."""
    n, i = jax.process_count(), jax.process_index()
    if n == 1:
        return batch
    rows = len(next(iter(batch.values())))
    if rows % n:
        raise ConfigError(f"train.batch_size={rows} is not divisible by the {n} processes; use a multiple of {n}")
    k = rows // n
    return {key: value[i * k : (i + 1) * k] for key, value in batch.items()}


def evaluate(
    cfg: Config, eval_step, params, layout: Layout, has_val: bool = True, batches=None, global_batches: bool = False
) -> float | None:
    """Mean token loss over `train.eval_batches` validation batches (None without a val split).

    `batches`: the validation batches to use (a task's; `global_batches` when every
    process built the whole batch); default: the prepared dataset's, already per process."""
    if not has_val:
        return None
    if batches is None:
        try:
            batches = make_dataset(cfg, "val", epochs=1)
        except DataError:  # a validation split shorter than one batch row
            return None
    total = count = 0.0
    for i, batch in enumerate(batches):
        if i >= cfg.train.eval_batches:
            break
        s, c = jax.device_get(eval_step(params, shard_batch(process_rows(batch) if global_batches else batch, layout)))
        total, count = total + float(s), count + float(c)
    return total / count if count else None


class Task:
    """What a training run learns from; the loop, sharding, checkpoints and metrics are
    the same for every task. The default is pre-training on the prepared dataset;
    instruction tuning (jaxllm/posttrain/sft.py) supplies its own batches and starting
    parameters."""

    name = "pretrain"
    loss_fn = None  # the train step's loss (None: next-token cross-entropy); see make_train_step
    tokens_per_count = 1.0  # tokens the model reads per unit of the loss's count (a DPO pair: 2 x seq_len)
    global_batches = False  # True: every process builds the whole global batch and keeps its own rows

    def train_iter(self, cfg: Config):
        """Batches with get_state/set_state (saved with each checkpoint): the streaming mixture
        when data.mixture is set (jaxllm/data/stream.py), else data.path's packed rows."""
        if cfg.data.mixture:
            check_mixture(cfg, print if jax.process_index() == 0 else quiet)
            return make_stream(cfg)
        return iter(make_dataset(cfg, "train"))

    def has_val(self, cfg: Config) -> bool:
        if cfg.data.mixture and not (Path(cfg.data.path) / MANIFEST).is_file():
            return False  # a mixture trains alone; a prepared dataset at data.path adds its validation split
        return bool(check_vocab(cfg, quiet)["splits"]["val"]["docs"])  # `jaxllm train` checked it aloud first

    def val_batches(self, cfg: Config):
        """Validation batches, or None for the prepared dataset's val split."""
        return None

    def initial_params(self, cfg: Config, layout: Layout):
        """Parameters to start a fresh run from (None: random initialisation), read into
        the run's `layout` where they come from a checkpoint."""
        return None


