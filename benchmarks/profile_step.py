"""Profile the train step: where its time goes, op by op, on this backend.

Runs jaxllm's real train step on random batches, records `--steps` steps with
`jax.profiler.trace` (XLA's per-op events are switched on for CPU with
--xla_cpu_enable_xprof_traceme) and writes the trace (open it in TensorBoard's profile
tab or xprof) plus the compiled HLO. If `xprof` is installed (`pip install xprof`,
in the `[bench]` extra) it also prints the ops' total time per step, grouped by kind
(`ynn_fusion`/`dot`: matmuls; `copy`, `wrapped_broadcast`, `dynamic-update-slice`: data
movement) and one by one with their shapes and the model code they came from.

This is how the CPU step was made fast (docs/performance.md).

    python -m benchmarks profile_step shakespeare-char-cpu
    python -m benchmarks profile_step gpt2-124m train.batch_size=2 --steps 2 --out runs/profile
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

if "--xla_cpu_enable_xprof_traceme" not in os.environ.get("XLA_FLAGS", ""):  # before jax starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_enable_xprof_traceme=true").strip()

import jax  # noqa: E402

import jaxllm  # noqa: E402
from jaxllm.host import tune_malloc  # noqa: E402
from jaxllm.parallel.mesh import make_mesh  # noqa: E402
from jaxllm.train.optimizer import make_optimizer  # noqa: E402
from jaxllm.train.state import init_state  # noqa: E402
from jaxllm.train.step import make_train_step, shard_batch  # noqa: E402

tune_malloc()  # the step's host memory settings, as the jaxllm command and training loop apply them

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _batches import random_batches  # noqa: E402

_WRAPPERS = ("ThreadpoolListener", "ThunkExecutor", "SlinkyThreadPool", "$", "PjitFunction", "CommonPjRt",
             "ParseArguments", "MutexLock", "main")  # fmt: skip


def _hlo_index(hlo: str) -> dict[str, tuple[str, str]]:
    """instruction name -> (result shape, the op_name metadata: which model code made it)."""
    out = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*%(\S+) = (\S+) ", line)
        if m:
            op = re.search(r'op_name="([^"]+)"', line)
            out.setdefault(m.group(1), (m.group(2), op.group(1) if op else ""))
    return out


def summarize(trace_dir: Path, hlo: str, steps: int, top: int) -> str:
    """Per-step op time from the trace, by kind and by op (needs xprof)."""
    from xprof.convert import raw_to_tool_data

    pb = next(trace_dir.rglob("*.xplane.pb"))
    events = json.loads(raw_to_tool_data.xspace_to_tool_data([str(pb)], "trace_viewer", {})[0])["traceEvents"]
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and not e["name"].startswith(_WRAPPERS):
            by_op[e["name"]] += e["dur"]
    by_kind: collections.Counter = collections.Counter()
    for name, us in by_op.items():
        by_kind[re.sub(r"[.\d]+$", "", name)] += us
    index = _hlo_index(hlo)
    total = sum(by_op.values()) / steps / 1e3
    lines = [f"op time summed over threads: {total:,.1f} ms per step", "", "by kind (ms/step):"]
    lines += [f"  {us / steps / 1e3:10.2f}  {kind}" for kind, us in by_kind.most_common(15)]
    lines += ["", f"top {top} ops (ms/step, shape, source):"]
    for name, us in by_op.most_common(top):
        shape, source = index.get(name, ("", ""))
        lines.append(f"  {us / steps / 1e3:10.2f}  {name:32s} {shape[:36]:36s} {source[-70:]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="preset name or YAML path")
    ap.add_argument("overrides", nargs="*", help="config overrides, key=value")
    ap.add_argument("--steps", type=int, default=10, help="steps to record (after 3 warm-up steps)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default="runs/profile", help="directory for the trace and the HLO")
    args = ap.parse_args(argv)
    cfg = jaxllm.load_config(args.config, ["mesh.data=1", *args.overrides])
    B, T, V = cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    tx = make_optimizer(cfg.optimizer)
    state = init_state(cfg, mesh, tx)
    step = make_train_step(cfg, mesh, tx)
    batch = shard_batch(random_batches(1, B, T, V)[0], mesh)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with jax.set_mesh(mesh):
        hlo = step.jitted.lower(state, batch).compile().as_text()
    (out / "step.hlo.txt").write_text(hlo)
    for _ in range(3):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    trace_dir = out / "trace"
    shutil.rmtree(trace_dir, ignore_errors=True)  # the summary reads the one trace in it
    with jax.profiler.trace(str(trace_dir)):
        for _ in range(args.steps):
            state, metrics = step(state, batch)
            jax.block_until_ready(metrics)
    wall = (time.perf_counter() - t) / args.steps
    print(f"{args.config}: {jaxllm.count_params(cfg):,} params, batch {B} x {T}; "
          f"{wall * 1e3:,.1f} ms per step while tracing")  # fmt: skip
    print(f"trace: {trace_dir}  (TensorBoard profile tab / xprof); HLO: {out / 'step.hlo.txt'}")
    try:
        print(summarize(trace_dir, hlo, args.steps, args.top))
    except ImportError:
        print("install xprof (pip install -e '.[bench]') for the per-op summary")


if __name__ == "__main__":
    main()
