"""nanoGPT's CPU recipe on tiny Shakespeare, jaxllm vs the PyTorch reference, in one run.

Both frameworks train the same model (4 layers, 4 heads, 128 dims, context 64, tied
embeddings, no bias) from the *same initial weights* (jaxllm's init, copied into the
PyTorch reference with the parity suite's gpt2 mapping) on the *same batches* (read once
from the jaxllm pipeline), with the same schedule: AdamW, lr 1e-3, 100 warmup steps,
cosine to 1e-4 at 2000 steps, betas (0.9, 0.99), weight decay 0.1, clip 1.0. One known
recipe difference: jaxllm does not decay the embedding; nanoGPT (and the reference here)
decays every matrix including it.

Reported: training wall time and tokens/s of the step loop alone (data already in
memory, compile time excluded and shown apart), and the final validation loss over the
same 20 validation batches. nanoGPT reports val loss 1.88 for this recipe.

    python benchmarks/shakespeare_char.py          # ~8 min on 2 CPU cores; writes BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import torch

import jaxllm
from jaxllm.convert import to_torch
from jaxllm.data.loader import make_dataset
from jaxllm.data.ready import ensure_data
from jaxllm.host import tune_malloc
from jaxllm.parallel.mesh import make_mesh
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.state import init_state
from jaxllm.train.step import make_eval_step, make_train_step, shard_batch

tune_malloc()  # the step's host memory settings, as the jaxllm command and training loop apply them

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import git_revision, write_section  # noqa: E402
from torch_baseline import train_torch_gpt  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2, help="torch intra-op threads (this machine: 2 cores)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="jaxllm-bench-"))
    cfg = jaxllm.load_config(
        "shakespeare-char-cpu",
        [f"tokenizer.path={tmp}/char.model", f"data.inputs=[{SHARED}/tinyshakespeare.txt]", f"data.path={tmp}/data",
         f"train.steps={args.steps}", "mesh.data=1"],
    )  # fmt: skip
    ensure_data(cfg, log=lambda _: None)
    steps, B, T = args.steps, cfg.train.batch_size, cfg.data.seq_len
    train_batches = [b for _, b in zip(range(steps), make_dataset(cfg, "train"), strict=False)]
    val_batches = [b for _, b in zip(range(cfg.train.eval_batches), make_dataset(cfg, "val", epochs=1), strict=False)]

    # jaxllm: the jitted sharded step over the in-memory batches.
    mesh = make_mesh(cfg.mesh, jax.devices()[:1])
    tx = make_optimizer(cfg.optimizer)
    state = init_state(cfg, mesh, tx)
    initial = to_torch(cfg, jax.device_get(state["params"]), "gpt2")
    step_fn, eval_fn = make_train_step(cfg, mesh, tx), make_eval_step(cfg, mesh, tx)
    t = time.perf_counter()
    state, metrics = step_fn(state, shard_batch(train_batches[0], mesh))
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    for b in train_batches[1:]:
        state, metrics = step_fn(state, shard_batch(b, mesh))
    jax.block_until_ready(metrics)
    jax_wall = time.perf_counter() - t
    jax_tok_s = (steps - 1) * B * T / jax_wall
    sums = [jax.device_get(eval_fn(state["params"], shard_batch(b, mesh))) for b in val_batches]
    jax_val = sum(float(s) for s, _ in sums) / sum(float(c) for _, c in sums)
    print(f"jaxllm: {jax_wall:.1f}s for {steps - 1} steps ({jax_tok_s:,.0f} tok/s), compile+first step "
          f"{compile_s:.1f}s, val loss {jax_val:.4f}")  # fmt: skip

    # PyTorch reference: same weights, same batches, same schedule.
    m, o = cfg.model, cfg.optimizer
    result = train_torch_gpt(
        dict(vocab_size=m.vocab_size, max_seq_len=m.max_seq_len, d_model=m.d_model, num_layers=m.num_layers,
             num_heads=m.num_heads, d_ff=m.d_ff, bias=m.use_bias, tie_embeddings=m.tie_embeddings),
        ((b["inputs"], b["targets"]) for b in train_batches), steps,
        lr=o.lr, min_lr=o.lr * o.min_lr_ratio, warmup_steps=o.warmup_steps, decay_steps=o.decay_steps,
        beta1=o.beta1, beta2=o.beta2, weight_decay=o.weight_decay, grad_clip=o.grad_clip,
        val_batches=[(b["inputs"], b["targets"]) for b in val_batches], threads=args.threads,
        initial_state=initial, log=lambda _: None,
    )  # fmt: skip
    torch_tok_s, torch_val = result["tokens_per_s"], result["final_val_loss"]
    torch_wall = result["train_wall_s"]
    print(f"torch:  {torch_wall:.1f}s for {steps} steps ({torch_tok_s:,.0f} tok/s), val loss {torch_val:.4f}")
    ratio = jax_tok_s / torch_tok_s
    print(f"jaxllm / torch throughput: {ratio:.2f}x")

    lines = [
        "## nanoGPT CPU recipe, jaxllm vs PyTorch (`python benchmarks/shakespeare_char.py`)",
        "",
        f"Machine: {platform.machine()}, {jax.devices()[0].platform}, jax {jax.__version__}, torch {torch.__version__} "
        f"({args.threads} threads), git {git_revision()}. "
        f"Model {jaxllm.count_params(cfg):,} params (4 x 128, context {T}, vocab "
        f"{m.vocab_size}); {steps} steps of {B} x {T} tokens; same initial weights, same batches, same schedule; "
        "val loss over the same 20 validation batches (the last 10% of the text). One run, side by side.",
        "",
        "| | train wall (s) | tokens/s | final val loss |",
        "| --- | --- | --- | --- |",
        f"| jaxllm (jit step; compile + first step {compile_s:.1f} s not included) | {jax_wall:.1f} | "
        f"{jax_tok_s:,.0f} | {jax_val:.4f} |",
        f"| PyTorch reference (eager) | {result['train_wall_s']:.1f} | {torch_tok_s:,.0f} | {torch_val:.4f} |",
        "",
        f"Throughput ratio jaxllm / PyTorch: **{ratio:.2f}x**. nanoGPT's own figure for this recipe: val loss 1.88.",
    ]
    write_section("shakespeare_char", "\n".join(lines))
    print("wrote BENCHMARKS.md")


if __name__ == "__main__":
    main()
