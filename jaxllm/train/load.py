"""Load the parameters of a trained run (its newest readable checkpoint) for inference."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxllm import host
from jaxllm.config import Config, load_config, to_dict
from jaxllm.data.prepare import load_manifest
from jaxllm.data.tokenizer import load_tokenizer
from jaxllm.errors import DataError
from jaxllm.model.api import param_shapes
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.mesh import make_mesh
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.run_folder import RunFolder, absolute_paths


def abstract_params(cfg: Config, layout: Layout | Mesh, dtype: Any = None) -> dict:
    """ShapeDtypeStructs of the parameters, each with its NamedSharding (the same layout
    training gives them: the run's `layout`, or one built for this read from a bare Mesh,
    the logical names and mesh.rules), in `dtype` when given (floating leaves only) else the
    saved model.param_dtype. No optimizer: a reader has no use for the moments' shardings."""
    if not isinstance(layout, Layout):
        layout = Layout.build(cfg, layout)
    elif layout.model != cfg.model:  # the caller's mesh and rules, this run's parameter names
        layout = layout.for_model(cfg.model)

    def leaf(s: jax.ShapeDtypeStruct, sharding: Any) -> jax.ShapeDtypeStruct:
        want = dtype if dtype is not None and jnp.issubdtype(s.dtype, jnp.floating) else s.dtype
        return jax.ShapeDtypeStruct(s.shape, jnp.dtype(want), sharding=sharding)

    return jax.tree.map(leaf, layout.param_shapes, layout.params)


_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)


@contextlib.contextmanager
def _freed_memory_returned() -> Iterator[None]:
    """While reading a checkpoint, large blocks are mmapped, so the buffers tensorstore frees
    go back to the kernel at once. jaxllm keeps freed memory in its heap for the train
    step's sake (jaxllm/host.py); here that would turn every read's transient buffers into
    peak memory (measured: `jaxllm sample` on a 982 MB model, 2.5 GB -> see BENCHMARKS.md).
    The host settings are put back afterwards; nothing happens where they are not applied."""
    if not host.tune_malloc():  # not glibc, or JAXLLM_MALLOC_TUNING=0: malloc is left alone
        yield
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(128 << 10))  # glibc's default threshold
    try:
        yield
    finally:
        host.tune_malloc()


def load_run(
    run_dir: str | os.PathLike[str], step: int | None = None, dtype: Any = None, layout: Layout | None = None
) -> tuple[Config, dict, int]:
    """(config, params, step) of a run directory written by `jaxllm train`: the newest
    readable checkpoint, or the one saved at `step`. `layout`: read straight into another
    run's mesh and rules (post-training's start runs); default: the run's own.

    Only the parameters are read, never the optimizer state (twice their size under
    AdamW): peak memory is about the weights' own size. They land sharded on the run's
    mesh, in `dtype` if given (e.g. jnp.bfloat16: cast while reading, no float32 copy).
    Resuming training needs the whole state and restores it itself (train/trainer.py).
    Unreadable checkpoints are skipped with a warning and left where they are."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir} is not a run directory (no config.yaml); give the train.out_dir of a run")
    cfg = load_config(run_dir / "config.yaml")
    # The folder given is the run, wherever it was trained or moved to since.
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(run_dir.absolute())))
    abstract = abstract_params(cfg, layout if layout is not None else make_mesh(cfg.mesh), dtype)
    checkpoints = Checkpointer(run_dir / "checkpoints")
    try:
        if step is not None and step not in checkpoints.steps():
            raise DataError(f"{run_dir} has no checkpoint at step {step}; it has steps {checkpoints.steps()}")
        steps = None if step is None else [step]
        with _freed_memory_returned():
            restored = checkpoints.restore_latest_params(abstract, config=to_dict(cfg), steps=steps)
    finally:
        checkpoints.close()
    if restored is None:
        raise DataError(f"{run_dir} has no readable checkpoint yet")
    step, params = restored
    return cfg, params, step


def load_run_tokenizer(cfg: Config):
    """The tokenizer a run was trained with: the one its dataset manifest records
    (falling back to tokenizer.path when the data directory is gone)."""
    try:
        path = load_manifest(cfg.data.path)["tokenizer"]["path"]
    except (DataError, OSError, KeyError):
        path = cfg.tokenizer.path
    return load_tokenizer(path)


def write_run(cfg: Config, params: dict, run_dir: str | os.PathLike[str], step: int = 0) -> Path:
    """A run directory holding `params` (config.yaml plus a checkpoint at `step` with
    fresh AdamW moments): what `load_run` reads and `jaxllm sft/train/sample/eval` accept.

    This is how weights made outside a training run (imported ones, or a test's
    random ones) become a run like any other.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        raise DataError(f"{run_dir} already holds checkpoints; give a new or empty run directory")
    tx = make_optimizer(cfg.optimizer, cfg.model)
    shardings = Layout.build(cfg, make_mesh(cfg.mesh), tx).state
    dtype = jax.numpy.dtype(cfg.model.param_dtype)
    params = jax.tree.map(lambda a: np.asarray(a, dtype), params)
    got = jax.tree.map(lambda a: tuple(a.shape), params)
    want = jax.tree.map(lambda s: tuple(s.shape), param_shapes(cfg.model))
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
        raise DataError(f"the parameters do not fit model config {cfg.model}: their tree or shapes differ")
    placed = jax.device_put(params, shardings["params"])
    _, train_rng = jax.random.split(jax.random.PRNGKey(cfg.train.seed))  # what a fresh training run holds
    state = {
        "step": jax.device_put(np.int32(step), shardings["step"]),
        "params": placed,
        "opt_state": jax.jit(tx.init, out_shardings=shardings["opt_state"])(placed),
        "rng": jax.device_put(train_rng, shardings["rng"]),
    }
    with RunFolder(run_dir) as folder:  # locked while it writes; config.yaml last, once the checkpoint is whole
        cfg = absolute_paths(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(folder.path))))
        ckpt = Checkpointer(ckpt_dir, keep=cfg.train.keep_checkpoints, keep_every=cfg.train.keep_every)
        try:
            ckpt.save(step, state, {}, to_dict(cfg), force=True)
            ckpt.wait()
        finally:
            ckpt.close()
        folder.write_config(cfg)
    return run_dir
