"""Does loading ever starve the step? Loader batches/s vs the train step's batches/s.

Prepares tinyshakespeare (byte tokenizer) and the complete works (a BPE tokenizer
trained on them), then measures in one run, side by side:
  - the grain loader, in-process and with worker processes, in batches/s;
  - the streaming mixture (data.mixture, jaxllm/data/stream.py) on the works split into
    paragraphs: from prepared .bin and ArrayRecord shards, from raw JSONL and parquet
    tokenized on the fly, and a .bin + JSONL mixture, in-process and with 2 workers;
  - the shakespeare-char model's forward+backward step (jit, this machine), in batches/s.
The ratio loader/step is the headroom: above 1, the step never waits for data.

    python benchmarks/loader.py            # writes its section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import jax
import pyarrow as pa
import pyarrow.parquet as pq

import jaxllm
from jaxllm.config import TokenizerConfig
from jaxllm.data.clean import clean_text
from jaxllm.data.loader import make_dataset
from jaxllm.data.prepare import prepare
from jaxllm.data.stream import make_stream
from jaxllm.data.tokenizer import train_sentencepiece

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import git_revision, write_section  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
PARAGRAPH = re.compile(r"\n[ \t]*\n")  # a blank line: prepare's data.documents=paragraph split


def loader_rate(cfg, n_batches: int) -> tuple[float, float]:
    """(batches/s after 3 warm-up batches, seconds to the first batch, opening included)."""
    t = time.perf_counter()
    it = make_stream(cfg) if cfg.data.mixture else iter(make_dataset(cfg))
    next(it)
    first = time.perf_counter() - t
    for _ in range(2):  # start-up (worker processes, first shard reads) is not throughput
        next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    rate = n_batches / (time.perf_counter() - t)
    if hasattr(it, "close"):
        it.close()
    return rate, first


def streaming_configs(tok: Path, tmp: Path) -> list[tuple[str, object]]:
    """The works as paragraph documents, prepared (.bin, ArrayRecord) and raw (JSONL, parquet),
    each streamed alone, and a 3:1 mixture of .bin and JSONL; 2 reader shards (one per worker)."""
    common = [f"tokenizer.path={tok}", "model.vocab_size=8000"]
    for fmt in ("bin", "array_record"):
        overrides = [*common, f"data.inputs=[{SHARED}/shakespeare/*.txt]", f"data.path={tmp}/para-{fmt}",
                     f"data.shard_format={fmt}", "data.documents=paragraph", "data.dedup.near=false",
                     "data.val_fraction=0"]  # fmt: skip
        prepare(jaxllm.load_config("shakespeare-char", overrides), log=lambda _: None)
    docs = [p for f in sorted((SHARED / "shakespeare").glob("*.txt"))
            for p in PARAGRAPH.split(clean_text(f.read_text())) if len(p.strip()) >= 20]  # fmt: skip
    (tmp / "para.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    pq.write_table(pa.table({"text": docs}), tmp / "para.parquet", row_group_size=4096)
    print(f"the works as {len(docs):,} paragraphs ({sum(map(len, docs)) / 1e6:.1f} M characters)")

    def stream(*parts):
        mixture = json.dumps([{"path": str(tmp / p), "weight": w} for p, w in parts])
        return jaxllm.load_config("shakespeare-char", [*common, f"data.mixture={mixture}", "data.stream_shards=2"])

    return [
        ("stream: works paragraphs, prepared .bin", stream(("para-bin", 1))),
        ("stream: works paragraphs, prepared ArrayRecord", stream(("para-array_record", 1))),
        ("stream: works paragraphs, JSONL tokenized on the fly", stream(("para.jsonl", 1))),
        ("stream: works paragraphs, parquet tokenized on the fly", stream(("para.parquet", 1))),
        ("stream: mixture .bin 3 : JSONL 1", stream(("para-bin", 3), ("para.jsonl", 1))),
    ]


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
    settings = [("loader: tinyshakespeare, byte", base), ("loader: complete works, BPE 8k", works),
                *streaming_configs(tok, tmp)]  # fmt: skip
    rows = []
    for name, cfg in settings:
        for workers in (0, 2):
            c = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, num_workers=workers))
            rate, first = loader_rate(c, args.batches)
            rows.append((name, workers, rate, first))
            print(f"{name:<56} workers={workers}  {rate:8.1f} batches/s  ({rate * B * T / 1e6:.2f} M tokens/s), "
                  f"first batch {first:.2f} s")  # fmt: skip
    step = step_rate(base, args.steps)
    print(f"step    shakespeare-char fwd+bwd (jit, {jax.devices()[0].platform})  {step:8.2f} batches/s")
    slowest = min(r for _, _, r, _ in rows)
    flop = jaxllm.flops_per_token(base, T) * B * T
    consume = 100e12 / flop
    starving = sum(r < consume for _, _, r, _ in rows)
    print(f"headroom: slowest loader / step = {slowest / step:.0f}x")

    lines = [
        "## Loader vs train step (`python benchmarks/loader.py`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, {jax.devices()[0].platform} "
        f"({len(jax.devices())} JAX devices), "
        f"jax {jax.__version__}, git {git_revision()}. Batch {B} x {T} tokens (the shakespeare-char preset); "
        "loader figures after 3 "
        f"warm-up batches, {args.batches} batches each; the step is forward + backward of shakespeare-char "
        f"({jaxllm.count_params(base):,} params), {args.steps} steps after compiling. One run, side by side.",
        "",
        "Stream rows: the complete works split into paragraphs (blank lines), BPE 8k, 2 reader shards "
        "(data.stream_shards=2: one per worker); first batch: from opening the sources (the JSONL line index, "
        "the parquet metadata) and starting the workers to the first batch.",
        "",
        f"| what | workers | batches/s | tokens/s | first batch (s) | feeds {consume:.0f} batches/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    lines += [f"| {n} | {w} | {r:.1f} | {r * B * T:,.0f} | {f:.2f} | {'yes' if r >= consume else 'no'} |"
              for n, w, r, f in rows]  # fmt: skip
    lines += [
        f"| train step: shakespeare-char fwd+bwd | - | {step:.2f} | {step * B * T:,.0f} | - | - |",
        "",
        f"Headroom (slowest loader setting / step): **{slowest / step:.0f}x**"
        + (": loading never starves the step here." if slowest > step else ": the step waits for data here."),
        "",
        f"On an accelerator the step is much faster. Projection, not a measurement (no GPU was used): one step is "
        f"{flop / 1e12:.2f} TFLOP (6N + 12LTHD), so a device sustaining 100 TFLOP/s would consume "
        f"{consume:.0f} batches/s (last column); "
        + (f"{starving} of the {len(rows)} settings deliver fewer on these {os.cpu_count()} cores and would starve it: "
           "more cores, workers and reader shards, or prepared shards, close the gap." if starving
           else "every loader setting above delivers more."),
    ]
    write_section("loader", "\n".join(lines))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
