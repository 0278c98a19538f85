"""`jaxllm plan` over the Llama 8B and 70B presets, several layouts and TPU topologies:
per-chip memory, fit, and the compiler's step-time estimate with the MFU it implies.

    python benchmarks/plan_table.py            # all rows (~15 min on a 2-core CPU)
    python benchmarks/plan_table.py --only 8b  # rerun the 8B rows, keep the others' last figures

Needs libtpu (pip install -e ".[tpu]"); no TPU: the chips are libtpu's descriptions.
Writes the `plan` section of BENCHMARKS.md; docs/scaling.md quotes it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section  # noqa: E402

import jaxllm  # noqa: E402
from jaxllm.plan import GiB, get_topology, plan  # noqa: E402

# (preset, topology, layout name, overrides); seq 8192 as in the presets
ROWS = [
    ("llama-8b", "v5p-128", "FSDP 64", ["mesh.data=1", "mesh.fsdp=64", "train.batch_size=64"]),
    ("llama-8b", "v5p-128", "FSDP 16 x TP 4", ["mesh.data=1", "mesh.fsdp=16", "mesh.tensor=4", "train.batch_size=64"]),
    ("llama-8b", "v5p-128", "FSDP 8 x TP 4 x PP 2",
     ["mesh.data=1", "mesh.fsdp=8", "mesh.tensor=4", "mesh.pipeline=2", "train.batch_size=64",
      "train.microbatches=8"]),
    ("llama-8b", "v5e-16", "FSDP 16", ["mesh.data=1", "mesh.fsdp=16", "train.batch_size=16"]),
    ("llama-70b", "v5p-256", "FSDP 128", ["mesh.data=1", "mesh.fsdp=128", "train.batch_size=128"]),
    ("llama-70b", "v5p-256", "FSDP 32 x TP 4", ["mesh.data=1", "mesh.fsdp=32", "mesh.tensor=4",
                                                "train.batch_size=128"]),
    ("llama-70b", "v5p-256", "FSDP 16 x TP 4 x PP 2",
     ["mesh.data=1", "mesh.fsdp=16", "mesh.tensor=4", "mesh.pipeline=2", "train.batch_size=128",
      "train.microbatches=8"]),
    ("llama-70b", "v5e-16", "FSDP 16", ["mesh.data=1", "mesh.fsdp=16", "train.batch_size=16"]),
]  # fmt: skip


def _previous_rows() -> dict[tuple[str, str, str], str]:
    """The rows of the last run, by (preset, topology, layout): kept when not rerun."""
    from _report import BENCHMARKS

    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else ""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| llama") and len(cells) > 3:
            rows[(cells[0], cells[1].split(" ")[0], cells[2])] = line
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="rerun only rows whose preset or topology contains this, e.g. 8b")
    args = ap.parse_args()
    done = _previous_rows()
    lines = [
        "## Ahead-of-time plans for TPU slices (`python benchmarks/plan_table.py`)",
        "",
        "`jaxllm plan PRESET --topology T OVERRIDES`: the real train step compiled for libtpu's description of "
        "the slice, on this CPU-only machine. Memory per chip from `memory_analysis()` (arguments + temporaries "
        "+ unaliased outputs); FLOPs and step time from `cost_analysis()` of unrolled 1- and 2-layer probes, "
        "extrapolated to the full depth, plus (\"with kernels\") the attention kernels' analytic causal FLOPs at "
        "peak, which `cost_analysis()` does not count; MFU = analytic model FLOPs (6N + attention) / (estimated "
        "time x chips x peak bf16). Sequence 8192, bf16 compute, remat `save_dots_no_batch` (the presets).",
        "",
        "| model | slice | layout | batch (seqs) | memory / chip | fits | compiler / analytic FLOPs | "
        "est. step | est. MFU | plan time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for preset, topo, layout, overrides in ROWS:
        if args.only and args.only not in preset and args.only not in topo:
            if (preset, topo, layout) in done:
                lines.append(done[(preset, topo, layout)])
            continue
        t = time.perf_counter()
        cfg = jaxllm.load_config(preset, overrides)
        result = plan(cfg, get_topology(topo))
        took = time.perf_counter() - t
        per_device = result.analytic_flops / result.devices
        if result.fits:
            fits = f"yes ({(result.hbm_bytes - result.total_bytes) / GiB:.1f} GiB spare)"
        else:
            fits = f"no: short by {(result.total_bytes - result.hbm_bytes) / GiB:.1f} GiB"
        row = [
            preset, f"{topo} ({result.devices} x {result.hbm_bytes / GiB:.0f} GiB)", layout,
            str(cfg.train.batch_size), f"{result.total_bytes / GiB:.1f} GiB", fits,
            f"{result.compiler_flops / per_device:.2f}x" if result.compiler_flops else "n/a",
            (f"{result.step_seconds:.2f} s" + (" (with kernels)" if result.kernel_calls else " (compiler)"))
            if result.step_seconds else "n/a",
            f"{result.mfu:.0%}" if result.mfu is not None else "n/a", f"{took:.0f} s",
        ]  # fmt: skip
        print(" | ".join(row), flush=True)
        lines.append("| " + " | ".join(row) + " |")
    write_section("plan", "\n".join(lines))
    print("wrote the plan section of BENCHMARKS.md")


if __name__ == "__main__":
    main()
