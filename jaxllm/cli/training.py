"""`jaxllm train` and `jaxllm quickstart`, and the flags that let a verb join a multi-process
run (shared with the post-training verbs)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from jaxllm.cli.args import config_args, non_negative, positive
from jaxllm.config import load_config


def multiprocess_args(p: argparse.ArgumentParser) -> None:
    """Flags that join a multi-process run (default: SLURM / TPU-pod detection, else one process)."""
    p.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (env JAXLLM_COORDINATOR)")
    p.add_argument("--num-processes", action=positive(), help="processes in the run (env JAXLLM_NUM_PROCESSES)")
    p.add_argument("--process-id", action=non_negative(), help="this process's rank, from 0 (env JAXLLM_PROCESS_ID)")


def joined(args: argparse.Namespace, work: Callable[[], int], prepare: Callable[[], object] | None = None) -> int:
    """Run `work()` as this process's part of a (possibly) multi-process run: join it,
    let process 0 alone run `prepare()` while the others wait, leave it cleanly."""
    from jaxllm.parallel import distributed  # slow import (jax)

    cluster = distributed.initialize(distributed.detect(args.coordinator, args.num_processes, args.process_id))
    try:
        if prepare is not None:
            if distributed.is_primary():
                prepare()
            if cluster.multi:
                from jax.experimental import multihost_utils  # slow import (jax)

                multihost_utils.sync_global_devices("jaxllm: prepared")
        return work()
    finally:
        distributed.shutdown()


def reset_arg(p: argparse.ArgumentParser) -> None:
    """--reset: archive what the run directory holds and start over."""
    p.add_argument("--reset", action="store_true",
                   help="start over: first move what train.out_dir holds into its archive/")  # fmt: skip


def _train(args: argparse.Namespace) -> int:
    from jaxllm.data.ready import ensure_data  # slow import (the data layer)
    from jaxllm.train.trainer import train_main  # slow import (jax, optax, orbax)

    cfg = load_config(args.config, args.overrides)  # config errors first, before joining anything
    return joined(args, lambda: train_main(cfg, reset=args.reset), prepare=lambda: ensure_data(cfg))


def _quickstart(args: argparse.Namespace) -> None:
    from jaxllm.quickstart import quickstart  # slow import (trains and samples)

    quickstart(args.out, args.steps, args.from_dir)


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `train` and `quickstart` to the `jaxllm` verbs."""
    train = verbs.add_parser("train", help="train (or resume) a model; prepares missing data first")
    config_args(train)
    multiprocess_args(train)
    reset_arg(train)
    train.set_defaults(func=_train)
    quick = verbs.add_parser("quickstart", help="fetch, tokenize, prepare, train and sample tiny Shakespeare")
    quick.add_argument("--out", default="runs/quickstart", help="where everything goes")
    quick.add_argument("--steps", action=positive(), default=None, help="train steps (default: the recipe's 2000)")
    quick.add_argument("--from", dest="from_dir", default=None, help="a local folder holding tinyshakespeare.txt")
    quick.set_defaults(func=_quickstart)
