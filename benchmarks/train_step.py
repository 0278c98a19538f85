"""Train-step throughput, jaxllm vs PyTorch, side by side in one process.

For each model size both frameworks build the same GPT-2-family model from the *same
initial weights* (jaxllm's init, mapped into PyTorch with the parity suite's layout) and
run the same recipe on the same random batches: forward, backward, global-norm clip
1.0, AdamW. jaxllm runs its real train step (`make_train_step`: one jit, donated state,
the non-finite guard); PyTorch runs nanoGPT's model (`torch_gpt.NanoGPT`, fused SDPA
attention) eagerly and, where it works, under `torch.compile`.

Timing protocol: after a warm-up (compile + one step each, timed apart as time to first
step), R rounds; in each round every contender runs k steps back to back (jaxllm
dispatches them asynchronously and blocks once, as the trainer does; PyTorch calls
`loss.item()` each step) and the contenders' order rotates from round to round, so a
noisy neighbour hits all of them alike. Reported: the median over rounds of the
per-step time, tokens/s from it, and the ratio jaxllm / PyTorch of tokens/s.

MFU = model FLOPs (6N + 12LTHD per token, jaxllm.flops_per_token) x tokens/s / peak;
on CPU the peak is measured: the best 1024^3 float32 matmul of this process.

    python -m benchmarks train_step                      # all sizes, ~15 min on 2 cores
    python -m benchmarks train_step --sizes shakespeare-char --rounds 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import torch

import jaxllm
from jaxllm.convert import to_torch
from jaxllm.host import tune_malloc
from jaxllm.model.summary import flops_per_token
from jaxllm.parallel.mesh import make_mesh
from jaxllm.train.flops import peak_flops
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.state import init_state
from jaxllm.train.step import make_train_step, shard_batch

tune_malloc()  # the step's host memory settings, as the jaxllm command and training loop apply them

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _batches import random_batches  # noqa: E402
from _report import git_revision, write_section  # noqa: E402
from torch_gpt import NanoGPT, adamw  # noqa: E402

# name -> (preset, overrides, steps per round). The 25M model is the 8 x 512 shape of the
# nanoGPT family at context 256 with a character vocabulary; GPT-2 124M runs at its full
# context of 1024 with a batch that keeps a CPU step to seconds.
SIZES: dict[str, tuple[str, list[str], int]] = {
    "shakespeare-char": ("shakespeare-char-cpu", [], 20),
    "25m": (
        "shakespeare-char-cpu",
        ["model.num_layers=8", "model.d_model=512", "model.num_heads=8", "model.max_seq_len=256",
         "data.seq_len=256", "train.batch_size=8"],
        3,
    ),  # fmt: skip
    "gpt2-124m": ("gpt2-124m", ["train.batch_size=2"], 1),
}


def jax_contender(cfg, batches) -> tuple[Callable[[int], None], float, dict, float]:
    """(run k steps, time to first step, initial params as a torch state dict, first loss)."""
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    tx = make_optimizer(cfg.optimizer)
    state = init_state(cfg, mesh, tx)
    initial = to_torch(cfg, jax.device_get(state["params"]), "gpt2")
    step = make_train_step(cfg, mesh, tx)
    placed = [shard_batch(b, mesh) for b in batches]
    t = time.perf_counter()
    state, metrics = step(state, placed[0])
    first_loss = float(metrics["loss"])
    first = time.perf_counter() - t
    box = {"state": state, "i": 1}

    def run(k: int) -> None:
        metrics = None
        for _ in range(k):
            box["state"], metrics = step(box["state"], placed[box["i"] % len(placed)])
            box["i"] += 1
        jax.block_until_ready(metrics)

    return run, first, initial, first_loss


def torch_contender(cfg, batches, initial: dict, compiled: bool) -> tuple[Callable[[int], None], float, float]:
    """(run k steps, time to first step, first loss) for NanoGPT, eager or torch.compile'd."""
    m, o = cfg.model, cfg.optimizer
    model = NanoGPT(m.vocab_size, m.max_seq_len, m.d_model, m.num_layers, m.num_heads, m.d_ff, m.use_bias,
                    m.tie_embeddings, m.norm_eps)  # fmt: skip
    model.load_state_dict({k: torch.tensor(np.asarray(v, np.float32)) for k, v in initial.items()})
    model.train()
    opt = adamw(model, o.lr, (o.beta1, o.beta2), o.weight_decay)
    forward = torch.compile(model) if compiled else model
    data = [(torch.from_numpy(b["inputs"].astype(np.int64)), torch.from_numpy(b["targets"].astype(np.int64)))
            for b in batches]  # fmt: skip
    box = {"i": 0}

    def one() -> float:
        x, y = data[box["i"] % len(data)]
        box["i"] += 1
        loss = forward(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        opt.step()
        return loss.item()

    t = time.perf_counter()
    first_loss = one()
    first = time.perf_counter() - t

    def run(k: int) -> None:
        for _ in range(k):
            one()

    return run, first, first_loss


def bench_size(name: str, rounds: int, steps: int | None, compile_torch: bool, variants: dict[str, list[str]]) -> dict:
    preset, overrides, default_steps = SIZES[name]
    k = steps or default_steps
    cfg = jaxllm.load_config(preset, ["mesh.data=1", *overrides])
    B, T, V = cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size
    batches = random_batches(4, B, T, V)
    print(f"[{name}] {jaxllm.count_params(cfg):,} params, batch {B} x {T}, {k} steps x {rounds} rounds", flush=True)
    contenders: dict[str, Callable[[int], None]] = {}
    first: dict[str, float] = {}
    losses: dict[str, float] = {}
    contenders["jaxllm"], first["jaxllm"], initial, losses["jaxllm"] = jax_contender(cfg, batches)
    for label, extra in variants.items():  # ablations: the same step with other settings
        vcfg = jaxllm.load_config(preset, ["mesh.data=1", *overrides, *extra])
        contenders[label], first[label], _, losses[label] = jax_contender(vcfg, batches)
    contenders["torch eager"], first["torch eager"], losses["torch eager"] = torch_contender(
        cfg, batches, initial, compiled=False
    )
    compile_error = None
    if compile_torch:
        try:
            contenders["torch.compile"], first["torch.compile"], losses["torch.compile"] = torch_contender(
                cfg, batches, initial, compiled=True
            )
        except Exception as e:  # inductor needs a working C++ toolchain; report, do not hide
            compile_error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            print(f"[{name}] torch.compile failed: {compile_error}", flush=True)
    for who, f in first.items():
        print(f"[{name}] {who}: time to first step {f:.2f} s, first loss {losses[who]:.5f}", flush=True)

    times: dict[str, list[float]] = {who: [] for who in contenders}
    order = list(contenders)
    for r in range(rounds):
        for who in order[r % len(order) :] + order[: r % len(order)]:
            t = time.perf_counter()
            contenders[who](k)
            times[who].append((time.perf_counter() - t) / k)
        print(f"[{name}] round {r + 1}/{rounds}: " + ", ".join(f"{w} {times[w][-1] * 1e3:.1f} ms" for w in order),
              flush=True)  # fmt: skip
    peak = peak_flops(jax.devices()[0])
    fpt = flops_per_token(cfg, T)
    rows = {}
    for who, ts in times.items():
        step_s = statistics.median(ts)
        tok_s = B * T / step_s
        rows[who] = {"step_s": step_s, "tok_s": tok_s, "mfu": fpt * tok_s / peak if peak else None,
                     "first_s": first[who], "loss": losses[who]}  # fmt: skip
    return {"name": name, "params": jaxllm.count_params(cfg), "B": B, "T": T, "k": k, "rows": rows,
            "compile_error": compile_error, "peak": peak}  # fmt: skip


def render(results: list[dict], rounds: int) -> str:
    dev = jax.devices()[0]
    lines = [
        "## Train step, jaxllm vs PyTorch (`python -m benchmarks train_step`)",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, device `{dev.device_kind}` ({dev.platform}); "
        f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads); git {git_revision()}. "
        "float32, same initial weights and batches; one process, contenders alternating; median of "
        f"{rounds} rounds. MFU against the measured peak (CPU: best 1024^3 float32 matmul in this run, "
        f"{results[0]['peak'] / 1e9:,.0f} GFLOP/s).",
        "",
        "| model | params | batch | contender | step (ms) | tokens/s | MFU | first step (s) | first loss | "
        "jaxllm / this |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for res in results:
        jx = res["rows"]["jaxllm"]
        for who, row in res["rows"].items():
            ratio = f"**{jx['tok_s'] / row['tok_s']:.2f}x**" if who.startswith("torch") else ""
            mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "-"
            lines.append(
                f"| {res['name']} | {res['params'] / 1e6:.1f}M | {res['B']} x {res['T']} | {who} | "
                f"{row['step_s'] * 1e3:,.1f} | {row['tok_s']:,.0f} | {mfu} | {row['first_s']:.1f} | "
                f"{row['loss']:.4f} | {ratio} |"
            )
        if res["compile_error"]:
            lines.append(f"| {res['name']} | | | torch.compile | failed: {res['compile_error']} | | | | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=None, help="steps per round (default: per size)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile contender")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=KEY=VALUE[,KEY=VALUE]",
                    help="also time jaxllm with these config overrides, e.g. 'scan=model.scan_unroll=false'")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for flag, value in (("--rounds", args.rounds), ("--steps", args.steps)):
        if value is not None and value < 1:
            ap.error(f"{flag} {value}: must be at least 1")
    variants = {}
    for v in args.variant:
        label, _, extra = v.partition("=")
        if not extra or "=" not in extra:
            ap.error(f"--variant {v!r}: expected LABEL=KEY=VALUE[,KEY=VALUE...]")
        variants[f"jaxllm {label}"] = extra.split(",")
    results = [bench_size(s, args.rounds, args.steps, not args.no_compile, variants) for s in args.sizes]
    text = render(results, args.rounds)
    print(text)
    if not args.no_write:
        write_section("train_step", text)
        print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
