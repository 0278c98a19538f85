"""The PyTorch side of the JAX-vs-PyTorch training benchmark.

A benchmark script runs the jaxllm trainer and `train_torch_gpt` in one process on
the same batches and compares wall time, tokens/s and final validation loss as ratios.
A ratio only means something if both sides do the same work, so this trainer is
deliberately plain: the parity suite's textbook GPT (tests/parity/reference.py),
trained with nanoGPT's recipe and nothing extra (no torch.compile, no mixed precision,
no fused optimizer), so that the baseline is what a careful PyTorch user would write.

The recipe, spelled out because the JAX side must match it:
  - AdamW(betas, eps=1e-8, fused=False); weight decay only on parameters with
    dim >= 2 (linear weights and embeddings), none on biases or LayerNorm params.
  - Learning rate at 0-based step s (the step's update uses it):
        s <  warmup_steps:               lr * s / warmup_steps       (0 at step 0)
        warmup_steps <= s <= decay_steps: cosine from lr down to min_lr
        s >  decay_steps:                min_lr
    This is optax's `warmup_cosine_decay_schedule(0, lr, warmup_steps, decay_steps, min_lr)`
    evaluated at the optimizer's update count, not nanoGPT's `lr * (s + 1) / (warmup + 1)`.
  - Gradients clipped to global norm `grad_clip` when grad_clip > 0.

    python benchmarks/torch_baseline.py      # smoke run on random tokens
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from tests.parity.reference import gpt2_model  # noqa: E402

__all__ = ["lr_at_step", "train_torch_gpt"]


def lr_at_step(step: int, *, lr: float, min_lr: float, warmup_steps: int, decay_steps: int) -> float:
    """Learning rate for the update made at 0-based `step` (see the module docstring).

    Linear warmup from 0 (so step 0 makes no parameter change, as in optax), then a
    half cosine from `lr` at `warmup_steps` to `min_lr` at `decay_steps`, `min_lr` after.
    If decay_steps <= warmup_steps there is no cosine phase: `min_lr` right after warmup.
    """
    if step < warmup_steps:
        return lr * step / warmup_steps
    if step >= decay_steps:  # also the zero-length cosine span of decay_steps <= warmup_steps
        return min_lr
    progress = (step - warmup_steps) / (decay_steps - warmup_steps)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def _adamw(model: nn.Module, lr: float, beta1: float, beta2: float, weight_decay: float) -> torch.optim.AdamW:
    """nanoGPT's optimizer: decay matrices and embeddings, leave biases and norms alone.

    `named_parameters()` drops duplicates, so a tied embedding / LM head tensor is in
    one group once; listing it twice would make AdamW update it twice per step.
    """
    params = [p for _, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=1e-8, fused=False)


def _to_tensors(batch: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) int arrays -> int64 tensors; cross_entropy wants int64 targets."""
    inputs, targets = batch
    x = torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.int64))
    y = torch.from_numpy(np.ascontiguousarray(targets, dtype=np.int64))
    if x.ndim != 2 or x.shape != y.shape:
        raise ValueError(f"expected inputs and targets of one shape (B, T), got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y


def _evaluate(model: nn.Module, val_batches: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    """Mean of the per-batch mean losses, in eval mode without autograd; back to train mode after."""
    model.eval()
    try:
        with torch.no_grad():
            losses = [model(*_to_tensors(b))[1].item() for b in val_batches]
    finally:
        model.train()
    return float(sum(losses) / len(losses))


def train_torch_gpt(
    model_kwargs: dict,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    steps: int,
    *,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    decay_steps: int,
    beta1: float,
    beta2: float,
    weight_decay: float,
    grad_clip: float,
    seed: int = 0,
    val_batches: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    eval_every: int = 0,
    threads: int | None = None,
    initial_state: Mapping[str, np.ndarray] | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train `gpt2_model(**model_kwargs)` for `steps` steps, one batch from `batches` per step.

    Validation runs after every `eval_every` steps (0: never in between) and once at the
    end, if `val_batches` is non-empty. `initial_state` (a state dict of numpy arrays, e.g.
    jaxllm's initial parameters mapped with jaxllm.convert.to_torch) replaces torch's own
    initialization, so two frameworks can start from identical weights. `threads`, when given, sets torch's intra-op
    thread count for this call only (restored afterwards, since the JAX side shares the
    process).

    Timing: `train_wall_s` sums, over the training steps only, the time from turning the
    numpy batch into tensors to having the step's loss as a Python float (a sync point,
    though on CPU every op is synchronous anyway). Excluded: model and optimizer
    construction, pulling the next batch out of `batches` (the data source is shared
    with the JAX side and is not what is compared), logging, and evaluation, which is
    timed separately as `eval_wall_s`. There is no warm-up step: the first step's one-off
    costs are part of the figure, as they are for whoever runs the loop.

    Returns a dict: train_losses (one float per step), val_losses ([(step, loss)]),
    final_val_loss (None without val batches), train_wall_s, eval_wall_s, tokens_per_s
    (trained tokens / train_wall_s), params (unique parameter count: a tied
    embedding / LM head matrix counts once).
    """
    if steps <= 0:
        raise ValueError(f"steps={steps} must be > 0")
    if eval_every < 0:
        raise ValueError(f"eval_every={eval_every} must be >= 0")

    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = gpt2_model(**model_kwargs)
        if initial_state is not None:
            model.load_state_dict({k: torch.tensor(np.asarray(v, np.float32)) for k, v in initial_state.items()})
        model.train()
        optimizer = _adamw(model, lr, beta1, beta2, weight_decay)
        n_params = sum(p.numel() for p in model.parameters())  # parameters() drops tied duplicates
        log(f"torch: {n_params:,} params, {torch.get_num_threads()} threads, {steps} steps")

        train_losses: list[float] = []
        val_losses: list[tuple[int, float]] = []
        train_wall = eval_wall = 0.0
        tokens = 0
        batch_iter = iter(batches)

        def run_eval(step: int) -> None:
            nonlocal eval_wall
            start = time.perf_counter()
            loss = _evaluate(model, val_batches)
            eval_wall += time.perf_counter() - start
            val_losses.append((step, loss))
            log(f"torch: step {step} val loss {loss:.4f}")

        for step in range(steps):
            try:
                batch = next(batch_iter)
            except StopIteration:
                raise ValueError(f"batches ran out after {step} of {steps} steps") from None

            start = time.perf_counter()
            x, y = _to_tensors(batch)
            step_lr = lr_at_step(step, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, decay_steps=decay_steps)
            for group in optimizer.param_groups:
                group["lr"] = step_lr
            _, loss = model(x, targets=y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            loss_value = loss.item()
            train_wall += time.perf_counter() - start

            tokens += x.numel()
            train_losses.append(loss_value)
            if not math.isfinite(loss_value):
                raise FloatingPointError(f"torch: train loss {loss_value} at step {step}")

            done = step + 1
            if val_batches and eval_every and done % eval_every == 0:
                run_eval(done)
            elif eval_every and done % eval_every == 0:
                log(f"torch: step {done} train loss {loss_value:.4f} lr {step_lr:.3g}")

        if val_batches and (not val_losses or val_losses[-1][0] != steps):
            run_eval(steps)
    finally:
        if threads is not None:
            torch.set_num_threads(previous_threads)

    result = {
        "train_losses": train_losses,
        "val_losses": val_losses,
        "final_val_loss": val_losses[-1][1] if val_losses else None,
        "train_wall_s": train_wall,
        "eval_wall_s": eval_wall,
        "tokens_per_s": tokens / train_wall,
        "params": n_params,
    }
    log(f"torch: {tokens / train_wall:,.0f} tokens/s over {train_wall:.2f}s, final train loss {train_losses[-1]:.4f}")
    return result


def _random_batches(rng: np.random.Generator, n: int, batch: int, seq: int, vocab: int) -> list:
    """`n` (inputs, targets) pairs cut from uniform random token streams, targets shifted by one."""
    out = []
    for _ in range(n):
        stream = rng.integers(0, vocab, size=(batch, seq + 1), dtype=np.int32)
        out.append((stream[:, :-1], stream[:, 1:]))
    return out


def _smoke() -> None:
    """Train the small config on random tokens and check the loss goes down.

    Uniform random tokens hold nothing to learn beyond the unigram floor ln(65) ~ 4.17,
    but the untrained model (N(0, 1) embeddings, tied to the LM head) starts far above
    it, so a falling loss still shows the optimizer, schedule and clipping are wired up.
    """
    vocab, batch, seq, steps = 65, 12, 64, 50
    rng = np.random.default_rng(0)
    train = _random_batches(rng, steps, batch, seq, vocab)
    val = _random_batches(rng, 4, batch, seq, vocab)
    model_kwargs = dict(vocab_size=vocab, max_seq_len=seq, d_model=128, num_layers=4, num_heads=4, d_ff=512)
    result = train_torch_gpt(
        model_kwargs, train, steps,
        lr=1e-3, min_lr=1e-4, warmup_steps=5, decay_steps=steps, beta1=0.9, beta2=0.99,
        weight_decay=0.1, grad_clip=1.0, val_batches=val, eval_every=25,
    )  # fmt: skip
    losses = result["train_losses"]
    print(f"params         {result['params']:,}")
    print(f"train wall     {result['train_wall_s']:.3f} s  (eval {result['eval_wall_s']:.3f} s)")
    print(f"tokens/s       {result['tokens_per_s']:,.0f}")
    print(f"train loss     first {losses[0]:.4f}  last {losses[-1]:.4f}  (floor ln {vocab} = {math.log(vocab):.4f})")
    print(f"val losses     {[(s, round(v, 4)) for s, v in result['val_losses']]}")
    assert len(losses) == steps
    assert np.mean(losses[-5:]) < np.mean(losses[:5]), "train loss did not decrease"
    assert result["val_losses"][0][1] > result["final_val_loss"], "val loss did not decrease"
    print("smoke run ok")


if __name__ == "__main__":
    _smoke()
