"""Generation speed on CPU, jaxllm vs Hugging Face transformers, in one run.

A GPT-2-124M-shaped model (jaxllm's `gpt2-124m` preset: 12 layers, d_model 768, 12
heads, vocab 50257, context 1024, float32) against `transformers`' GPT2LMHeadModel of the
same shape (benchmarks/torch_generate.py). Both are randomly initialised with different
weights: only speed is compared. Measured, in tokens/s:
  - prefill: one forward over a (B, 128) prompt that fills the KV cache;
  - decode: the token-by-token loop alone, B * (N - 1) / (generate time - prefill time)
    for N = 64 greedy new tokens after a 16-token prompt; plus a hand-written loop of
    single-token steps, and end to end B * N / generate time.
The machine is shared and noisy, so the two frameworks take turns (jaxllm, torch,
jaxllm, torch, ...) and each figure is the median over the repeats; every configuration
runs once untimed first (JAX compiles it, torch warms its allocator).

    python benchmarks/generate.py            # ~10 min on 2 CPU cores; writes BENCHMARKS.md
    python benchmarks/generate.py --quick    # 2 layers, 4 new tokens: a smoke test, writes nothing
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np

import jaxllm
from jaxllm.generation import decode_step, generate, prefill

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch_generate as tg  # noqa: E402
from _report import write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def jax_prefill(cfg: jaxllm.Config, params, tokens: np.ndarray, slots: int) -> tuple[float, tuple]:
    """Seconds of one `prefill` call on (B, P) prompts (host-to-device copy included), and its result."""
    t = time.perf_counter()
    logits, cache = prefill(cfg, params, tokens, np.zeros((tokens.shape[0],), np.int32), slots)
    jax.block_until_ready((logits, cache))
    return time.perf_counter() - t, (logits, cache)


def jax_decode(cfg: jaxllm.Config, params, tokens: np.ndarray, new_tokens: int) -> dict[str, float]:
    """Seconds of `generate` (greedy, no stop tokens), of a prefill of the same prompts, and of
    a Python loop of new_tokens - 1 `decode_step` calls after that prefill."""
    prompts = tokens.tolist()
    t = time.perf_counter()
    g = generate(cfg, params, prompts, new_tokens, temperature=0.0)
    t_gen = time.perf_counter() - t  # generate returns host lists: it has already synced
    assert all(len(row) == new_tokens for row in g.tokens), [len(row) for row in g.tokens]
    t_pre, (logits, cache) = jax_prefill(cfg, params, tokens, tokens.shape[1] + new_tokens)
    nxt = jnp.argmax(logits, -1)
    t = time.perf_counter()
    for _ in range(new_tokens - 1):
        logits, cache = decode_step(cfg, params, nxt, cache)
        nxt = jnp.argmax(logits, -1)
    nxt.block_until_ready()
    return {"generate": t_gen, "prefill": t_pre, "loop": time.perf_counter() - t}


def torch_decode(model, tokens: np.ndarray, new_tokens: int) -> dict[str, float]:
    """The same three timings for the HF model: `model.generate`, a prefill forward, a step loop."""
    t_gen, new = tg.time_generate(model, tokens, new_tokens)
    assert new.shape == (tokens.shape[0], new_tokens), new.shape
    return {
        "generate": t_gen,
        "prefill": tg.time_prefill(model, tokens),
        "loop": tg.time_step_loop(model, tokens, new_tokens),
    }


def decode_rates(t: dict[str, float], batch: int, new_tokens: int) -> dict[str, float]:
    """tokens/s from one repeat's timings: the decode loop inside generate (generate minus
    prefill), the hand-written step loop, and generate end to end."""
    loop_s = t["generate"] - t["prefill"]
    return {
        "decode": batch * (new_tokens - 1) / loop_s if loop_s > 0 else float("nan"),
        "steps": batch * (new_tokens - 1) / t["loop"],
        "e2e": batch * new_tokens / t["generate"],
    }


def git_revision() -> str:
    """HEAD's short hash, flagged when jaxllm/ differs from it (the figures are for the working tree)."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                             check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "jaxllm"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{rev} + uncommitted changes in jaxllm/" if dirty else rev


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefill-len", type=int, default=128, help="prompt length of the prefill measurement")
    ap.add_argument("--prompt-len", type=int, default=16, help="prompt length before decoding")
    ap.add_argument("--new-tokens", type=int, default=64, help="greedy tokens generated per row")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16], help="batch sizes")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per framework and setting (median reported)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 layers, short prompts, 1 repeat, no report")
    args = ap.parse_args()
    overrides = []
    if args.quick:
        overrides = ["model.num_layers=2"]
        args.prefill_len, args.prompt_len, args.new_tokens, args.repeats = 16, 16, 4, 1

    load_before = os.getloadavg()[0]  # other processes' load: torch's threads suffer most when cores are taken
    cfg = jaxllm.load_config("gpt2-124m", overrides)
    m = cfg.model
    params = jaxllm.init_params(cfg, jax.random.key(0))
    model = tg.build_gpt2(m.num_layers, m.d_model, m.num_heads, m.vocab_size, m.max_seq_len, args.threads)
    jax_params = jaxllm.count_params(cfg)
    torch_params = sum(p.numel() for p in model.parameters())  # HF ties lm_head to wte: counted once
    rng = np.random.default_rng(0)
    prompts = {
        (kind, b): rng.integers(0, m.vocab_size, (b, length), dtype=np.int32)
        for b in args.batches
        for kind, length in (("prefill", args.prefill_len), ("decode", args.prompt_len))
    }
    slots = args.prefill_len + args.new_tokens
    N = args.new_tokens

    # One (jaxllm, torch) pair of runs per setting; each run returns its tokens/s figures.
    runs: list[tuple[str, int, Callable[[], dict[str, float]], Callable[[], dict[str, float]]]] = []
    for b in args.batches:
        p, d = prompts["prefill", b], prompts["decode", b]
        runs.append(("prefill", b,
                     lambda p=p, b=b: {"prefill": b * p.shape[1] / jax_prefill(cfg, params, p, slots)[0]},
                     lambda p=p, b=b: {"prefill": b * p.shape[1] / tg.time_prefill(model, p)}))  # fmt: skip
        runs.append(("decode", b,
                     lambda d=d, b=b: decode_rates(jax_decode(cfg, params, d, N), b, N),
                     lambda d=d, b=b: decode_rates(torch_decode(model, d, N), b, N)))  # fmt: skip

    t0 = time.perf_counter()
    for _, _, jax_run, torch_run in runs:  # warm-up: compile every jaxllm program, touch every torch path
        jax_run()
        torch_run()
    print(f"warm-up (jaxllm compiles + one run of everything): {time.perf_counter() - t0:.0f}s", flush=True)
    results: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in range(args.repeats):
        for _, b, jax_run, torch_run in runs:  # jaxllm then torch, setting by setting: ABAB...
            j, t = jax_run(), torch_run()
            for key in j:
                results.setdefault((key, b), []).append((j[key], t[key]))
                print(f"repeat {r + 1}/{args.repeats} {key:8s} B={b:<3d} jaxllm {j[key]:10,.1f} tok/s   "
                      f"torch {t[key]:10,.1f} tok/s   ratio {j[key] / t[key]:.2f}", flush=True)  # fmt: skip

    labels = {
        "prefill": "prefill",
        "decode": "decode (generate)",
        "steps": "decode (step loop)",
        "e2e": "generate end to end",
    }
    rows = []
    for key in labels:
        for b in args.batches:
            pairs = results[key, b]
            jm = statistics.median(j for j, _ in pairs)
            tm = statistics.median(t for _, t in pairs)
            ratios = [j / t for j, t in pairs]
            rows.append((f"{labels[key]} B={b}", jm, tm, jm / tm, min(ratios), max(ratios)))

    load_after = os.getloadavg()[0]
    header = f"{'':28s} {'jaxllm tok/s':>13s} {'torch tok/s':>13s} {'ratio':>7s}  per-repeat ratios"
    print("\n" + header)
    for name, jm, tm, ratio, lo, hi in rows:
        print(f"{name:28s} {jm:13,.1f} {tm:13,.1f} {ratio:7.2f}  {lo:.2f}-{hi:.2f}")
    print("ratio = jaxllm / torch tokens/s (>1: jaxllm faster); medians over repeats; weights differ (random init)")
    print(f"1-minute load average: {load_before:.2f} before the run, {load_after:.2f} at the end")
    if args.quick:
        print("--quick: BENCHMARKS.md not written")
        return

    v = tg.versions()
    table = [
        f"| {name} | {jm:,.1f} | {tm:,.1f} | **{ratio:.2f}x** | {lo:.2f}-{hi:.2f} |"
        for name, jm, tm, ratio, lo, hi in rows
    ]
    command = shlex.join(["python", *sys.argv])
    lines = [
        "## Generation speed on CPU, jaxllm vs transformers (`python benchmarks/generate.py`)",
        "",
        f"Command: `{command}`. Machine: {cpu_name()}, {os.cpu_count()} cores ({platform.machine()}, shared with "
        f"other work, so the figures are noisy), {jax.devices()[0].platform}; Python {platform.python_version()}, "
        f"jax {jax.__version__}, flax {flax.__version__}, torch {v['torch']} ({args.threads} intra-op threads, "
        f"`torch.set_num_threads`), transformers {v['transformers']}. jaxllm revision {git_revision()}. "
        f"1-minute load average {load_before:.2f} before the run (other processes), {load_after:.2f} at its end.",
        "",
        f"Model: GPT-2 shape, {m.num_layers} layers, d_model {m.d_model}, {m.num_heads} heads, vocab "
        f"{m.vocab_size}, context {m.max_seq_len}, float32, tied embeddings: jaxllm `gpt2-124m` "
        f"({jax_params:,} params) vs `transformers` `GPT2LMHeadModel` ({torch_params:,} params; attention "
        f"`{tg.attention_impl(model)}`, eager, `torch.no_grad()`, `use_cache=True`). Both randomly initialised "
        "with *different* weights: this compares speed only, not outputs. Prompts are random token ids (numpy "
        "seed 0), the same for both; no padding.",
        "",
        "| tokens/s | jaxllm | transformers | jaxllm / transformers | per-repeat ratios |",
        "| --- | --- | --- | --- | --- |",
        *table,
        "",
        f"Each figure is the median of {args.repeats} timed runs; the two frameworks alternate run by run "
        "(jaxllm, transformers, jaxllm, ...) after one untimed run of every setting (JAX compiles there). "
        "Ratio > 1: jaxllm is faster. What each row measures:",
        "",
        f"- **prefill**: B x {args.prefill_len} / the time of one forward over a (B, {args.prefill_len}) prompt "
        f"that fills the KV cache, last position's logits only: jaxllm `prefill` ({slots} cache slots), "
        "transformers `model(ids, use_cache=True, logits_to_keep=1)` (what `model.generate` runs for its own "
        "prefill).",
        f"- **decode (generate)**: B x {N - 1} / (time of generating {N} greedy tokens after a "
        f"{args.prompt_len}-token prompt - time of a prefill of that prompt): the decode loop alone. jaxllm "
        f"`generate(..., temperature=0.0)` (one compiled prefill + `lax.while_loop`); transformers "
        f"`model.generate(do_sample=False, min_new_tokens={N}, max_new_tokens={N}, use_cache=True)`. No stop "
        f"tokens: every row produces all {N} tokens (asserted).",
        f"- **decode (step loop)**: B x {N - 1} / the time of a Python loop of {N - 1} single-token forwards "
        "with greedy argmax after a prefill: jaxllm `decode_step` (jit, cache donated), transformers "
        "`model(next, past_key_values=...)`.",
        f"- **generate end to end**: B x {N} / the whole `generate` call (prefill, decode, host-side work).",
    ]
    write_section("generate", "\n".join(lines))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
