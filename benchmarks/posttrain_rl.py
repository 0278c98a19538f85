"""LoRA SFT beside full SFT, and GRPO beside PPO, on the synthetic tasks (CPU).

The phases of `python benchmarks/posttrain.py` that came with LoRA and GRPO; that script
runs them in the same session as its SFT and PPO runs (side by side, one machine, one
load), and this file can also run the LoRA phase alone for a quick look:

    python benchmarks/posttrain_rl.py --base runs/bench-posttrain/base/run --out runs/bench-lora

LoRA: the same records, steps, batch and schedule as full SFT; rank, alpha and learning
rate as given (LoRA wants a larger step than full tuning: the adapters start at B = 0).
Reported: held-out greedy exact match, trainable parameters and optimizer-state bytes of
both, and wall time. GRPO: from the same SFT policy PPO starts from, on the same prompts,
with the same rollout size (prompts x group = PPO's rollout), epochs, minibatch and number
of policy updates; reward = exact match of the sampled reply (the checkable answer), and
the same held-out evaluation as PPO's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from jaxllm.config import Config  # noqa: E402
from jaxllm.model import lora  # noqa: E402
from jaxllm.model.api import param_shapes  # noqa: E402
from jaxllm.posttrain.sft import sft, sft_config  # noqa: E402
from jaxllm.posttrain.synthetic import exact_match, make_records  # noqa: E402
from jaxllm.train.load import load_run, load_run_tokenizer  # noqa: E402
from jaxllm.train.optimizer import make_optimizer  # noqa: E402

KINDS = ("all", "reverse", "add", "upper")


def sft_overrides(train_path: Path, steps: int, out: Path) -> list[str]:
    """The benchmark's SFT recipe (as benchmarks/posttrain.py runs it)."""
    from posttrain import TEMPLATE

    return [*TEMPLATE, f"posttrain.data={train_path}", f"train.steps={steps}", "optimizer.warmup_steps=50",
            "train.eval_every=250", "train.log_every=100", "train.checkpoint_every=100000",
            f"train.out_dir={out}"]  # fmt: skip


def memory(cfg: Config) -> tuple[int, int, int]:
    """(trainable parameters, all parameters, optimizer-state bytes) of a run's config."""
    shapes = param_shapes(cfg.model)
    trainable = lora.split(cfg.model, shapes)[0]
    state = jax.eval_shape(make_optimizer(cfg.optimizer, cfg.model).init, shapes)
    n_train = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(trainable))
    n_all = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
    return n_train, n_all, sum(int(np.prod(s.shape)) * s.dtype.itemsize for s in jax.tree.leaves(state))


def lora_phase(args, out: Path, base: Path, train_path: Path, held_out: list, full: tuple[dict, Config, float]) -> list:
    """LoRA SFT with the full SFT's recipe; `full` = (its exact match, its config, its seconds)."""
    full_em, full_cfg, full_time = full
    run = out / "sft-lora"
    shutil.rmtree(run, ignore_errors=True)
    cfg = sft_config(base, [*sft_overrides(train_path, args.sft_steps, run), f"model.lora.rank={args.lora_rank}",
                            f"model.lora.alpha={args.lora_alpha}", f"optimizer.lr={args.lora_lr}"])  # fmt: skip
    t0 = time.perf_counter()
    result = sft(cfg)
    seconds = time.perf_counter() - t0
    tcfg, params, _ = load_run(result.run_dir)
    em = exact_match(tcfg, params, load_run_tokenizer(tcfg), held_out)
    print(f"after LoRA SFT: {em}")
    (ft, fa, fm), (lt, _, lm) = memory(full_cfg), memory(cfg)
    rows = []
    for name, s, t, n, m in ((f"full SFT (lr {full_cfg.optimizer.lr:g})", full_em, full_time, ft, fm),
                             (f"LoRA SFT (rank {args.lora_rank}, alpha {args.lora_alpha:g}, lr {args.lora_lr:g}, "
                              "q/k/v/o/up/down)", em, seconds, lt, lm)):  # fmt: skip
        rows.append(f"| {name} | " + " | ".join(f"{s.get(k, 0):.1%}" for k in KINDS)
                    + f" | {n:,} ({n / fa:.1%}) | {m / 1024:,.0f} KiB | {t:.0f} s |")  # fmt: skip
    return [
        f"LoRA beside full SFT: the same {args.sft_steps} steps, records, batch and schedule from the same base; the "
        "base frozen (bit-identical after training), the adapters trained (B = 0 at the start, so step 1's loss is "
        "the base model's). Exact match of greedy replies on the same held-out records; trainable parameters; "
        "AdamW state (mu and nu):",
        "",
        "| SFT | " + " | ".join(KINDS) + " | trainable parameters | optimizer state | time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        *rows,
        "",
        f"LoRA's exact match is {em['all'] - full_em['all']:+.1%} (points) from full SFT's with "
        f"{lt / ft:.1%} of the trainable parameters and {lm / fm:.1%} of the optimizer memory.",
    ]


def curve_table(curve: list[dict], series: list[tuple[str, str, str]]) -> list[str]:
    """A Markdown table of held-out records by step: one row per (label, metrics key, format);
    a key a record lacks (no KL without a reference) reads 0."""
    return ["| step | " + " | ".join(str(r["step"]) for r in curve) + " |",
            "| --- | " + " | ".join("---" for _ in curve) + " |",
            *(f"| {label} | " + " | ".join(fmt.format(r.get(key, 0.0)) for r in curve) + " |"
              for label, key, fmt in series)]  # fmt: skip


GRPO_VARIANTS = (  # (run name, epochs, what the row says)
    ("grpo", 4, "PPO's budget: the same rollouts and updates"),
    ("grpo-onpolicy", 1, "the same updates, on-policy: 1 epoch per rollout, so 4x the rollouts"),
)


def grpo_phase(args, out: Path, start: Path, held_out: list) -> list[str]:
    """GRPO with the exact-match reward from PPO's start on PPO's prompts, at PPO's budget and
    on-policy (GRPO_VARIANTS): each run's held-out curve."""
    from posttrain import TEMPLATE

    from jaxllm.posttrain.grpo_loop import grpo
    from jaxllm.train.metrics import read_metrics

    seen = {(r["instruction"], r["input"]) for r in held_out}
    prompts = [r for r in make_records(3000, seed=5) if (r["instruction"], r["input"]) not in seen]
    path = out / "grpo-prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in prompts))
    group, text = args.grpo_group, []
    for name, epochs, what in GRPO_VARIANTS:
        shutil.rmtree(out / name, ignore_errors=True)
        cfg = sft_config(start, [*TEMPLATE, f"posttrain.data={path}", "posttrain.val_fraction=0.04",
                                 "grpo.eval_prompts=120", f"train.steps={args.ppo_steps}",
                                 f"train.batch_size={args.rollout // 4}", f"grpo.group_size={group}",
                                 f"grpo.prompts_per_rollout={args.rollout // group}", f"grpo.epochs={epochs}",
                                 f"optimizer.lr={args.grpo_lr}", "optimizer.warmup_steps=0", "grpo.max_new_tokens=16",
                                 f"grpo.kl_coef={args.grpo_kl}", "train.eval_every=64",
                                 "train.checkpoint_every=100000", f"train.out_dir={out / name}"],
                         suffix="grpo")  # fmt: skip
        t0 = time.perf_counter()
        result = grpo(cfg)
        seconds = time.perf_counter() - t0
        curve = [r for r in read_metrics(result.run_dir) if r["split"] == "val"]
        rollouts, prompts_each = args.ppo_steps // (epochs * 4), args.rollout // group
        text += [
            f"GRPO, {what} (`jaxllm grpo`, {seconds:.0f} s, run {name}): {rollouts} rollouts of {prompts_each} "
            f"prompts x {group} replies = {args.rollout} at temperature 1, {epochs} epoch(s) of minibatch "
            f"{args.rollout // 4}, {args.ppo_steps} policy updates, lr {args.grpo_lr:g}, kl_coef {args.grpo_kl:g} (k3, "
            "in the loss); reward 1 when the reply is the right answer, else 0; no reward model, no critic. Held-out "
            "curve (greedy exact match and k3 KL per token on 118 prompts of the GRPO split):",
            "",
            *curve_table(curve, [("exact match", "reward", "{:.3f}"), ("KL", "kl", "{:.3f}")]),
            "",
        ]
    return text[:-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="a pre-trained run (benchmarks/posttrain.py's base)")
    ap.add_argument("--out", default="runs/bench-lora")
    ap.add_argument("--sft-steps", type=int, default=1500)
    add_arguments(ap)  # GRPO's budget flags (--rollout, --ppo-steps) are benchmarks/posttrain.py's
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from posttrain import write_records

    train_path, held_out = write_records(out, 6000, 300)
    shutil.rmtree(out / "sft", ignore_errors=True)
    cfg = sft_config(args.base, sft_overrides(train_path, args.sft_steps, out / "sft"))
    t0 = time.perf_counter()
    result = sft(cfg)
    seconds = time.perf_counter() - t0
    tcfg, params, _ = load_run(result.run_dir)
    full = (exact_match(tcfg, params, load_run_tokenizer(tcfg), held_out), cfg, seconds)
    print("\n".join(lora_phase(args, out, Path(args.base), train_path, held_out, full)))


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The LoRA and GRPO flags (benchmarks/posttrain.py takes them too, beside its --rollout and
    --ppo-steps, which GRPO's budget follows)."""
    ap.add_argument("--lora-rank", type=int, default=16)
    ap.add_argument("--lora-alpha", type=float, default=32.0)
    ap.add_argument("--lora-lr", type=float, default=3e-3)
    ap.add_argument("--grpo-group", type=int, default=8)
    ap.add_argument("--grpo-lr", type=float, default=2e-5)
    ap.add_argument("--grpo-kl", type=float, default=0.04)


if __name__ == "__main__":
    main()
