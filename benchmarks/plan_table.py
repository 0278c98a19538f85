"""`jaxllm plan` over the Llama 8B and 70B presets and two mixtures of experts (Mixtral-8x7B,
Qwen3-30B-A3B), several layouts and TPU topologies:
per-chip memory, fit, and the compiler's step-time estimate with the MFU it implies.

    python benchmarks/plan_table.py                      # all rows (hours on a 2-core CPU)
    python benchmarks/plan_table.py --only 8b            # rerun rows matching a regex, keep the others
    python benchmarks/plan_table.py --only 70b --memory-only  # memory and fit only: no time probes

Each row is written to BENCHMARKS.md as soon as it is planned (the others as the file has
them then), so an interrupted run keeps what it finished and two runs over disjoint rows
can go side by side.

Needs libtpu (pip install -e ".[tpu]"); no TPU: the chips are libtpu's descriptions.
Writes the `plan` section of BENCHMARKS.md; docs/scaling.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section  # noqa: E402

import jaxllm  # noqa: E402
from jaxllm.plan import GiB, get_topology, plan  # noqa: E402

# (preset, topology, layout name, overrides); seq 8192 and remat full as in the presets unless the
# layout says otherwise
ROWS = [
    ("llama-8b", "v5p-128", "FSDP 64", ["mesh.data=1", "mesh.fsdp=64", "train.batch_size=64"]),
    ("llama-8b", "v5p-128", "FSDP 64, remat minimal",
     ["mesh.data=1", "mesh.fsdp=64", "train.batch_size=64", "model.remat=minimal"]),
    ("llama-8b", "v5p-128", "FSDP 16 x TP 4", ["mesh.data=1", "mesh.fsdp=16", "mesh.tensor=4", "train.batch_size=64"]),
    ("llama-8b", "v5p-128", "FSDP 8 x TP 4 x PP 2",
     ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=4", "mesh.pipeline=2", "train.batch_size=64",
      "train.microbatches=8"]),
    ("llama-8b", "v5p-128", "FSDP 64, seq 32768",
     ["mesh.data=1", "mesh.fsdp=64", "train.batch_size=64", "data.seq_len=32768"]),
    ("llama-8b", "v5p-128", "FSDP 16 x context 4, seq 32768",
     ["mesh.data=1", "mesh.fsdp=16", "mesh.context=4", "train.batch_size=16", "data.seq_len=32768"]),
    ("llama-8b", "v5p-128", "FSDP 16 x context 4, seq 131072",
     ["mesh.data=1", "mesh.fsdp=16", "mesh.context=4", "train.batch_size=16", "data.seq_len=131072"]),
    ("llama-8b", "v5p-256", "FSDP 128, seq 131072",
     ["mesh.data=1", "mesh.fsdp=128", "train.batch_size=128", "data.seq_len=131072"]),
    ("llama-8b", "v5p-256", "FSDP 16 x context 8, seq 131072",
     ["mesh.data=1", "mesh.fsdp=16", "mesh.context=8", "train.batch_size=16", "data.seq_len=131072"]),
    ("llama-8b", "v5p-256", "FSDP 128, seq 262144",
     ["mesh.data=1", "mesh.fsdp=128", "train.batch_size=128", "data.seq_len=262144", "model.max_seq_len=262144"]),
    ("llama-8b", "v5p-256", "FSDP 16 x context 8, seq 262144",
     ["mesh.data=1", "mesh.fsdp=16", "mesh.context=8", "train.batch_size=16", "data.seq_len=262144",
      "model.max_seq_len=262144"]),
    ("llama-8b", "v5e-16", "FSDP 16", ["mesh.data=1", "mesh.fsdp=16", "train.batch_size=16"]),
    ("llama-70b", "v5p-256", "FSDP 128", ["mesh.data=1", "mesh.fsdp=128", "train.batch_size=128"]),
    ("llama-70b", "v5p-256", "FSDP 32 x TP 4", ["mesh.data=1", "mesh.fsdp=32", "mesh.tensor=4",
                                                "train.batch_size=128"]),
    ("llama-70b", "v5p-256", "FSDP 16 x TP 4 x PP 2",
     ["mesh.data=1", "mesh.fsdp=16", "mesh.tensor=4", "mesh.pipeline=2", "train.batch_size=128",
      "train.microbatches=8"]),
    ("llama-70b", "v5e-16", "FSDP 16", ["mesh.data=1", "mesh.fsdp=16", "train.batch_size=16"]),
    ("mixtral-8x7b", "v5p-128", "FSDP 8 x expert 8",
     ["mesh.data=1", "mesh.fsdp=8", "mesh.expert=8", "train.batch_size=64"]),
    ("qwen3-30b-a3b", "v5p-128", "FSDP 8 x expert 8, seq 4096",
     ["mesh.data=1", "mesh.fsdp=8", "mesh.expert=8", "train.batch_size=64", "data.seq_len=4096"]),
]  # fmt: skip
HEAD = [
    "## Ahead-of-time plans for TPU slices (`python benchmarks/plan_table.py`)",
    "",
    "`jaxllm plan PRESET --topology T OVERRIDES`: the real train step compiled for libtpu's description of "
    "the slice, on this CPU-only machine. Memory per chip from `memory_analysis()` (arguments + temporaries "
    "+ unaliased outputs: exact for that compiler); FLOPs and step time from `cost_analysis()` of unrolled "
    "1- and 2-layer probes, extrapolated to the full depth (estimates), plus (\"with kernels\") the attention "
    "kernels' analytic causal FLOPs at peak, which `cost_analysis()` does not count; \"not estimated\": "
    "planned with `--memory-only`. MFU = analytic model FLOPs (6N + 12 L T H D per token, PaLM's count, "
    "whose attention term is the whole T x T product) / (estimated time x chips x peak bf16); in brackets, "
    "the same counting only the causal half of attention, the work the kernels do. The defaults: sequence "
    "8192, bf16 compute, the splash attention kernel, the loss in chunks of 1024 positions, remat `full` (the "
    "presets), unless the layout says otherwise. Plan time: wall time "
    "on the 2-core machine, which may have been shared with other plans. The mixtures of experts count 6 x "
    "their active parameters (k of the experts, and the router); their \"n/a\" step estimates: the compiler's "
    "cost analysis of those programs gives no `optimal_seconds`, and its FLOPs (8.2x and 20x the analytic "
    "count) include the grouped matmuls over the expert-parallel exchange buffers, which are sized for the "
    "worst case (`mesh.expert` x the routed rows; docs/training.md).",
    "",
    "| model | slice | layout | batch (seqs) | memory / chip | fits | compiler / analytic FLOPs | "
    "est. step | est. MFU | plan time |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]


def _key(preset: str, topo: str, layout: str) -> str:
    return f"{preset} {topo} {layout}"


def _written_rows() -> dict[str, str]:
    """The rows BENCHMARKS.md holds now, by "preset topology layout"."""
    from _report import BENCHMARKS

    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else ""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| llama") and len(cells) > 3:
            rows[_key(cells[0], cells[1].split(" ")[0], cells[2])] = line
    return rows


def _write(new: dict[str, str]) -> None:
    """The section with ROWS' order: this run's rows, else the file's current ones."""
    rows = {**_written_rows(), **new}
    lines = [rows[k] for k in (_key(*r[:3]) for r in ROWS) if k in rows]
    write_section("plan", "\n".join([*HEAD, *lines]))


def _row(preset: str, topo: str, layout: str, overrides: list[str], estimate: bool) -> str:
    t = time.perf_counter()
    cfg = jaxllm.load_config(preset, overrides)
    result = plan(cfg, get_topology(topo), estimate=estimate)
    took = time.perf_counter() - t
    per_device = result.analytic_flops / result.devices
    if result.fits:
        fits = f"yes ({(result.hbm_bytes - result.total_bytes) / GiB:.1f} GiB spare)"
    else:
        fits = f"no: short by {(result.total_bytes - result.hbm_bytes) / GiB:.1f} GiB"
    if result.step_seconds:
        step = f"{result.step_seconds:.2f} s" + (" (with kernels)" if result.kernel_calls else " (compiler)")
    else:
        step = "n/a" if estimate else "not estimated"
    row = [
        preset, f"{topo} ({result.devices} x {result.hbm_bytes / GiB:.0f} GiB)", layout,
        str(cfg.train.batch_size), f"{result.total_bytes / GiB:.1f} GiB", fits,
        f"{result.compiler_flops / per_device:.2f}x" if result.compiler_flops else "n/a", step,
        f"{result.mfu:.0%} ({result.causal_mfu:.0%})" if result.mfu is not None
        else ("n/a" if estimate else "not estimated"), f"{took:.0f} s",
    ]  # fmt: skip
    return "| " + " | ".join(row) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help='rerun rows whose "preset topology layout" matches this regex')
    ap.add_argument("--memory-only", action="store_true", help="skip the time probes (jaxllm plan --memory-only)")
    args = ap.parse_args()
    done: dict[str, str] = {}
    for preset, topo, layout, overrides in ROWS:
        key = _key(preset, topo, layout)
        if args.only and not re.search(args.only, key):
            continue
        done[key] = _row(preset, topo, layout, overrides, not args.memory_only)
        print(done[key], flush=True)
        _write(done)
    print(f"wrote {len(done)} rows of the plan section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
