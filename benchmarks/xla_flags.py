"""XLA flag sets for the test suite: compile and run time of real programs under each.

The tests compile hundreds of small programs and run each a few steps, so their XLA flags
(tests/fixtures.py TEST_XLA_FLAGS) trade run speed for compile speed. This measures both
sides, each flag set in a fresh process (XLA reads XLA_FLAGS once, at start):

  train-step compile   the shakespeare-char-cpu train step (AdamW, scanned layers), lowered
                       and compiled ahead of time on one CPU device
  forward compile/run  the same model's forward pass and log-softmax on a 64 x 256 batch:
                       compile once, then the mean of 5 runs

    python -m benchmarks xla_flags
    python -m benchmarks xla_flags --flags= --flags="--xla_backend_optimization_level=0"

(one --flags=SET per flag set; the `=` keeps argparse from reading the set as its own option)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_SETS = [
    "",
    "--xla_backend_optimization_level=0",
    "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false",
]


def measure() -> dict[str, float]:
    """The child: times under this process's XLA_FLAGS."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxllm
    from jaxllm.model.api import init_params
    from jaxllm.model.decoder import Decoder
    from jaxllm.parallel.layout import Layout
    from jaxllm.parallel.mesh import make_mesh
    from jaxllm.plan import abstract_batch
    from jaxllm.train.optimizer import make_optimizer
    from jaxllm.train.state import abstract_state
    from jaxllm.train.step import make_train_step

    cfg = jaxllm.load_config("shakespeare-char-cpu")
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    tx = make_optimizer(cfg.optimizer)
    layout = Layout.build(cfg, mesh, tx)
    step = make_train_step(cfg, layout, tx)
    with jax.set_mesh(mesh):
        lowered = step.jitted.lower(abstract_state(cfg, tx, layout.state), abstract_batch(cfg, mesh))
        start = time.perf_counter()
        lowered.compile()
        train_compile = time.perf_counter() - start

    model = Decoder(cfg.model)
    params = init_params(cfg, jax.random.key(0))
    x = jnp.asarray(np.random.default_rng(0).integers(0, cfg.model.vocab_size, (64, cfg.data.seq_len)), jnp.int32)

    def forward(p, x):  # (B, T) ids -> a scalar, so the whole forward pass must run
        return jax.nn.log_softmax(model.apply({"params": p}, x).astype(jnp.float32)).sum()

    start = time.perf_counter()
    compiled = jax.jit(forward).lower(params, x).compile()
    forward_compile = time.perf_counter() - start
    compiled(params, x).block_until_ready()
    start = time.perf_counter()
    for _ in range(5):
        compiled(params, x).block_until_ready()
    return {"train_compile": train_compile, "forward_compile": forward_compile,
            "forward_run": (time.perf_counter() - start) / 5}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flags", action="append", help="an XLA flag set to compare, as --flags=SET; repeat "
                        "for more (default: XLA's defaults, level 0, level 0 without the fusion emitters)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    print(f"{'XLA_FLAGS':72s} {'train-step compile':>18s} {'forward compile':>15s} {'forward run':>11s}")
    for flags in args.flags or DEFAULT_SETS:
        env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
        child = subprocess.run([sys.executable, "-m", "benchmarks.xla_flags", "--child"], env=env,
                               capture_output=True, text=True)  # fmt: skip
        if child.returncode != 0:  # e.g. XLA's "Unknown flag in XLA_FLAGS"
            last = (child.stderr.strip().splitlines() or ["no output"])[-1]
            sys.exit(f"XLA_FLAGS={flags!r} failed (exit {child.returncode}): {last}; give flags this jax knows")
        t = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"{flags or '(none: XLA defaults)':72s} {t['train_compile']:17.2f}s {t['forward_compile']:14.2f}s "
              f"{t['forward_run'] * 1e3:9.0f}ms", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
