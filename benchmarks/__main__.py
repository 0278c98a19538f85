"""`python -m benchmarks NAME [ARGS...]`: run one benchmark script; `all`: the performance suite.

Each script is also runnable on its own (`python benchmarks/NAME.py --help`); this entry
point only finds it and passes the arguments through.
"""

from __future__ import annotations

import runpy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = {
    "train_step": "train step throughput, jaxllm vs PyTorch eager / torch.compile, three model sizes",
    "compile_memory": "compile time vs depth (scan vs unrolled); memory vs remat policy",
    "loader": "data loader batches/s vs the train step's consumption",
    "generate": "prefill and decode tokens/s, jaxllm vs transformers",
    "shakespeare_char": "the full nanoGPT CPU recipe, jaxllm vs PyTorch, to the final val loss",
    "pipeline": "pipeline-parallel bubble, collectives and memory per stage count",
    "posttrain": "SFT / reward model / DPO / PPO on CPU",
    "plan_table": "ahead-of-time plans for Llama 8B/70B on TPU slices",
    "profile_step": "trace the train step and list where its time goes, op by op",
    "guide": "run docs/guide's commands at full size; write its logs and pictures",
    "load_memory": "peak host memory of `jaxllm sample` on an imported model vs its weights' size",
    "xla_flags": "compile vs run time of real programs under the tests' XLA flags and the defaults",
    "checkpoint_stall": "how long an async orbax checkpoint save blocks the train step loop (goodput records)",
    "prepare": "corpus preparation documents/s, single process vs the Beam pipeline; dedup memory at two sizes; "
    "planted-duplicate recall/precision",
}
SUITE = ["train_step", "compile_memory", "loader", "generate"]  # the performance suite


def run(name: str, args: list[str]) -> None:
    saved = sys.argv
    sys.argv = [f"benchmarks/{name}.py", *args]  # what a script shows as its command line
    try:
        runpy.run_path(str(HERE / f"{name}.py"), run_name="__main__")
    finally:
        sys.argv = saved


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__.splitlines()[0] + "\n")
        for name, what in SCRIPTS.items():
            print(f"  {name:18s} {what}")
        print(f"  {'all':18s} the performance suite: {', '.join(SUITE)}")
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    name, args = sys.argv[1], sys.argv[2:]
    if name == "all":
        for each in SUITE:
            t = time.perf_counter()
            print(f"=== benchmarks {each}", flush=True)
            run(each, [])
            print(f"=== benchmarks {each}: {time.perf_counter() - t:.0f} s", flush=True)
        return
    if name not in SCRIPTS:
        sys.exit(f"unknown benchmark {name!r}; choose one of: {', '.join(SCRIPTS)}, all")
    run(name, args)


if __name__ == "__main__":
    main()
