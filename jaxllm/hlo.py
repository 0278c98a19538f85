"""Reading a compiled program's text (`compiled.as_text()`): its kernels and collectives.

`jaxllm plan` reports both, because neither shows in the compiler's other figures: a
Pallas kernel's work is missing from `cost_analysis()`, and how the partitioner moved
the data (all-gathers, reduce-scatters, all-reduces) is visible only in the program.
A loop body's instructions are counted once, as the text holds them.
"""

from __future__ import annotations

import collections
import re

KERNEL_CALL = 'custom_call_target="tpu_custom_call"'  # how a Pallas TPU kernel appears in compiled HLO

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT )?%\S+ = .*?\b(" + "|".join(COLLECTIVES) + r")(?:-start)?\(([^)]*)\)", re.M
)
# The TPU compiler may implement an all-gather as an all-reduce of zero-padded shards (each
# device writes its shard into zeros with a dynamic-update-slice; the sum is the gathered
# array): twice an all-gather's traffic. libtpu does so for groups spanning all three axes
# of a v5p torus (docs/performance.md, "FSDP collectives").
PADDED_GATHER = "all-reduce of padded shards"


def kernel_calls(text: str) -> int:
    """Pallas TPU kernels (custom calls) in the program."""
    return text.count(KERNEL_CALL)


def collectives(text: str) -> dict[str, int]:
    """How many of each collective the program holds, an all-reduce whose operand is a
    dynamic-update-slice counted as PADDED_GATHER (a gather in disguise), not an all-reduce."""
    counts: collections.Counter[str] = collections.Counter()
    for op, operands in _INSTRUCTION.findall(text):
        padded = op == "all-reduce" and "dynamic-update-slice" in operands
        counts[PADDED_GATHER if padded else op] += 1
    return dict(counts)


__all__ = ["COLLECTIVES", "KERNEL_CALL", "PADDED_GATHER", "collectives", "kernel_calls"]
