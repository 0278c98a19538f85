"""Multi-host start-up: one jaxllm process per host (or per GPU), joined by JAX's own
multi-controller runtime (`jax.distributed.initialize`).

Every process runs the same program on its local devices; `jax.devices()` then lists
the devices of all processes, the mesh spans them, and a jitted step is one SPMD
program across hosts. What differs per process is only which slice of each global
batch it loads (jaxllm/data/loader.py) and who writes files: process 0 alone writes
logs, metrics and config.yaml, while orbax writes checkpoints collectively.

How a process learns its place, first match wins:
  1. explicit settings: `--coordinator HOST:PORT --num-processes N --process-id I`
     (or the environment variables JAXLLM_COORDINATOR, JAXLLM_NUM_PROCESSES,
     JAXLLM_PROCESS_ID, which the launch/ scripts set);
  2. a SLURM job step with more than one task (SLURM_NTASKS > 1), or a Cloud TPU pod
     slice with more than one worker (TPU_WORKER_HOSTNAMES lists several): JAX detects
     the coordinator, count and rank itself;
  3. otherwise one process, and nothing to initialise.
On CPU, cross-process collectives need an implementation chosen before start-up:
jaxllm picks gloo (the one that ships with jaxlib).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator, Mapping

from jaxllm.config import ConfigError

ENV_COORDINATOR = "JAXLLM_COORDINATOR"
ENV_NUM_PROCESSES = "JAXLLM_NUM_PROCESSES"
ENV_PROCESS_ID = "JAXLLM_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """How this process joins the run. `method` is "explicit", "slurm", "tpu" or "single"."""

    method: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def multi(self) -> bool:
        return self.method != "single"


def _int(value: str | int | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def detect(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    env: Mapping[str, str] | None = None,
) -> Cluster:
    """Where this process stands, from explicit arguments, then the environment."""
    env = os.environ if env is None else env
    coordinator = coordinator or env.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _int(env.get(ENV_NUM_PROCESSES), ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _int(env.get(ENV_PROCESS_ID), ENV_PROCESS_ID)
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    if any(v is not None for v in given.values()):
        missing = [k for k, v in given.items() if v is None]
        if missing:
            raise ConfigError(
                f"multi-process settings need coordinator, num_processes and process_id together; "
                f"{', '.join(missing)} missing (flags --coordinator/--num-processes/--process-id or "
                f"{ENV_COORDINATOR}/{ENV_NUM_PROCESSES}/{ENV_PROCESS_ID})"
            )
        if ":" not in coordinator:
            raise ConfigError(f"coordinator={coordinator!r} needs a port: HOST:PORT, e.g. 10.0.0.2:12355")
        if num_processes < 1:
            raise ConfigError(f"num_processes={num_processes} must be at least 1")
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"process_id={process_id} is outside [0, {num_processes}); ranks count from 0")
        if num_processes == 1:
            return Cluster("single")
        return Cluster("explicit", coordinator, num_processes, process_id)
    if (_int(env.get("SLURM_NTASKS"), "SLURM_NTASKS") or 1) > 1 and env.get("SLURM_JOB_ID"):
        return Cluster("slurm")
    hosts = [h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(hosts) > 1:
        return Cluster("tpu")
    return Cluster("single")


def initialize(cluster: Cluster, timeout_s: int = 300) -> Cluster:
    """Join the multi-process runtime (a no-op for one process). Call before any JAX work."""
    if not cluster.multi:
        return cluster
    import jax  # slow import: detect() and the CLI parse flags without it

    # Only the CPU backend reads this; on GPU/TPU hosts it changes nothing.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if cluster.method == "explicit":
        jax.distributed.initialize(
            coordinator_address=cluster.coordinator,
            num_processes=cluster.num_processes,
            process_id=cluster.process_id,
            initialization_timeout=timeout_s,
        )
    else:  # SLURM and TPU pods: JAX reads the cluster's own environment
        jax.distributed.initialize(initialization_timeout=timeout_s)
    return Cluster(cluster.method, cluster.coordinator, jax.process_count(), jax.process_index())


def is_primary() -> bool:
    """True in the process that writes logs, metrics and config files (process 0)."""
    import jax  # slow import: detect() and the CLI parse flags without it

    return jax.process_index() == 0


def shutdown() -> None:
    """Leave the runtime cleanly (every process, also after a failure), if it was joined."""
    import jax  # slow import: detect() and the CLI parse flags without it

    if jax.process_count() > 1:
        jax.distributed.shutdown()


@contextlib.contextmanager
def joined(cluster: Cluster | None = None) -> Iterator[Cluster]:
    """This process's part of a (possibly) multi-process run, for a library entry point
    (`jaxllm.posttrain`'s sft, dpo, reward, ppo): join the run `cluster` (default: what
    the environment says, `detect()`) unless this process joined one already (the CLI's
    `--coordinator` flags, or the caller), and leave it at the end only if joined here.
    Enter it before any JAX work: a JAX backend started alone cannot join afterwards."""
    import jax  # slow import, kept off the CLI's start-up path like the rest of this module

    if jax.distributed.is_initialized():
        yield Cluster("explicit", None, jax.process_count(), jax.process_index())
        return
    cluster = initialize(cluster or detect())
    try:
        yield cluster
    finally:
        if cluster.multi:
            shutdown()
