"""launch/ scripts: the commands they would run and the environments they derive, checked
with stand-in `gcloud`-free dry runs and fake `scontrol` / `srun` / `jaxllm` programs.
Nothing leaves this machine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

LAUNCH = Path(__file__).resolve().parents[1] / "launch"


def sh(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LAUNCH / script), *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def fake_bin(tmp_path: Path, programs: dict[str, str]) -> str:
    """A PATH whose first directory holds the given shell programs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in programs.items():
        (bin_dir / name).write_text("#!/usr/bin/env bash\n" + body)
        (bin_dir / name).chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_tpu_pod_dry_run_prints_every_gcloud_step():
    r = sh("tpu_pod.sh", "--name", "pod1", "--zone", "us-east5-a", "--type", "v5p-128", "--create", "--dry-run",
           "--", "llama-8b", "mesh.fsdp=-1", "train.out_dir=gs://bucket/runs/x")  # fmt: skip
    assert r.returncode == 0, r.stderr
    create, archive, copy, install, start, tail = [line.strip() for line in r.stdout.strip().splitlines()]
    assert create.startswith("gcloud compute tpus tpu-vm create pod1 --zone us-east5-a --accelerator-type v5p-128")
    assert archive.startswith("git -C ") and "archive" in archive and archive.endswith("HEAD")
    assert "tpu-vm scp" in copy and "pod1:jaxllm-src.tar.gz" in copy and "--worker=all" in copy
    assert "tpu-vm ssh pod1 --zone us-east5-a --worker=all" in install and "jax\\[tpu\\]" in install
    assert "--worker=all" in start
    assert "jaxllm\\ train\\ llama-8b\\ mesh.fsdp=-1\\ train.out_dir=gs://bucket/runs/x" in start
    assert "--worker=0" in tail and "tail\\ -F" in tail


def test_tpu_pod_from_a_repo_and_errors():
    r = sh("tpu_pod.sh", "--name", "p", "--zone", "z", "--repo", "https://example.org/j.git", "--ref", "v1",
           "--project", "proj", "--dry-run", "--", "gpt2-124m")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "create" not in r.stdout and "scp" not in r.stdout  # reuse the slice; nothing copied
    assert "git\\ clone\\ https://example.org/j.git" in r.stdout and "--project proj" in r.stdout
    missing = sh("tpu_pod.sh", "--zone", "z", "--dry-run", "--", "gpt2-124m")
    assert missing.returncode == 2 and "--name is required" in missing.stderr
    no_config = sh("tpu_pod.sh", "--name", "p", "--zone", "z", "--dry-run")
    assert no_config.returncode == 2 and "give the config" in no_config.stderr


def test_slurm_script_derives_coordinator_count_and_rank_per_task(tmp_path):
    path = fake_bin(tmp_path, {
        # scontrol expands the node list; srun runs its command once per task, as SLURM would
        "scontrol": '[ "$1 $2" = "show hostnames" ] && printf "gpu-a01\\ngpu-a02\\n"\n',
        "srun": 'for i in $(seq 0 $((SLURM_NTASKS - 1))); do\n'
                '  SLURM_PROCID=$i SLURM_LOCALID=$((i % 4)) "${@:2}" || exit 1\ndone\n',
        "jaxllm": 'echo "task $JAXLLM_PROCESS_ID/$JAXLLM_NUM_PROCESSES at $JAXLLM_COORDINATOR'
                  ' gpu=${CUDA_VISIBLE_DEVICES:-all} args=$*"\n',
    })  # fmt: skip
    env = {"PATH": path, "SLURM_JOB_NODELIST": "gpu-a[01-02]", "SLURM_NTASKS": "8", "SLURM_JOB_ID": "42"}
    r = sh("slurm_gpu.sbatch", "gpt2-124m", "train.out_dir=/shared/run one", env=env)
    assert r.returncode == 0, r.stderr
    tasks = [line for line in r.stdout.splitlines() if line.startswith("task ")]
    assert tasks == [
        f"task {i}/8 at gpu-a01:12355 gpu={i % 4} args=train gpt2-124m train.out_dir=/shared/run one" for i in range(8)
    ]
    per_host = sh("slurm_gpu.sbatch", "gpt2-124m", env={**env, "JAXLLM_PER_HOST": "1", "SLURM_NTASKS": "2",
                                                        "JAXLLM_PORT": "4000"})  # fmt: skip
    assert "task 1/2 at gpu-a01:4000 gpu=all" in per_host.stdout
    unset = sh("slurm_gpu.sbatch", "gpt2-124m", env={"PATH": path, "SLURM_JOB_NODELIST": ""})
    assert unset.returncode == 2 and "SLURM_JOB_NODELIST is not set" in unset.stderr


def test_local_multiprocess_runs_every_rank_and_fails_as_one():
    code = "import os; e = os.environ; print(e['JAXLLM_PROCESS_ID'], e['JAXLLM_COORDINATOR'], e['XLA_FLAGS'])"
    r = sh("local_multiprocess.sh", "--processes", "3", "--devices-each", "2", "--", sys.executable, "-c", code)
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.strip().splitlines())
    assert [line.split()[:2] for line in lines] == [["[0]", "0"], ["[1]", "1"], ["[2]", "2"]]
    assert len({line.split()[2] for line in lines}) == 1 and lines[0].split()[2].startswith("127.0.0.1:")
    assert all(line.endswith("--xla_force_host_platform_device_count=2") for line in lines)
    fail = "import os, sys; sys.exit(int(os.environ['JAXLLM_PROCESS_ID']) == 1)"
    assert sh("local_multiprocess.sh", "--", sys.executable, "-c", fail).returncode == 1
    dry = sh("local_multiprocess.sh", "--dry-run", "--port", "5555", "--", "jaxllm", "train", "x")
    assert dry.stdout.count("JAXLLM_COORDINATOR=127.0.0.1:5555") == 2
