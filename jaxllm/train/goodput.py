"""Goodput: where a run's wall time went, by the host loop's clock.

Why: on a pod, a run that trains 60% of the time costs as much as one that trains 95% of
it; the lost share (badput) hides in compiles, checkpoint saves, a data pipeline that
cannot keep up, evaluation and restarts. Tokens/s says how fast a step is, not how much of
the wall time steps got. So the trainer times its existing phases with `time.perf_counter`
(a few calls per step, nothing on the device) and writes the running totals into
metrics.jsonl as a "goodput" record next to each train record, and once more when the run
ends:

    startup_s     the run's start to its first step: mesh and layout, restoring a checkpoint
                  (a restart) or initialising the state, opening the metrics sinks
    compile_s     train-step calls that compiled (the first step, and any recompile)
    step_s        the loop waiting for the device to finish steps (see below)
    data_wait_s   the loop waiting for the next batch: reading, packing, placing it
    checkpoint_s  the blocking part of checkpoint saves (orbax copies the state to host
                  memory, then writes in the background), and the final wait for the writes
    eval_s        evaluation, its compile included
    other_s       the rest: logging, signal checks, the loop's own work
    wall_s        the wall time since the run started; the seven fields above add up to it
    goodput       step_s / wall_s

How step time is measured under JAX's asynchronous dispatch: calling the jitted step
returns at once (unless it compiles), and the device runs while the host reads the next
batch. The loop blocks only where it already did: when it fetches a step's metrics
(`jax.device_get`, one step late). That wait is step time; a slow input pipeline shows up as
data_wait_s instead, because then the device finishes first and the fetch returns at once.
Each category is timed around its phase and other_s is what no phase claimed, so a large
other_s means a phase is missing here, not that the sum is off.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

CATEGORIES = ("startup", "compile", "step", "data_wait", "checkpoint", "eval")
GOODPUT_SPLIT = "goodput"  # the metrics.jsonl split of the goodput records


class Goodput:
    """Cumulative seconds per category since `start` (a time.perf_counter() reading)."""

    def __init__(self, start: float | None = None) -> None:
        self.start = time.perf_counter() if start is None else start
        self.seconds = dict.fromkeys(CATEGORIES, 0.0)

    def add(self, category: str, seconds: float) -> None:
        """Count `seconds` (measured by the caller) to `category`."""
        self.seconds[category] += seconds

    @contextlib.contextmanager
    def timed(self, category: str) -> Iterator[None]:
        """Count the time spent inside the `with` block to `category`."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[category] += time.perf_counter() - t0

    def values(self) -> dict[str, float]:
        """The goodput record: `<category>_s`, other_s, wall_s and goodput (see the module doc)."""
        wall = max(time.perf_counter() - self.start, 1e-9)
        out = {f"{name}_s": s for name, s in self.seconds.items()}
        out["other_s"] = wall - sum(self.seconds.values())
        out["wall_s"] = wall
        out["goodput"] = self.seconds["step"] / wall
        return out


__all__ = ["CATEGORIES", "GOODPUT_SPLIT", "Goodput"]
