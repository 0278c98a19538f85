"""The multi-host path, for real, on one machine: two jaxllm processes on loopback, four
CPU devices each, joined by jax.distributed (gloo collectives) into one 8-device mesh.

They train, checkpoint collectively, stop, resume from that checkpoint and train on;
their losses must equal a single process training on 8 devices. Bounded in time:
every process is killed if the pair does not finish, and only 127.0.0.1 is used.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jaxllm
from jaxllm.parallel.distributed import Cluster, detect
from jaxllm.train.goodput import GOODPUT_SPLIT
from jaxllm.train.metrics import read_metrics
from jaxllm.train.trainer import train
from tests.data_paths import TINY
from tests.fixtures import PPO_SMALL, TEST_XLA_FLAGS

TIMEOUT_S = 300
TINY_MODEL = ["model.vocab_size=256", "model.max_seq_len=32", "model.d_model=32", "model.num_layers=2",
              "model.num_heads=2", "model.dropout=0.0", "data.seq_len=32"]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    (root / "text.txt").write_text(TINY.read_text(encoding="utf-8")[:60_000])
    cfg = jaxllm.load_config("shakespeare-char", [f"data.inputs=[{root}/text.txt]", f"data.path={root}/data"])
    from jaxllm.data.prepare import prepare

    prepare(cfg, log=lambda _: None)
    return root / "data"


def overrides(data_dir, out, steps):
    return [*TINY_MODEL, f"data.path={data_dir}", f"data.inputs=[{data_dir.parent}/text.txt]", f"train.out_dir={out}",
            "train.batch_size=8", "train.log_every=1", f"train.steps={steps}", "train.eval_every=1000",
            "train.checkpoint_every=2", "optimizer.warmup_steps=2", "train.tensorboard=false"]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(devices: int) -> dict[str, str]:
    """The environment of one process of a loopback pair: `devices` CPU devices of its own."""
    xla_flags = f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
    return {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}


def start(args: list[str], processes: int = 2, devices_each: int = 4) -> list[subprocess.Popen]:
    """`jaxllm train ARGS` as `processes` loopback processes."""
    port = free_port()
    env = child_env(devices_each)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "jaxllm.cli", "train", "shakespeare-char", *args,
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes), "--process-id", str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for i in range(processes)
    ]


def launch(args: list[str], processes: int = 2, devices_each: int = 4) -> list[str]:
    """Run `jaxllm train ARGS` as `processes` loopback processes to the end; their outputs."""
    procs = start(args, processes, devices_each)
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}:\n{out[-3000:]}"
    return outputs


def own_lines(output: str) -> list[str]:
    """A process's output less gloo's connection chatter ("[Gloo] Rank 1 is connected to 1 peer
    ranks. ..."), which its threads write concurrently, so one message may be split over two lines."""
    gloo = ("[Gloo]", "peer ranks. Expected number of connected peer ranks")
    return [line for line in output.splitlines() if line.strip() and not any(g in line for g in gloo)]


def test_two_processes_train_checkpoint_and_resume_like_one(data_dir, tmp_path):
    single = train(jaxllm.load_config("shakespeare-char", overrides(data_dir, tmp_path / "single", 4)),
                   log=lambda _: None)  # fmt: skip  # one process, the 8 devices of tests/conftest.py

    run = tmp_path / "multi"
    first = launch(overrides(data_dir, run, 2))  # steps 1-2, then a collective checkpoint at step 2
    assert "8 devices" in first[0] and "step 2/2" in first[0]
    own = own_lines(first[1])
    assert own == [], f"process 1 must leave the talking to process 0, printed:\n{own[:20]}"
    second = launch(overrides(data_dir, run, 4))  # resumes from step 2 in both processes
    assert f"resumed from {run / 'checkpoints'}/2 (step 2)" in second[0]

    losses = {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train"}
    assert sorted(losses) == [1, 2, 3, 4]
    for step, loss in single.train_losses.items():
        assert losses[step] == pytest.approx(loss, rel=1e-5), f"step {step}"
    assert sorted(int(p.name) for p in (run / "checkpoints").iterdir() if p.name.isdigit()) == [2, 4]


def test_detect_reads_flags_env_slurm_and_tpu():
    assert detect(env={}) == Cluster("single")
    assert detect("127.0.0.1:1234", 2, 1, env={}) == Cluster("explicit", "127.0.0.1:1234", 2, 1)
    env = {"JAXLLM_COORDINATOR": "10.0.0.2:9999", "JAXLLM_NUM_PROCESSES": "4", "JAXLLM_PROCESS_ID": "3"}
    assert detect(env=env) == Cluster("explicit", "10.0.0.2:9999", 4, 3)
    assert detect(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8"}).method == "slurm"
    assert detect(env={"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}).method == "single"
    assert detect(env={"TPU_WORKER_HOSTNAMES": "t1,t2,t3,t4"}).method == "tpu"
    with pytest.raises(jaxllm.ConfigError, match="process_id missing"):
        detect("127.0.0.1:1234", 2, env={})
    with pytest.raises(jaxllm.ConfigError, match="process_id=2 is outside"):
        detect("127.0.0.1:1234", 2, 2, env={})
    with pytest.raises(jaxllm.ConfigError, match="needs a port"):
        detect("127.0.0.1", 2, 0, env={})


def test_a_signal_to_one_process_stops_both_at_the_same_checkpointed_step(data_dir, tmp_path):
    """Preemption notices need not reach every host: the processes agree each step on
    what was received, checkpoint together and exit together with 128 + signal."""
    run = tmp_path / "preempted"
    procs = start(overrides(data_dir, run, 10_000))
    try:
        deadline = time.monotonic() + TIMEOUT_S
        seen = []
        for line in procs[0].stdout:  # process 0 speaks for the run
            seen.append(line)
            if "step 3/" in line:
                break
            assert time.monotonic() < deadline, "no step 3 in time:\n" + "".join(seen[-20:])
        procs[1].send_signal(signal.SIGTERM)  # only process 1 is told
        out0 = "".join(seen) + procs[0].communicate(timeout=TIMEOUT_S)[0]
        procs[1].communicate(timeout=TIMEOUT_S)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [128 + signal.SIGTERM] * 2
    stopped = [line for line in out0.splitlines() if "received signal" in line]
    assert len(stopped) == 1, out0[-2000:]
    step = int(stopped[0].split(" at step ")[1].split(":")[0])
    assert step >= 3 and str(step) in {p.name for p in (run / "checkpoints").iterdir()}


def test_instruction_tuning_on_two_processes_equals_one(tmp_path):
    """SFT batches are built alike in every process, which keeps its own rows: the
    two-process losses are the one-process losses."""
    from jaxllm.cli import main
    from tests.data_paths import SHARED_DATA

    data = SHARED_DATA / "instructions" / "instruction-data.json"
    args = [*TINY_MODEL, "data.seq_len=64", "model.max_seq_len=64", f"posttrain.data={data}", "train.steps=3",
            "train.batch_size=8", "train.eval_every=3", "train.eval_batches=1", "train.tensorboard=false",
            "train.log_every=1", f"data.path={tmp_path}/none"]  # fmt: skip
    assert main(["sft", "shakespeare-char", *args, f"train.out_dir={tmp_path}/one"]) == 0
    port = free_port()
    env = child_env(4)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "jaxllm.cli", "sft", "shakespeare-char", *args, f"train.out_dir={tmp_path}/two",
             "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:]
    one = {(r["split"], r["step"]): r["loss"] for r in read_metrics(tmp_path / "one") if r["split"] != GOODPUT_SPLIT}
    two = {(r["split"], r["step"]): r["loss"] for r in read_metrics(tmp_path / "two") if r["split"] != GOODPUT_SPLIT}
    assert set(one) == set(two) and ("val", 3) in one
    for key, loss in one.items():
        assert two[key] == pytest.approx(loss, rel=1e-5), key


PREFS = "instructions/instruction-data-with-preference.json"


def one_and_two_processes(args: list[str], tmp_path, one: Path | None = None) -> tuple[dict, dict]:
    """`jaxllm ARGS` in one process (8 devices; or `one`, a run of ARGS made so already) and
    in two loopback processes (4 devices each) joined through the JAXLLM_* environment alone
    (the library entry point joins, no CLI flag needed): each run's metrics.jsonl rows by
    (split, step)."""
    from jaxllm.cli import main

    if one is None:
        one = tmp_path / "one"
        assert main([*args, f"train.out_dir={one}"]) == 0
    port = free_port()
    procs = []
    for i in range(2):
        join = {"JAXLLM_COORDINATOR": f"127.0.0.1:{port}", "JAXLLM_NUM_PROCESSES": "2", "JAXLLM_PROCESS_ID": str(i)}
        env = {**child_env(4), **join}
        command = [sys.executable, "-m", "jaxllm.cli", *args, f"train.out_dir={tmp_path}/two"]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=TIMEOUT_S)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "8 devices" in outs[0] or "'data': 8" in outs[0], outs[0][-2000:]
    own = own_lines(outs[1])
    assert own == [], f"process 1 must leave the talking to process 0, printed:\n{own[:20]}"
    # The goodput records hold timings, which no two runs share: the numbers compared are the rest.
    rows = [{(r["split"], r["step"]): r for r in read_metrics(run) if r["split"] != GOODPUT_SPLIT}
            for run in (one, tmp_path / "two")]  # fmt: skip
    return rows[0], rows[1]


def test_dpo_on_two_processes_equals_one(shared_sft_run, tmp_path):
    """DPO's pair batches and reference log-probs are built alike in every process, which
    keeps its own rows: the two-process losses are the one-process losses."""
    from tests.data_paths import SHARED_DATA

    args = ["dpo", str(shared_sft_run), f"posttrain.data={SHARED_DATA / PREFS}", "train.steps=3", "train.log_every=1",
            "train.eval_every=3", "train.eval_batches=1"]  # fmt: skip
    one, two = one_and_two_processes(args, tmp_path)
    assert set(one) == set(two) and {("train", 1), ("train", 3), ("val", 3), ("val_preference", 3)} <= set(one)
    for key, row in one.items():
        assert two[key]["loss"] == pytest.approx(row["loss"], rel=1e-5), key


def test_lora_sft_on_two_processes_equals_one(shared_sft_run, tmp_path):
    """LoRA SFT differentiates the adapters alone, with the frozen base sharded like any
    parameter: the two-process losses are the one-process losses, and so are the adapters."""
    from safetensors.numpy import load_file

    from tests.data_paths import SHARED_DATA

    args = ["sft", str(shared_sft_run), "model.lora.rank=4", f"posttrain.data={SHARED_DATA / PREFS}",
            "train.steps=3", "train.log_every=1", "train.eval_every=3", "train.eval_batches=1",
            "optimizer.lr=3e-3", "optimizer.warmup_steps=0"]  # fmt: skip
    one, two = one_and_two_processes(args, tmp_path)
    assert set(one) == set(two) and {("train", 1), ("train", 3), ("val", 3)} <= set(one)
    for key, row in one.items():
        assert two[key]["loss"] == pytest.approx(row["loss"], rel=1e-5), key
    a, b = (load_file(str(tmp_path / run / "adapter" / "adapter.safetensors")) for run in ("one", "two"))
    assert a.keys() == b.keys() and a
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)


# The KL is a mean of differences of log-probs of about -5, whose float32 spacing is 4.8e-7:
# 8 devices and 2 x 4 sum in different orders, so a KL near 4e-4 can differ by ~1e-7 (seen:
# 3.8910e-4 against 3.8922e-4), which rel 1e-5 of so small a value does not cover.
KL_ABS = 5e-7


def test_ppo_on_two_processes_equals_one(shared_sft_run, shared_reward_run, shared_ppo_run, tmp_path):
    """Every process samples and scores the whole rollout alike and trains on its own rows
    of each minibatch: the two-process policy and value losses are the one-process ones
    (the session's one-process PPO run, tests/fixtures.py)."""
    args = ["ppo", str(shared_sft_run), f"ppo.reward_from={shared_reward_run}", *PPO_SMALL, "train.steps=8"]
    one, two = one_and_two_processes(args, tmp_path, one=shared_ppo_run)
    assert set(one) == set(two) and {("train", 4), ("train", 8), ("val", 0), ("val", 4), ("val", 8)} <= set(one)
    for key, row in one.items():
        for name in ("policy_loss", "value_loss", "reward", "kl"):
            if name in row:
                floor = KL_ABS if name == "kl" else 1e-7
                assert two[key][name] == pytest.approx(row[name], rel=1e-5, abs=floor), (key, name)
