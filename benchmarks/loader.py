"""Does loading ever starve the step? Loader batches/s vs the train step's batches/s.

Prepares tinyshakespeare (byte tokenizer) and the complete works (a BPE tokenizer
trained on them), then measures in one run, side by side:
  - the grain loader, in-process and with worker processes, in batches/s;
  - the shakespeare-char model's forward+backward step (jit, this machine), in batches/s.
The ratio loader/step is the headroom: above 1, the step never waits for data.

    python benchmarks/loader.py            # writes its section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax

import jaxllm
from jaxllm.config import TokenizerConfig
from jaxllm.data.clean import clean_text
from jaxllm.data.loader import make_dataset
from jaxllm.data.prepare import prepare
from jaxllm.data.tokenizer import train_sentencepiece

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import git_revision, write_section  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def loader_rate(cfg, n_batches: int) -> float:
    it = iter(make_dataset(cfg))
    for _ in range(3):  # start-up (worker processes, first shard reads) is not throughput
        next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    return n_batches / (time.perf_counter() - t)


def step_rate(cfg, n_steps: int) -> float:
    params = jaxllm.init_params(cfg, jax.random.key(0))
    batch = next(iter(make_dataset(cfg)))

    @jax.jit
    def step(p, b):
        def mean_loss(p):
            s, c = jaxllm.loss(cfg, p, b["inputs"], b["targets"], target_mask=b["target_mask"],
                               positions=b["positions"], segment_ids=b["segment_ids"])  # fmt: skip
            return s / c

        return jax.value_and_grad(mean_loss)(p)

    jax.block_until_ready(step(params, batch))  # compile
    t = time.perf_counter()
    for _ in range(n_steps):
        out = step(params, batch)
    jax.block_until_ready(out)
    return n_steps / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200, help="loader batches timed per setting")
    ap.add_argument("--steps", type=int, default=5, help="train steps timed")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jaxllm-bench-"))
    quiet = {"log": lambda _: None}
    base = jaxllm.load_config(
        "shakespeare-char", [f"data.inputs=[{SHARED}/tinyshakespeare.txt]", f"data.path={tmp}/tiny"]
    )
    prepare(base, **quiet)
    tok = tmp / "works.model"
    works_docs = (clean_text(p.read_text()) for p in sorted((SHARED / "shakespeare").glob("*.txt")))
    train_sentencepiece(works_docs, TokenizerConfig(vocab_size=8000), tok, **quiet)
    works = jaxllm.load_config(
        "shakespeare-char",
        [f"tokenizer.path={tok}", f"data.inputs=[{SHARED}/shakespeare/*.txt]", f"data.path={tmp}/works",
         "model.vocab_size=8000", "data.val_fraction=0.05"],
    )  # fmt: skip
    prepare(works, **quiet)

    B, T = base.train.batch_size, base.data.seq_len
    rows = []
    for name, cfg in (("tinyshakespeare, byte", base), ("complete works, BPE 8k", works)):
        for workers in (0, 2):
            c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=workers))
            rate = loader_rate(c, args.batches)
            rows.append((name, workers, rate))
            print(f"loader  {name:<24} workers={workers}  {rate:8.1f} batches/s  ({rate * B * T / 1e6:.2f} M tokens/s)")
    step = step_rate(base, args.steps)
    print(f"step    shakespeare-char fwd+bwd (jit, {jax.devices()[0].platform})  {step:8.2f} batches/s")
    slowest = min(r for _, _, r in rows)
    print(f"headroom: slowest loader / step = {slowest / step:.0f}x")

    lines = [
        "## Loader vs train step (`python benchmarks/loader.py`)",
        "",
        f"Machine: {platform.machine()}, {jax.devices()[0].platform} ({len(jax.devices())} JAX devices), "
        f"jax {jax.__version__}, git {git_revision()}. Batch {B} x {T} tokens (the shakespeare-char preset); "
        "loader figures after 3 "
        f"warm-up batches, {args.batches} batches each; the step is forward + backward of shakespeare-char "
        f"({jaxllm.count_params(base):,} params), {args.steps} steps after compiling. One run, side by side.",
        "",
        "| what | workers | batches/s | tokens/s |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| loader: {n} | {w} | {r:.1f} | {r * B * T:,.0f} |" for n, w, r in rows]
    lines += [
        f"| train step: shakespeare-char fwd+bwd | - | {step:.2f} | {step * B * T:,.0f} |",
        "",
        f"Headroom (slowest loader setting / step): **{slowest / step:.0f}x**: loading never starves the step here.",
        "",
        f"On an accelerator the step is much faster. Projection, not a measurement (no GPU was used): one step is "
        f"{jaxllm.flops_per_token(base, T) * B * T / 1e12:.2f} TFLOP (6N + 12LTHD), so a device sustaining "
        f"100 TFLOP/s would consume {100e12 / (jaxllm.flops_per_token(base, T) * B * T):.0f} batches/s, below the "
        f"slowest loader setting above ({slowest:.0f} batches/s); workers add headroom where it gets tight.",
    ]
    write_section("loader", "\n".join(lines))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
