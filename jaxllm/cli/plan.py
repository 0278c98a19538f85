"""`jaxllm plan`: compile the train step for a target topology ahead of time and report its
memory, fit, FLOPs and MFU, on a host without that hardware."""

from __future__ import annotations

import argparse
import sys

from jaxllm.cli.args import config_args, positive
from jaxllm.config import load_config


def _plan(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    import jax  # slow import: after the config, so its errors come first

    # Planning compiles for the target's devices (fake TPU ones from libtpu, or host CPU
    # ones): no accelerator backend of this host is needed, and none is started.
    try:  # only possible before the first JAX computation (in a notebook the devices are what they are)
        jax.config.update("jax_platforms", "cpu")
        if args.topology.startswith("cpu:") and args.topology[4:].isdigit():
            jax.config.update("jax_num_cpu_devices", max(int(args.topology[4:]), 1))
    except RuntimeError:
        pass
    # Programs compiled for a described topology cannot be loaded back from jax's persistent
    # cache (reading one warns "PjRtCompiler must be constructed with a Client" and compiles
    # again): writing them only fills the cache, so planning leaves it off.
    jax.config.update("jax_enable_compilation_cache", False)
    from jaxllm.plan import get_topology, plan  # slow import (jax); after the platform is set

    topology = get_topology(args.topology, args.slices)
    print(f"# planning {args.config} for {topology.name}: compiling the train step ahead of time", file=sys.stderr)
    result = plan(cfg, topology, hbm_bytes=args.hbm_gib * 2**30 if args.hbm_gib else None,
                  estimate=not args.memory_only)
    print(result.table())
    return 0 if result.fits is not False else 3


def register(verbs: argparse._SubParsersAction) -> None:
    """Add `plan` to the `jaxllm` verbs."""
    pl = verbs.add_parser("plan", help="compile the train step for a topology ahead of time: memory, fit, FLOPs, MFU")
    config_args(pl)
    pl.add_argument("--topology", required=True, help="cpu:N, v4-N, v5p-N, v5e-N, v6e-N or GEN:AxBxC, e.g. v5p-128")
    pl.add_argument("--slices", action=positive(), default=1, help="TPU slices joined over DCN (multi-slice)")
    pl.add_argument("--hbm-gib", action=positive(float), help="memory per device to check against (default: chip's)")
    pl.add_argument("--memory-only", action="store_true",
                    help="memory and fit only: skip the time estimate's probe compiles (most of a large plan's time)")
    pl.set_defaults(func=_plan)
