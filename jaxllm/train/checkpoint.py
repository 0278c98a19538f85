"""Checkpoints with orbax: asynchronous, atomic, restorable onto any mesh.

A checkpoint at step N holds three items:
  state   params, optimizer state, step and PRNG key (the train state pytree)
  data    the input iterator's state (grain's next_index), so resuming continues
          with exactly the next batch
  config  the resolved config, as JSON
orbax writes each checkpoint into a temporary directory and renames it when complete,
so a crash mid-save never leaves a checkpoint that looks finished. Restoring takes the
abstract state with the *current* run's shardings, so a checkpoint saved on one mesh
loads onto another (train on 4x2, resume on 8x1).

Restoring tells two failures apart, because they need opposite answers:
  incompatible  the checkpoint is whole but holds another model or optimizer (its saved
                shapes differ from this config's state: `model.num_layers=2` over a
                4-layer run, `optimizer.grad_clip=0` dropping a state entry). Falling back
                or starting over would mix two runs in one folder, so restoring stops with
                `IncompatibleCheckpoint`, naming the config keys that differ, and every
                checkpoint stays as it was.
  corrupt       the files cannot be read (truncated, garbled). A training run moves the
                checkpoint into the run's quarantine/ folder, says so, and resumes from the
                previous one; the step number is then free to be saved again. When no
                checkpoint is readable the run stops (`UnreadableCheckpoints`) instead of
                starting over, and nothing is moved.
"""

from __future__ import annotations

import functools
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from jaxllm.config import ConfigError
from jaxllm.errors import DataError

GROUP_BYTES = 64 << 20  # restore_params reads leaves in groups of about this size (or one larger leaf)
START_OVER = "start over with the same command and --reset, which moves the old run into its archive/ folder"


class IncompatibleCheckpoint(ConfigError):
    """The run's checkpoint holds another model or optimizer than the config describes."""


class UnreadableCheckpoints(DataError):
    """Checkpoints exist but none can be read."""


def _reason(e: BaseException) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__


def _flat(tree: Any) -> dict[str, tuple[int, ...]]:
    """{"params/layers/attn/wq": shape, ...} of a pytree of arrays or array metadata."""
    def name(k: Any) -> str:  # dict keys, sequence indices and namedtuple fields alike (metadata has dicts)
        return str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def _flat_config(config: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flat_config(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(old: dict, new: dict, sections: tuple[str, ...] = ()) -> list[str]:
    """["model.num_layers: 4 -> 2", ...]: the keys whose values differ (within `sections`)."""
    a, b = _flat_config(old), _flat_config(new)
    keys = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and (not sections or k.startswith(sections)))
    return [f"{k}: {a.get(k, '(absent)')} -> {b.get(k, '(absent)')}" for k in keys]


class Checkpointer:
    """Keeps the last `keep` checkpoints plus every one whose step is a multiple of `keep_every`."""

    def __init__(self, directory: str | os.PathLike[str], keep: int = 3, keep_every: int = 0):
        self.directory = Path(directory).absolute()
        # Orbax names its cross-process barriers by step ("_async_write_complete.8"). Two
        # managers saving the same step at once (PPO's policy and critic) would then meet in
        # one barrier and fail ("already ongoing"); a prefix from the folder keeps them apart.
        # Every process opens the same folder, so every process derives the same prefix.
        prefix = "ckpt" + hashlib.sha1(str(self.directory).encode()).hexdigest()[:12]
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            keep_period=keep_every or None,
            enable_async_checkpointing=True,
            create=True,
            multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix),
        )
        # Handlers named up front (not just item names): a fresh manager can then read one
        # item's metadata (the saved shapes) before any restore, which `incompatibility` needs.
        handlers = {"state": ocp.StandardCheckpointHandler(), "data": ocp.JsonCheckpointHandler(),
                    "config": ocp.JsonCheckpointHandler()}  # fmt: skip
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

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

    def saved_config(self, step: int) -> dict | None:
        """The config saved with the checkpoint at `step` (None if unreadable)."""
        try:
            return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception:  # orbax raises many types for bad files
            return None

    def incompatibility(self, step: int, abstract_state: Any, config: dict | None) -> str | None:
        """Why the checkpoint at `step` cannot be this config's state (None: it fits, or its
        metadata is unreadable, which makes it a corrupt checkpoint, not an incompatible one)."""
        try:
            saved = _flat(self.manager.item_metadata(step)["state"].tree)
        except Exception:
            return None
        want = _flat(abstract_state)
        if saved == want:
            return None
        if saved.keys() != want.keys():
            only = sorted(saved.keys() ^ want.keys())
            what = f"its state entries differ ({', '.join(only[:3])}{', ...' if len(only) > 3 else ''})"
        else:
            name = next(k for k in want if saved[k] != want[k])
            what = f"{name} has shape {saved[name]} there but {want[name]} in this config"
        old = self.saved_config(step)
        changes = config_changes(old, config, ("model.", "optimizer.")) if old and config else []
        keys = f"; changed: {', '.join(changes[:6])}" if changes else ""
        return f"the checkpoint at step {step} in {self.directory} holds another model or optimizer: {what}{keys}"

    def restore_latest(
        self,
        abstract_state: Any,
        log: Callable[[str], None] = print,
        config: dict | None = None,
        quarantine: Path | None = None,
    ) -> tuple[int, Any, dict, dict] | None:
        """(step, state, data_state, config) of the newest readable checkpoint; None when
        there is no checkpoint at all.

        Raises IncompatibleCheckpoint when the newest whole checkpoint does not fit
        `abstract_state` (`config`, the current config as a dict, names the keys that
        changed), and UnreadableCheckpoints when checkpoints exist and none is readable.
        Unreadable ones newer than the restored one are moved into `quarantine` (a
        training run's; None: left in place, for readers such as `jaxllm sample`)."""
        corrupt: list[tuple[int, str]] = []
        for step in reversed(self.steps()):
            problem = self.incompatibility(step, abstract_state, config)
            if problem is not None:
                raise IncompatibleCheckpoint(
                    f"{problem}. Nothing was changed. Resume with the run's own settings (its config.yaml), give a "
                    f"new train.out_dir, or {START_OVER}"
                )
            try:
                restored = self.restore(step, abstract_state)
            except Exception as e:  # orbax/tensorstore raise many types for bad files
                corrupt.append((step, _reason(e)))
                log(f"warning: checkpoint at step {step} in {self.directory} is unreadable ({_reason(e)})")
                continue
            for bad, _ in corrupt:
                if quarantine is not None:
                    log(f"moved the unreadable checkpoint {self.directory / str(bad)} to "
                        f"{self._quarantine(bad, quarantine)}")  # fmt: skip
            if corrupt:
                log(f"resuming from step {step}, the newest readable checkpoint")
            return restored
        if corrupt:
            listed = "; ".join(f"step {s}: {r}" for s, r in corrupt)
            raise UnreadableCheckpoints(
                f"{self.directory} holds checkpoints but none is readable ({listed}). Nothing was changed. Give a new "
                f"train.out_dir, or {START_OVER}"
            )
        return None

    def _quarantine(self, step: int, folder: Path) -> Path:
        """Move the checkpoint at `step` into `folder` (so its step can be saved again)."""
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"step-{step}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        if jax.process_index() == 0:
            os.replace(self.directory / str(step), target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"jaxllm quarantine {step}")
        self.manager.reload()
        return target

    @functools.cached_property
    def _reader(self) -> ocp.CheckpointManager:
        """A second manager over the same folder whose `state` handler is the general pytree
        one: StandardCheckpointHandler restores whole trees only, PyTreeCheckpointHandler
        can restore a part (the on-disk format is the same). Made on first use, never writes."""
        options = ocp.CheckpointManagerOptions(create=False, enable_async_checkpointing=False)
        handlers = {"state": ocp.PyTreeCheckpointHandler()}
        return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def restore_params(self, step: int, abstract_params: Any) -> Any:
        """Only the `params` subtree of the state saved at `step` (orbax's errors if unreadable).

        Inference needs the weights alone; the AdamW moments are twice their size, so
        restoring the whole state costs ~3x the memory. Each leaf of `abstract_params`
        (ShapeDtypeStructs with shardings) says the dtype to read into (the cast happens
        while reading, so a bfloat16 load never holds a float32 copy) and where it lives."""
        # A few leaves per read, not all at once: tensorstore holds each array's encoded
        # bytes and its decoded copy while it reads, so one read of everything briefly
        # needs ~2x the weights; group by group the extra is ~2x the largest group.
        leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract_params)
        budget = max([GROUP_BYTES, *(s.size * s.dtype.itemsize for _, s in leaves)])
        restored: dict[tuple, Any] = {}
        group: list[tuple[tuple, Any]] = []
        for i, (path, leaf) in enumerate(leaves):
            group.append((path, leaf))
            size = sum(s.size * s.dtype.itemsize for _, s in group)
            if i + 1 == len(leaves) or size + leaves[i + 1][1].size * leaves[i + 1][1].dtype.itemsize > budget:
                restored |= self._restore_leaves(step, group)
                group = []
        return jax.tree_util.tree_unflatten(treedef, [restored[path] for path, _ in leaves])

    def _restore_leaves(self, step: int, leaves: list[tuple[tuple, Any]]) -> dict[tuple, Any]:
        """{path: array} of some params leaves (paths of dict keys, as in abstract_params)."""
        target: dict = {}
        for path, leaf in leaves:
            node = target
            for key in path[:-1]:
                node = node.setdefault(key.key, {})
            node[path[-1].key] = leaf
        target = {"params": target}
        restore_args = jax.tree.map(lambda s: ocp.ArrayRestoreArgs(dtype=s.dtype, sharding=s.sharding), target)
        args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
        got = self._reader.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]
        flat = jax.tree_util.tree_flatten_with_path(got)[0]
        return {path: array for path, array in flat}

    def params_incompatibility(self, step: int, abstract_params: Any, config: dict | None) -> str | None:
        """`incompatibility` for the params alone: the optimizer state a checkpoint holds does
        not matter to a reader (a run trained with another optimizer still samples)."""
        try:
            saved = self.manager.item_metadata(step)["state"].tree
        except Exception:
            return None  # unreadable metadata: a corrupt checkpoint, found when restoring
        if not isinstance(saved, dict) or "params" not in saved:
            return f"the checkpoint at step {step} in {self.directory} holds no params"
        return self.incompatibility(step, {**saved, "params": abstract_params}, config)

    def restore_latest_params(
        self,
        abstract_params: Any,
        log: Callable[[str], None] = print,
        config: dict | None = None,
        steps: list[int] | None = None,
    ) -> tuple[int, Any] | None:
        """(step, params) of the newest readable checkpoint (among `steps`, default all);
        None when there is none at all. The readers' `restore_latest`: the same fallback
        past unreadable checkpoints and the same errors (IncompatibleCheckpoint,
        UnreadableCheckpoints), but nothing is ever moved, and only the params are read."""
        unreadable: list[tuple[int, str]] = []
        for step in reversed(sorted(steps) if steps is not None else self.steps()):
            problem = self.params_incompatibility(step, abstract_params, config)
            if problem is not None:
                raise IncompatibleCheckpoint(f"{problem}. Nothing was changed; the run's config.yaml and its "
                                             "checkpoint disagree: restore the run's own config.yaml")  # fmt: skip
            try:
                params = self.restore_params(step, abstract_params)
            except Exception as e:  # orbax/tensorstore raise many types for bad files
                unreadable.append((step, _reason(e)))
                log(f"warning: checkpoint at step {step} in {self.directory} is unreadable ({_reason(e)})")
                continue
            if unreadable:
                log(f"using step {step}, the newest readable checkpoint")
            return step, params
        if unreadable:
            listed = "; ".join(f"step {s}: {r}" for s, r in unreadable)
            raise UnreadableCheckpoints(f"{self.directory} holds checkpoints but none is readable ({listed})")
        return None

    def close(self) -> None:
        if "_reader" in self.__dict__:
            self._reader.close()
        self.manager.close()
