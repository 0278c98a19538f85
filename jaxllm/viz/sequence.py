"""Who attends what under context parallelism: the causal attention matrix of one sequence,
each query row coloured by the `context` device that holds it (`jaxllm viz mesh --sequence`).

With `mesh.context = C` every sequence is split along its length over C devices
(jaxllm/model/context.py). Causal attention is a lower triangle, so a device holding a
late stretch of the sequence attends to many more keys than one holding an early stretch.
The picture draws the triangle twice: with the contiguous split (device i holds the i-th
C-th of the sequence) and with the balanced one jaxllm uses by default
(`model.context_load_balance`: 2C chunks, device i holding chunks i and 2C - 1 - i), and
writes each device's share of the (query, key) pairs beside its rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxllm.config import Config
from jaxllm.errors import ConfigError
from jaxllm.model.context import layout_order
from jaxllm.parallel.mesh import AXES, mesh_shape
from jaxllm.viz._figure import plt, save


def owners(length: int, shards: int, balanced: bool) -> np.ndarray:
    """(length,) the context device holding each natural position."""
    slot = np.argsort(layout_order(length, shards, balanced))  # layout slot of each natural position
    return slot // (length // shards)


def causal_work(length: int, shards: int, balanced: bool) -> np.ndarray:
    """(shards,) unmasked (query, key) pairs each device's queries attend to, causally."""
    return np.bincount(owners(length, shards, balanced), weights=np.arange(1, length + 1), minlength=shards)


def plot_sequence(cfg: Config, n_devices: int, out: str | Path, length: int = 64) -> Path:
    """The picture described in the module docstring, for the mesh in `cfg` on `n_devices`."""
    sizes = dict(zip(AXES, mesh_shape(cfg.mesh, n_devices), strict=True))
    C = sizes["context"]
    if C < 2:
        raise ConfigError(f"mesh.context={C}: --sequence draws a sequence split over context devices; "
                          "set mesh.context=2 or more")  # fmt: skip
    length = max(length // (2 * C), 1) * 2 * C
    cmap = plt.get_cmap("tab10")
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.2))
    for ax, balanced in zip(axes, (False, True), strict=True):
        own = owners(length, C, balanced)
        image = np.ones((length, length, 3))
        for t in range(length):
            image[t, : t + 1] = cmap(own[t] % 10)[:3]  # row t attends keys 0..t
        ax.imshow(image, interpolation="nearest")
        work = causal_work(length, C, balanced)
        for device in range(C):
            rows = np.flatnonzero(own == device)
            rows = rows[: len(rows) // 2] if balanced else rows  # balanced: labelled at its early chunk
            ax.text(length + 1, rows.mean(), f"device {device}: {work[device] / work.sum():.0%}",
                    va="center", fontsize=8, color=cmap(device % 10))  # fmt: skip
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        name = "balanced: device i holds chunks i and 2C-1-i" if balanced else "contiguous: device i holds part i"
        ax.set_title(f"{name}\nshare of the causal work: max/min {work.max() / work.min():.1f}x", fontsize=9)
    others = " x ".join(f"{a} {s}" for a, s in sizes.items() if s > 1 and a != "context")
    fig.suptitle(f"one sequence of {length} positions over context={C}" + (f" ({others} besides)" if others else "")
                 + ": row colour = the device holding that query", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return save(fig, out)
