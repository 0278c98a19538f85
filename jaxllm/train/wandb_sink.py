"""Weights & Biases as a third sink of a run's metrics, beside metrics.jsonl and TensorBoard.

Why W&B through its own library: it is the experiment tracker most teams already use to
compare runs across machines and people; its client does the buffering, retries and
offline spooling, which jaxllm should not rewrite (DESIGN.md 14). It stays optional
(`pip install 'jaxllm[wandb]'`): metrics.jsonl remains the record of truth, and W&B, like
TensorBoard, is a view of the same numbers.

What it logs: every `MetricsWriter.write(step, split, values)` becomes one
`run.log({"split/name": value, ...}, step=step)`, so the W&B keys are TensorBoard's tags and
a step's train, val and goodput values share one W&B history row. Only process 0 creates a
sink (loop.writer_for), like every other file a run writes.

Where: the W&B run folder is RUN_DIR/wandb (wandb.init's `dir` is the run folder), so an
offline run travels with its checkpoints and is uploaded later with
`wandb sync RUN_DIR/wandb/offline-run-*`. The W&B run id is kept in
RUN_DIR/wandb/jaxllm-run-id: a resumed run continues the same W&B run (offline, each resume
adds an offline-run-* folder with that id). W&B accepts only increasing steps, so the steps
a resumed run re-does (from its checkpoint up to the crash) keep their first values in
W&B, while `read_metrics` keeps the last.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from jaxllm.config import ConfigError, TrainConfig

WANDB_DIR = "wandb"  # inside the run folder; wandb.init(dir=RUN_DIR) makes it
RUN_ID_FILE = "jaxllm-run-id"


class WandbMissing(ConfigError):
    """train.wandb asks for W&B logging but the wandb library cannot be imported."""


def import_wandb() -> ModuleType:
    """The wandb module, or WandbMissing naming the key and the fix.

    Called when the run starts (before anything is written) in every process, so a missing
    library stops all processes at once instead of failing process 0 mid-run."""
    try:
        import wandb  # slow import (~1 s): only for runs that log to W&B
    except ImportError as e:
        raise WandbMissing(
            f"train.wandb is set but the wandb library cannot be imported ({e}); install it with "
            "`pip install 'jaxllm[wandb]'`, or set train.wandb='' to log without W&B"
        ) from None
    return wandb


def _run_id(folder: Path) -> str:
    """This run folder's W&B run id: made once, then reused by every resume of the run."""
    path = folder / RUN_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    run_id = secrets.token_hex(8)  # W&B ids: lowercase letters and digits
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


class WandbSink:
    """One W&B run per run folder; `write` logs a split's values at a step, `close` finishes it."""

    def __init__(self, run_dir: str | Path, train: TrainConfig, config: Mapping[str, Any] | None = None) -> None:
        wandb = import_wandb()
        run_dir = Path(run_dir)
        run_id = _run_id(run_dir / WANDB_DIR)
        self.run = wandb.init(
            project=train.wandb,
            entity=train.wandb_entity or None,
            name=train.wandb_name or run_dir.name,
            mode=train.wandb_mode or None,  # None: WANDB_MODE, else online
            dir=str(run_dir),
            id=run_id,
            resume="allow",
            config=dict(config or {}),
            # jaxllm prints its own progress and says where the run is (describe()); W&B's
            # console capture would wrap sys.stdout, which tests and the CLI redirect.
            settings=wandb.Settings(console="off", silent=True),
        )

    def describe(self) -> str:
        """One line for the run's log: where the W&B run lives."""
        if self.run.offline:
            return f"W&B: offline run in {Path(self.run.dir).parent}; upload it with `wandb sync` on that folder"
        return f"W&B: {self.run.url}"

    def write(self, step: int, split: str, values: Mapping[str, float]) -> None:
        """Log `values` as "split/name" at `step` (NaN and inf as they are: W&B shows them)."""
        self.run.log({f"{split}/{name}": v for name, v in values.items()}, step=int(step))

    def close(self) -> None:
        """Finish the W&B run (offline: its files complete; online: uploaded). Safe to call twice."""
        if self.run is not None:
            self.run.finish()
            self.run = None


__all__ = ["RUN_ID_FILE", "WANDB_DIR", "WandbMissing", "WandbSink", "import_wandb"]
