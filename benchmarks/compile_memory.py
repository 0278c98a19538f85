"""Compile time against depth, and step memory against the remat policy, from the compiler.

Both come from compiling the real train step ahead of time (`jaxllm.plan.compile_train_step`:
abstract inputs, nothing allocated, nothing run), so they are exact for this backend and
cheap enough to measure for GPT-2 124M on a laptop.

1. Compile time (lower + XLA compile, the "time to first step" minus one step) for
   4, 12 and 48 layers of GPT-2 124M's width, with the layers as one `scan` (jaxllm's
   default) and fully unrolled (`model.scan_unroll=true`). The scan compiles one block
   whatever the depth; unrolling compiles every block.
2. Peak memory of one device for each `model.remat` policy, from
   `compiled.memory_analysis()` (arguments, outputs, temporaries). (XLA's cost analysis
   counts a loop body once, so it cannot show the recomputation of a scanned stack; the
   price in time is in the train_step table's remat variants.)

    python -m benchmarks compile_memory          # ~5 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax

import jaxllm
from jaxllm.plan import compile_train_step

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import git_revision, write_section  # noqa: E402


def compile_seconds(cfg) -> float:
    t = time.perf_counter()
    compile_train_step(cfg, jax.devices()[:1])
    return time.perf_counter() - t


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="gpt2-124m")
    ap.add_argument("--depths", type=int, nargs="+", default=[4, 12, 48])
    ap.add_argument("--batch", type=int, default=8, help="sequences per step for the memory table")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    base = [f"train.batch_size={args.batch}", "mesh.data=1"]

    # One throwaway compile first, so the first measured one does not pay for jax's start-up.
    compile_seconds(jaxllm.load_config(args.preset, [*base, "model.num_layers=1"]))
    compile_rows = []
    for depth in args.depths:
        row = {"depth": depth}
        for label, unroll in (("scan", "false"), ("unrolled", "true")):
            cfg = jaxllm.load_config(args.preset, [*base, f"model.num_layers={depth}", f"model.scan_unroll={unroll}"])
            row[label] = compile_seconds(cfg)
            print(f"compile: {depth} layers, {label}: {row[label]:.1f} s", flush=True)
        compile_rows.append(row)

    memory_rows = []
    for policy in ("none", "save_dots", "save_dots_no_batch", "full"):
        cfg = jaxllm.load_config(args.preset, [*base, f"model.remat={policy}"])
        _, compiled = compile_train_step(cfg, jax.devices()[:1])
        mem = compiled.memory_analysis()
        row = {
            "policy": policy,
            "args": mem.argument_size_in_bytes,
            "out": mem.output_size_in_bytes,
            "temp": mem.temp_size_in_bytes,
            "alias": mem.alias_size_in_bytes,
        }
        row["peak"] = row["args"] + row["out"] - row["alias"] + row["temp"]
        memory_rows.append(row)
        print(f"memory: remat={policy}: temp {gib(row['temp'])} GiB, peak {gib(row['peak'])} GiB", flush=True)

    cfg = jaxllm.load_config(args.preset, base)
    dev = jax.devices()[0]
    T = cfg.data.seq_len
    none_row = memory_rows[0]
    lines = [
        "## Compile time vs depth, memory vs remat (`python -m benchmarks compile_memory`)",
        "",
        f"Device `{dev.device_kind}` ({dev.platform}), jax {jax.__version__}, git {git_revision()}. "
        f"{args.preset} width (d_model {cfg.model.d_model}, vocab {cfg.model.vocab_size}), batch {args.batch} x {T}, "
        "float32, the real train step compiled ahead of time for one device.",
        "",
        "Compile time (lower + compile, seconds): the scanned stack compiles one block whatever the depth.",
        "",
        "| layers | scan (default) | unrolled | unrolled / scan |",
        "| --- | --- | --- | --- |",
        *(f"| {r['depth']} | {r['scan']:.1f} | {r['unrolled']:.1f} | {r['unrolled'] / r['scan']:.1f}x |"
          for r in compile_rows),  # fmt: skip
        "",
        f"Memory of one device by `model.remat` ({cfg.model.num_layers} layers; from `compiled.memory_analysis()`; "
        "peak = arguments + outputs - donated aliases + temporaries):",
        "",
        "| remat | arguments (GiB) | temporaries (GiB) | peak (GiB) | temporaries vs none |",
        "| --- | --- | --- | --- | --- |",
        *(f"| {r['policy']} | {gib(r['args'])} | {gib(r['temp'])} | {gib(r['peak'])} | "
          f"{r['temp'] / none_row['temp']:.2f} |" for r in memory_rows),  # fmt: skip
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("compile_memory", text)
        print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
