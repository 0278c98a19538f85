"""Weights-only loading for inference: `load_run` reads the checkpoint's params and nothing
else, so sampling from a model needs about the weights' memory, not the ~3x of the whole
AdamW train state."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.config import save_config
from jaxllm.errors import DataError
from jaxllm.parallel.mesh import make_mesh
from jaxllm.train.checkpoint import Checkpointer, IncompatibleCheckpoint
from jaxllm.train.load import abstract_params, load_run, write_run

TINY = ["model.vocab_size=256", "model.max_seq_len=16", "model.d_model=16", "model.num_layers=2",
        "model.num_heads=2", "model.d_ff=32", "model.dropout=0.0", "data.seq_len=16"]  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    """A run holding random weights at step 3 (with fresh AdamW moments beside them)."""
    cfg = jaxllm.load_config("shakespeare-char", TINY)
    params = jaxllm.init_params(cfg, jax.random.key(7))
    folder = tmp_path_factory.mktemp("load") / "run"
    write_run(cfg, params, folder, step=3)
    return folder, params


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def test_load_run_returns_the_checkpoints_params_and_nothing_else(run):
    folder, written = run
    cfg, params, step = load_run(folder)
    assert step == 3 and cfg.train.out_dir == str(folder.absolute())
    assert jax.tree.structure(params) == jax.tree.structure(written), "the params tree alone: no opt_state, no step"
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(written), strict=True):
        assert isinstance(got, jax.Array) and got.dtype == jnp.float32
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_run_saved_with_another_optimizer_still_loads_for_inference(run, tmp_path):
    """config.yaml now names an optimizer whose state has another structure (no clipping
    entry) than the checkpoint's: training could not resume from it, sampling can."""
    folder = _copy(run[0], tmp_path / "run")
    cfg = jaxllm.load_config(folder / "config.yaml")
    save_config(dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, grad_clip=0.0)),
                folder / "config.yaml")  # fmt: skip
    from jaxllm.train.optimizer import make_optimizer
    from jaxllm.train.state import abstract_state

    changed = jaxllm.load_config(folder / "config.yaml")
    ckpt = Checkpointer(folder / "checkpoints")
    try:
        whole = abstract_state(changed, make_optimizer(changed.optimizer))
        assert ckpt.incompatibility(3, whole, None) is not None, "the whole state no longer fits"
    finally:
        ckpt.close()
    _, params, step = load_run(folder)
    assert step == 3
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(run[1]), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_dtype_bfloat16_loads_bfloat16_arrays(run):
    folder, written = run
    _, params, _ = load_run(folder, dtype=jnp.bfloat16)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(written), strict=True):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(jnp.bfloat16)))


def test_params_land_with_the_runs_shardings(run):
    """On the run's mesh, each parameter has the sharding training gives it."""
    folder, _ = run
    cfg, params, _ = load_run(folder)
    want = abstract_params(cfg, make_mesh(cfg.mesh))
    for got, spec in zip(jax.tree.leaves(params), jax.tree.leaves(want), strict=True):
        assert got.sharding.is_equivalent_to(spec.sharding, got.ndim)


def test_a_missing_step_or_an_empty_run_is_a_clear_error(run, tmp_path):
    folder, _ = run
    with pytest.raises(DataError, match=r"no checkpoint at step 5; it has steps \[3\]"):
        load_run(folder, step=5)
    assert load_run(folder, step=3)[2] == 3
    with pytest.raises(DataError, match="not a run directory"):
        load_run(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(folder / "config.yaml", empty / "config.yaml")
    with pytest.raises(DataError, match="no readable checkpoint yet"):
        load_run(empty)


def test_a_config_for_another_model_names_the_mismatch(run, tmp_path):
    folder = _copy(run[0], tmp_path / "run")
    cfg = jaxllm.load_config(folder / "config.yaml")
    save_config(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, d_ff=48)), folder / "config.yaml")
    with pytest.raises(IncompatibleCheckpoint, match="has shape .* changed: model.d_ff: 32 -> 48"):
        load_run(folder)


def test_params_read_a_few_leaves_at_a_time_are_the_same(run, monkeypatch):
    """restore_params reads groups of leaves (bounding the reader's transient memory); with
    groups as small as they go, every leaf still comes back whole and in its place."""
    from jaxllm.train import checkpoint

    monkeypatch.setattr(checkpoint, "GROUP_BYTES", 0)  # groups no bigger than the largest leaf
    folder, written = run
    _, params, _ = load_run(folder)
    assert jax.tree.structure(params) == jax.tree.structure(written)
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(written), strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_a_sharded_run_loads_sharded_onto_its_mesh(tmp_path):
    """A run on an fsdp x tensor mesh: each parameter is read straight into its shards on the
    8 test devices (not gathered on one), and the values are the written ones."""
    cfg = jaxllm.load_config("shakespeare-char", [*TINY, "mesh.fsdp=2", "mesh.tensor=2"])
    written = jaxllm.init_params(cfg, jax.random.key(3))
    write_run(cfg, written, tmp_path / "run")
    loaded, params, _ = load_run(tmp_path / "run", dtype=jnp.bfloat16)
    assert loaded.mesh.fsdp == 2 and loaded.mesh.tensor == 2
    sharded = 0
    for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(written), strict=True):
        assert len(got.sharding.device_set) == len(jax.devices()) and got.dtype == jnp.bfloat16
        sharded += not got.sharding.is_fully_replicated
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want.astype(jnp.bfloat16)))
    assert sharded > 0, "the kernels are split over fsdp/tensor, as training places them"
