"""Checkpoints with orbax: asynchronous, atomic, restorable onto any mesh.

A checkpoint at step N holds three items:
  state   params, optimizer state, step and PRNG key (the train state pytree)
  data    the input iterator's state (grain's next_index), so resuming continues
          with exactly the next batch
  config  the resolved config, as JSON
orbax writes each checkpoint into a temporary directory and renames it when complete,
so a crash mid-save never leaves a checkpoint that looks finished. Restoring takes the
abstract state with the *current* run's shardings, so a checkpoint saved on one mesh
loads onto another (train on 4x2, resume on 8x1). If the newest checkpoint cannot be
read (truncated or corrupt files), the previous one is used, with a warning.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
    """Keeps the last `keep` checkpoints plus every one whose step is a multiple of `keep_every`."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3, keep_every: int = 0):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every or None,
            enable_async_checkpointing=True,
            create=True,
        )
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "data", "config"))

    def save(self, step: int, state: Any, data_state: dict, config: dict, force: bool = False) -> None:
        """Start saving in the background; training continues while it writes."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state),
                config=ocp.args.JsonSave(config),
            ),
            force=force,
        )

    def wait(self) -> None:
        """Block until pending saves are on disk (before exit, and in tests)."""
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, step: int, abstract_state: Any) -> tuple[int, Any, dict, dict]:
        """(step, state, data_state, config) of the checkpoint at `step` (orbax's errors if unreadable)."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state),
                data=ocp.args.JsonRestore(),
                config=ocp.args.JsonRestore(),
            ),
        )
        return step, restored["state"], restored["data"], restored["config"]

    def restore_latest(
        self, abstract_state: Any, log: Callable[[str], None] = print
    ) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, config) of the newest readable checkpoint, or None."""
        for step in reversed(self.steps()):
            try:
                return self.restore(step, abstract_state)
            except Exception as e:  # orbax/tensorstore raise many types for bad files
                reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                log(f"warning: checkpoint at step {step} in {self.directory} is unreadable ({reason}); "
                    "falling back to the previous one")  # fmt: skip
                continue
        return None

    def close(self) -> None:
        self.manager.close()
