"""Peak FLOP/s per device kind, for MFU = achieved model FLOP/s / peak.

Accelerator entries are the vendors' dense bf16 figures (no sparsity). CPUs have no
meaningful published figure, so the CPU entry is *measured*: the best of a few float32
matmuls on this machine, once per process.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp

PEAK_BF16_FLOPS = {  # substring of jax's device_kind -> FLOP/s per device
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L4": 121e12,
    "TPU v6": 918e12,
    "TPU v5p": 459e12,
    "TPU v5": 197e12,  # v5e / "TPU v5 lite"
    "TPU v4": 275e12,
}


@functools.lru_cache(maxsize=1)
def measured_cpu_flops(n: int = 1024, repeats: int = 5) -> float:
    """Best float32 matmul FLOP/s of one CPU device (~0.1 s of work)."""
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    matmul(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        matmul(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def peak_flops(device: jax.Device) -> float | None:
    """Peak FLOP/s of one device, or None if its kind is unknown (MFU is then not logged)."""
    if device.platform == "cpu":
        return measured_cpu_flops()
    for kind, flops in PEAK_BF16_FLOPS.items():
        if kind.lower() in device.device_kind.lower():
            return flops
    return None
