"""Pipeline parallelism accounting from the compiled train step, for S = 1, 2, 4 stages
on 8 CPU devices (data x pipeline = 8): collective-permutes in the HLO and per-device
memory from `compiled.memory_analysis()`.

    python benchmarks/pipeline.py          # ~1 min; writes its section of BENCHMARKS.md

The model has 8 layers of d_model 256 and a small vocabulary, so the layer stack (which
pipelining splits S ways) dominates the parameters, as it does in large models.
"""

from __future__ import annotations

import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import re  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

import jaxllm  # noqa: E402
from jaxllm.model.pipelined import bubble_fraction  # noqa: E402
from jaxllm.parallel.mesh import make_mesh  # noqa: E402
from jaxllm.train.optimizer import make_optimizer  # noqa: E402
from jaxllm.train.state import abstract_state, state_shardings  # noqa: E402
from jaxllm.train.step import make_train_step  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import write_section  # noqa: E402

BYTES = {"f32": 4, "bf16": 2, "s32": 4, "u32": 4, "f16": 2, "pred": 1}


def permutes(hlo: str) -> tuple[int, int]:
    """(number of collective-permute ops, bytes they move per execution) in HLO text."""
    count = total = 0
    for line in hlo.splitlines():
        if "collective-permute(" in line and "=" in line:
            count += 1
            m = re.search(r"=\s*(\w+)\[([\d,]*)\]", line)
            if m:
                dims = [int(d) for d in m.group(2).split(",") if d]
                total += BYTES.get(m.group(1), 4) * int(np.prod(dims or [1]))
    return count, total


def main() -> None:
    rows = []
    for S in (1, 2, 4):
        cfg = jaxllm.load_config(
            "shakespeare-char",
            ["model.num_layers=8", "model.d_model=256", "model.num_heads=4", "model.dropout=0", "data.seq_len=64",
             "model.max_seq_len=64", "train.batch_size=32", "train.microbatches=4", f"mesh.pipeline={S}",
             f"mesh.data={8 // S}"],
        )  # fmt: skip
        mesh = make_mesh(cfg.mesh)
        tx = make_optimizer(cfg.optimizer)
        state = abstract_state(cfg, tx, state_shardings(cfg, mesh, tx))
        B, T = cfg.train.batch_size, cfg.data.seq_len
        batch_sh = jax.sharding.NamedSharding(mesh, jax.P(("data", "fsdp")))
        batch = {k: jax.ShapeDtypeStruct((B, T), np.int32, sharding=batch_sh)
                 for k in ("inputs", "targets", "segment_ids", "positions", "target_mask")}  # fmt: skip
        step = make_train_step(cfg, mesh, tx)
        with jax.set_mesh(mesh):
            compiled = step.jitted.lower(state, batch).compile()
        mem = compiled.memory_analysis()
        n_perm, perm_bytes = permutes(compiled.as_text())
        params = state["params"]
        param_bytes = sum(
            int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
            for leaf in jax.tree.leaves(params)
        )
        rows.append((S, n_perm, perm_bytes, param_bytes, mem.argument_size_in_bytes, mem.temp_size_in_bytes,
                     bubble_fraction(S, 4) if S > 1 else 0.0))  # fmt: skip
        print(f"S={S}: {n_perm} collective-permutes ({perm_bytes:,} B per execution of each op once), "
              f"params/device {param_bytes / 2**20:.2f} MiB, arguments {mem.argument_size_in_bytes / 2**20:.2f} MiB, "
              f"temp {mem.temp_size_in_bytes / 2**20:.2f} MiB")  # fmt: skip
    base = rows[0][3]
    lines = [
        "## Pipeline accounting (`python benchmarks/pipeline.py`)",
        "",
        f"8 CPU devices (data x pipeline = 8), jax {jax.__version__}; model 8 layers x d_model 256, vocab 256, "
        "batch 32 x 64 in 4 microbatches; figures from the compiled train step (HLO text and "
        "`compiled.memory_analysis()`). Collective-permutes are counted as ops in the HLO (inside the schedule's "
        "loop they run once per iteration) with the bytes of one execution of each.",
        "",
        "| stages S | bubble (M=4) | collective-permute ops | bytes / execution of all | params / device | "
        "params / device vs S=1 | arguments / device | temp / device |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for S, n, pb, par, arg, tmp, bub in rows:
        lines.append(f"| {S} | {bub:.1%} | {n} | {pb:,} | {par / 2**20:.2f} MiB | {par / base:.2f} | "
                     f"{arg / 2**20:.2f} MiB | {tmp / 2**20:.2f} MiB |")  # fmt: skip
    write_section("pipeline", "\n".join(lines))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
