"""Pre-training: sharded == single device, accumulation == big batch, resume == uninterrupted,
checkpoints across meshes and past corruption, non-finite losses."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

import jaxllm
from jaxllm.parallel.mesh import make_mesh
from jaxllm.train.checkpoint import Checkpointer
from jaxllm.train.metrics import read_metrics, read_tensorboard_scalars
from jaxllm.train.optimizer import decay_mask, make_optimizer
from jaxllm.train.state import abstract_state, init_state, state_shardings
from jaxllm.train.step import make_train_step, shard_batch
from jaxllm.train.trainer import NonFiniteLoss, train
from tests.data_paths import TINY

REPO = Path(__file__).resolve().parents[1]
QUIET = {"log": lambda _: None}
TINY_MODEL = ["model.vocab_size=256", "model.max_seq_len=32", "model.d_model=32", "model.num_layers=2",
              "model.num_heads=4", "model.d_ff=64", "model.dropout=0.0", "data.seq_len=32"]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "text.txt").write_text(TINY.read_text(encoding="utf-8")[:150_000])
    cfg = jaxllm.load_config("shakespeare-char", [f"data.inputs=[{root}/text.txt]", f"data.path={root}/data"])
    from jaxllm.data.prepare import prepare

    prepare(cfg, **QUIET)
    return root / "data"


def config(data_dir, out, *extra):
    return jaxllm.load_config(
        "shakespeare-char",
        [*TINY_MODEL, f"data.path={data_dir}", f"data.inputs=[{data_dir.parent}/text.txt]",
         f"train.out_dir={out}", "train.batch_size=8", "train.log_every=1",
         "train.eval_every=1000", "train.eval_batches=2", "optimizer.warmup_steps=2", "train.tensorboard=false",
         *extra],
    )  # fmt: skip


def synthetic_batch(B=8, T=32, seed=0):
    rng = np.random.default_rng(seed)
    seg = np.ones((B, T), np.int32)
    seg[:, T // 2 :] = 2  # two packed documents per row
    pos = np.concatenate([np.arange(T // 2), np.arange(T - T // 2)]).astype(np.int32)
    return {
        "inputs": rng.integers(0, 256, (B, T), dtype=np.int32),
        "targets": rng.integers(0, 256, (B, T), dtype=np.int32),
        "segment_ids": seg,
        "positions": np.tile(pos, (B, 1)),
        "target_mask": (rng.random((B, T)) < 0.8).astype(np.int32),
    }


def three_steps(cfg, devices=None):
    mesh = make_mesh(cfg.mesh, devices)
    tx = make_optimizer(cfg.optimizer)
    state = init_state(cfg, mesh, tx)
    step = make_train_step(cfg, mesh, tx)
    losses = []
    for i in range(3):
        state, m = step(state, shard_batch(synthetic_batch(seed=i), mesh))
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state["params"]), state


MESHES = {
    "data=8": ["mesh.data=8"],
    "fsdp=8": ["mesh.data=1", "mesh.fsdp=8"],
    "data=2,fsdp=2,tensor=2": ["mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"],
    "tensor=4,data=2": ["mesh.data=2", "mesh.tensor=4"],
    "context=2,fsdp=2,tensor=2": ["mesh.data=1", "mesh.fsdp=2", "mesh.context=2", "mesh.tensor=2"],
}


@pytest.fixture(scope="module")
def single_device_run(data_dir, tmp_path_factory):
    cfg = config(data_dir, tmp_path_factory.mktemp("single"), "mesh.data=1")
    return three_steps(cfg, jax.devices()[:1])


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_training_matches_single_device(mesh, data_dir, tmp_path, single_device_run):
    ref_losses, ref_params, _ = single_device_run
    losses, params, state = three_steps(config(data_dir, tmp_path, *MESHES[mesh]))
    np.testing.assert_allclose(losses, ref_losses, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    kernel = state["params"]["blocks"]["mlp"]["up_proj"]["kernel"]  # (L, embed, mlp)
    mu = state["opt_state"][1][0].mu["blocks"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.spec == mu.sharding.spec, "AdamW moments are sharded like their parameters"
    if "fsdp=8" in mesh:
        assert kernel.sharding.spec[1] == ("fsdp", "context") and kernel.addressable_shards[0].data.shape[1] == 32 // 8
    if "tensor=4" in mesh:
        assert kernel.sharding.spec[2] == "tensor" and kernel.addressable_shards[0].data.shape[2] == 64 // 4


def test_gradient_accumulation_equals_the_full_batch(data_dir, tmp_path):
    two = jax.devices()[:2]
    full_losses, full_params, _ = three_steps(config(data_dir, tmp_path, "mesh.data=2"), two)
    acc_losses, acc_params, _ = three_steps(config(data_dir, tmp_path, "mesh.data=2", "train.microbatches=4"), two)
    np.testing.assert_allclose(acc_losses, full_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(acc_params), jax.tree.leaves(full_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_weight_decay_applies_to_kernels_only():
    params = jaxllm.param_shapes(jaxllm.load_config("gpt2-124m", ["model.num_layers=1", "model.tie_embeddings=false"]))
    flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(decay_mask(params))}
    assert flat["['blocks']['attn']['q_proj']['kernel']"] and flat["['lm_head']['kernel']"]
    assert not flat["['wte']['embedding']"] and not flat["['wpe']['embedding']"]
    assert not flat["['blocks']['ln_1']['scale']"] and not flat["['blocks']['attn']['q_proj']['bias']"]


def test_sigterm_then_resume_reproduces_the_uninterrupted_run(data_dir, tmp_path):
    args = ["train.steps=20", "train.checkpoint_every=1000", "model.d_model=64", "model.d_ff=128"]
    straight = train(config(data_dir, tmp_path / "straight", *args), **QUIET)
    assert sorted(straight.train_losses) == list(range(1, 21))

    run = tmp_path / "stopped"
    overrides = [*TINY_MODEL, f"data.path={data_dir}", f"data.inputs=[{data_dir.parent}/text.txt]",
                 f"train.out_dir={run}", "train.batch_size=8",
                 "train.log_every=1", "train.eval_every=1000", "train.eval_batches=2", "optimizer.warmup_steps=2",
                 "train.tensorboard=false", *args]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "jaxllm.cli", "train", "shakespeare-char", *overrides]
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    for line in child.stdout:
        if "step 10/20" in line:
            child.send_signal(signal.SIGTERM)
            break
    rest = child.stdout.read()
    assert child.wait(timeout=120) == 128 + signal.SIGTERM, rest
    stopped_at = Checkpointer(run / "checkpoints").steps()[-1]
    assert 10 <= stopped_at < 20, f"the signal should stop the run early (checkpoint at {stopped_at})\n{rest}"
    assert f"received signal {int(signal.SIGTERM)}" in rest

    resumed = train(config(data_dir, run, *args), **QUIET)
    assert sorted(resumed.train_losses) == list(range(stopped_at + 1, 21))
    for step in range(stopped_at + 1, 21):  # bit-identical on CPU
        assert resumed.train_losses[step] == straight.train_losses[step], step
    logged = {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train"}
    assert sorted(logged) == list(range(1, 21))


def test_checkpoint_restores_onto_a_different_mesh(data_dir, tmp_path):
    run = tmp_path / "run"
    first = config(data_dir, run, "train.steps=6", "train.checkpoint_every=3", "mesh.data=4", "mesh.fsdp=2")
    train(first, stop_after=3, **QUIET)
    second = config(data_dir, run, "train.steps=6", "train.checkpoint_every=3", "mesh.data=8", "mesh.fsdp=1")
    mesh = make_mesh(second.mesh)
    tx = make_optimizer(second.optimizer)
    restored = Checkpointer(run / "checkpoints").restore_latest(
        abstract_state(second, tx, state_shardings(second, mesh, tx))
    )
    step, state, data_state, saved_cfg = restored
    assert step == 3 and int(state["step"]) == 3 and data_state["next_index"] == 3
    assert saved_cfg["mesh"]["fsdp"] == 2
    kernel = state["params"]["blocks"]["mlp"]["up_proj"]["kernel"]
    assert kernel.sharding.mesh.shape == {"data": 8, "fsdp": 1, "context": 1, "expert": 1, "tensor": 1, "pipeline": 1}
    assert kernel.addressable_shards[0].data.shape == kernel.shape  # no longer split: fsdp is 1 on this mesh
    # ...and the resumed 8x1 run continues where the 4x2 run stopped, matching a straight 8x1 run.
    resumed = train(second, **QUIET)
    straight = train(config(data_dir, tmp_path / "straight", "train.steps=6", "mesh.data=8"), **QUIET)
    after = (4, 5, 6)
    resumed_losses = [resumed.train_losses[s] for s in after]
    np.testing.assert_allclose(resumed_losses, [straight.train_losses[s] for s in after], rtol=1e-5)


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path):
    run = tmp_path / "run"
    cfg = config(data_dir, run, "train.steps=4", "train.checkpoint_every=2")
    train(cfg, **QUIET)
    ckpt = Checkpointer(run / "checkpoints")
    assert ckpt.steps() == [2, 4]
    files = [p for p in (run / "checkpoints" / "4" / "state").rglob("*") if p.is_file() and p.stat().st_size > 100]
    for f in files:  # truncate the newest checkpoint's array data
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    messages = []
    mesh = make_mesh(cfg.mesh)
    tx = make_optimizer(cfg.optimizer)
    step, state, _, _ = ckpt.restore_latest(
        abstract_state(cfg, tx, state_shardings(cfg, mesh, tx)), log=messages.append
    )
    assert step == 2 and int(state["step"]) == 2
    assert "step 4" in messages[0] and "unreadable" in messages[0] and "resuming from step 2" in messages[-1]
    assert ckpt.steps() == [2, 4], "a reader (no quarantine folder given) leaves the checkpoints in place"


def test_nonfinite_loss_stops_with_the_step_or_is_skipped(data_dir, tmp_path):
    boom = ["optimizer.lr=1e30", "optimizer.grad_clip=0", "optimizer.warmup_steps=0", "train.steps=30"]
    with pytest.raises(NonFiniteLoss, match=r"at step \d+"):
        train(config(data_dir, tmp_path / "stop", *boom), **QUIET)
    result = train(config(data_dir, tmp_path / "skip", *boom, "train.on_nonfinite=skip"), **QUIET)
    assert result.step == 30 and any(not np.isfinite(v) for v in result.train_losses.values())


def test_metrics_tensorboard_and_eval_are_written(data_dir, tmp_path):
    run = tmp_path / "run"
    result = train(config(data_dir, run, "train.steps=4", "train.eval_every=2", "train.tensorboard=true"), **QUIET)
    assert set(result.val_losses) == {2, 4}
    records = read_metrics(run)
    train_rows = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "step_time_s", "mfu"} <= set(train_rows[0])
    assert 0 < train_rows[-1]["mfu"] < 1
    scalars = read_tensorboard_scalars(run / "tensorboard")
    assert [s for s, _ in scalars["val/loss"]] == [2, 4]
    assert (run / "config.yaml").exists() and jaxllm.load_config(run / "config.yaml").train.steps == 4


def test_a_run_builds_its_layout_once(data_dir, tmp_path, monkeypatch):
    """The rules parse and the state's shardings (an abstract init of model and optimizer)
    happen once per run: train, eval, init and restore all take the run's Layout."""
    import sys

    from jaxllm.parallel.layout import Layout

    cfg = config(data_dir, tmp_path / "run", "train.steps=2", "train.eval_every=1", "train.checkpoint_every=1")
    counts = {"build": 0, "derive": 0, "parse_rules": 0}  # counted from here: loading the config parses it too
    build, derive = Layout.build.__func__, Layout._derive.__func__

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(Layout, "build", classmethod(counted("build", build)))
    monkeypatch.setattr(Layout, "_derive", classmethod(counted("derive", derive)))
    for module in [m for name, m in sys.modules.items() if name.startswith("jaxllm") and hasattr(m, "parse_rules")]:
        monkeypatch.setattr(module, "parse_rules", counted("parse_rules", module.parse_rules))
    train(cfg, **QUIET)  # a fresh run: init, train steps, eval steps, checkpoints
    train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=3)), **QUIET)  # resumed: restore too
    assert counts == {"build": 2, "derive": 2, "parse_rules": 2}, f"one layout per run, not {counts}"


def test_resume_across_pipeline_degrees_gives_the_same_next_step(data_dir, tmp_path):
    """Checkpoints keep the canonical [L, ...] layout: trained with pipeline=2, resumed with 1."""
    piped = ["mesh.data=4", "mesh.pipeline=2", "train.microbatches=2", "train.steps=3", "train.checkpoint_every=2"]
    straight = train(config(data_dir, tmp_path / "straight", *piped), **QUIET)
    run = tmp_path / "run"
    train(config(data_dir, run, *piped), stop_after=2, **QUIET)
    resumed = train(config(data_dir, run, "mesh.data=8", "train.steps=3"), **QUIET)  # pipeline=1 now
    assert sorted(resumed.train_losses) == [3]
    np.testing.assert_allclose(resumed.train_losses[3], straight.train_losses[3], rtol=1e-5)


def test_training_continues_from_a_weights_only_run(data_dir, tmp_path):
    """Weights made outside training (an imported model, write_run) train like a native run:
    the trainer starts from them, not from a fresh init, and reads the data from its start."""
    from jaxllm.train.load import load_run, write_run

    cfg = config(data_dir, tmp_path / "run", "train.steps=2")
    start = jaxllm.init_params(cfg, jax.random.key(123))
    write_run(cfg, start, tmp_path / "run")
    logs: list[str] = []
    result = train(cfg, log=logs.append)
    assert any("no data-iterator state" in line for line in logs)
    assert set(result.train_losses) == {1, 2} and all(np.isfinite(list(result.train_losses.values())))
    _, params, step = load_run(tmp_path / "run")
    assert step == 2
    pairs = zip(jax.tree.leaves(params), jax.tree.leaves(start), strict=True)
    moved = max(float(np.max(np.abs(a - b))) for a, b in pairs)
    assert 0 < moved < 0.01  # two small AdamW steps away from the written weights (a fresh init is ~0.02 away)
