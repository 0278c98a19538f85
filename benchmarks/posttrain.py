"""Post-training on CPU: does instruction tuning teach a small pre-trained model to follow
instructions with checkable answers?

1. pre-train nanoGPT's CPU recipe on tiny Shakespeare (the quickstart run), or reuse one;
2. grade it on held-out synthetic instructions (reverse a word, add two numbers below
   50, uppercase a phrase; jaxllm/posttrain/synthetic.py): exact match of greedy replies;
3. instruction-tune it (`jaxllm sft` machinery, loss on replies only) on other records
   of the same kinds, grade again.

    python benchmarks/posttrain.py                      # ~10 min on 2 cores; writes BENCHMARKS.md
    python benchmarks/posttrain.py --base runs/quickstart/run --sft-steps 50 --no-write   # a quick look
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import write_section  # noqa: E402
from posttrain_rl import add_arguments, curve_table, grpo_phase, lora_phase  # noqa: E402

from jaxllm.posttrain.sft import sft, sft_config  # noqa: E402
from jaxllm.posttrain.synthetic import KINDS, exact_match, make_records  # noqa: E402
from jaxllm.train.load import load_run, load_run_tokenizer  # noqa: E402

# A compact template: the recipe's context is 64 characters.
TEMPLATE = ['chat.user="Q: {content}\\n"', 'chat.assistant="A: {content}|\\n"', "chat.system=\"S: {content}\\n\""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/bench-posttrain")
    ap.add_argument("--base", default=None, help="a pre-trained run to start from (default: train the quickstart)")
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument("--sft-steps", type=int, default=1500)
    ap.add_argument("--train-records", type=int, default=6000)
    ap.add_argument("--eval-records", type=int, default=300)
    ap.add_argument("--pref-records", type=int, default=6000, help="near-miss / off-task pairs")
    ap.add_argument("--policy-records", type=int, default=6000, help="prompts whose wrong samples make pairs")
    ap.add_argument("--off-task", type=float, default=0.3, help="share of preference pairs with an off-task rejection")
    ap.add_argument("--rm-steps", type=int, default=1500)
    ap.add_argument("--rm-batch", type=int, default=24)
    ap.add_argument("--dpo-steps", type=int, default=300)
    ap.add_argument("--dpo-lr", type=float, default=1e-5, help="1e-4 collapsed exact match 68%% -> 20%% in one run")
    ap.add_argument("--ppo-start-steps", type=int, default=600, help="SFT steps of the policy PPO starts from")
    ap.add_argument("--ppo-steps", type=int, default=640)
    ap.add_argument("--ppo-lr", type=float, default=2e-5)
    ap.add_argument("--critic-lr", type=float, default=3e-4)
    ap.add_argument("--rollout", type=int, default=64, help="prompts per PPO rollout (minibatch = rollout / 4)")
    ap.add_argument("--kl-coef", type=float, default=0.2, help="0.05 let PPO trade correctness for reward (KL ~1)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    add_arguments(ap)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    if args.base is None:
        from jaxllm.quickstart import quickstart

        base = quickstart(str(out / "base"), steps=args.pretrain_steps, from_dir=str(_shared()))
    else:
        base = Path(args.base)
    train_path, held_out = write_records(out, args.train_records, args.eval_records)
    per_kind = args.eval_records // 3

    base_cfg, base_params, base_step = load_run(base)
    tokenizer = load_run_tokenizer(base_cfg)
    cfg = sft_config(base, [*TEMPLATE, f"posttrain.data={train_path}", f"train.steps={args.sft_steps}",
                            "optimizer.warmup_steps=50", "train.eval_every=250", "train.log_every=100",
                            "train.checkpoint_every=100000", f"train.out_dir={out / 'sft'}"])  # fmt: skip
    before = exact_match(cfg, base_params, tokenizer, held_out)  # the base model, prompted the same way
    print(f"before SFT: {before}")
    shutil.rmtree(out / "sft", ignore_errors=True)  # a fresh run, never a resumed one
    t0 = time.perf_counter()
    result = sft(cfg)
    sft_time = time.perf_counter() - t0
    _, params, _ = load_run(result.run_dir)
    after = exact_match(cfg, params, tokenizer, held_out)
    print(f"after SFT:  {after}")
    lora_text = lora_phase(args, out, base, train_path, held_out, (after, cfg, sft_time))

    start_run = out / f"sft-{args.ppo_start_steps}"  # the same recipe stopped early: PPO's start
    shutil.rmtree(start_run, ignore_errors=True)
    sft(sft_config(base, [*TEMPLATE, f"posttrain.data={train_path}", f"train.steps={args.ppo_start_steps}",
                          "optimizer.warmup_steps=50", "train.eval_every=100000", "train.log_every=100",
                          "train.checkpoint_every=100000", f"train.out_dir={start_run}"]))  # fmt: skip
    prefs = _preference_phase(args, out, cfg, result.run_dir, tokenizer, held_out, start_run)
    grpo_text = grpo_phase(args, out, start_run, held_out)  # before PPO's table, which grades it too
    prefs += ["", *_ppo_phase(args, out, start_run, held_out), "", *grpo_text]

    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    kinds = ("all", "reverse", "add", "upper")
    rows = ["| | " + " | ".join(kinds) + " |", "| --- | --- | --- | --- | --- |"]
    for name, s in (("base model (quickstart run)", before), (f"after SFT ({args.sft_steps} steps)", after)):
        rows.append(f"| {name} | " + " | ".join(f"{s.get(k, 0):.1%}" for k in kinds) + " |")
    val = result.val_losses.get(result.step)
    body = [
        "## Instruction tuning on CPU (`python benchmarks/posttrain.py`)",
        "",
        f"Command: `{' '.join(['python', 'benchmarks/posttrain.py', *sys.argv[1:]])}`. Machine: {platform.machine()}, "
        f"{jax.devices()[0].platform}, 2 cores; jax {jax.__version__}; revision {rev}. "
        f"Total {time.perf_counter() - start:.0f} s; SFT {sft_time:.0f} s.",
        "",
        f"Base: nanoGPT's CPU recipe (4 x 128, context 64, char tokenizer) pre-trained on tiny Shakespeare "
        f"for {base_step} steps. SFT: {args.train_records} synthetic records (seed 1), loss on replies only, "
        f"{args.sft_steps} steps of batch {cfg.train.batch_size} x {cfg.data.seq_len}, packing on, AdamW lr "
        f"{cfg.optimizer.lr} (warmup 50, cosine); final val loss on reply tokens {val:.4f}. Template "
        "`Q: {instruction}\\n\\n{input}\\n` / `A: {reply}|\\n`.",
        "",
        f"Exact match of greedy replies on {len(held_out)} held-out records (seed 2, none of them in the training "
        f"set; {per_kind} of each task):",
        "",
        *rows,
    ]
    body += ["", *lora_text, "", *prefs]
    print("\n".join(body))
    if not args.no_write:
        write_section("posttrain_sft", "\n".join(body))


def write_records(out: Path, train_records: int, eval_records: int) -> tuple[Path, list[dict]]:
    """(out/sft-train.jsonl: `train_records` synthetic records, seed 1; `eval_records` held-out
    ones, seed 2, equal shares of each task, none of their prompts in the training file)."""
    train_path = out / "sft-train.jsonl"
    train_path.write_text("".join(json.dumps(r) + "\n" for r in make_records(train_records, seed=1)))
    seen = {(r["instruction"], r["input"]) for r in make_records(train_records, seed=1)}
    fresh = [r for r in make_records(4 * eval_records, seed=2) if (r["instruction"], r["input"]) not in seen]
    per_kind = eval_records // 3
    return train_path, [r for kind in KINDS for r in [x for x in fresh if x["kind"] == kind][:per_kind]]


def _rm_accuracy(cfg, params, tokenizer, records) -> dict[str, float]:
    """Pairwise accuracy of a reward model on `records`, overall and per kind, and the margin."""
    from jaxllm.posttrain.reward import accuracy_metrics, with_last_index

    def measure(recs):
        return accuracy_metrics(cfg, params, with_last_index(_pairs(cfg, tokenizer, recs))) if recs else {}

    overall = measure(records)
    out = {"all": overall["accuracy"], "margin": overall["margin"]}
    for k in KINDS:
        out[k] = measure([r for r in records if r["kind"] == k]).get("accuracy", float("nan"))
    return out


def _pairs(cfg, tokenizer, records) -> list:
    from jaxllm.posttrain.pairs import pair_batches, pair_rows

    rows = [pair_rows(tokenizer, cfg.chat, r, "record", cfg.data.seq_len) for r in records]
    return pair_batches(rows, cfg.train.batch_size, cfg.data.seq_len)


def _preference_phase(args, out: Path, sft_cfg, sft_run: Path, tokenizer, sft_held_out, start_run: Path) -> list[str]:
    """Reward model and DPO on correct-vs-wrong pairs, both from the SFT run, graded on
    held-out pairs none of which occur in training."""
    from jaxllm.posttrain.dpo import dpo, preference_metrics, with_reference
    from jaxllm.posttrain.reward import reward
    from jaxllm.posttrain.synthetic import make_preference_records, policy_preference_records

    _, start_params, _ = load_run(start_run)
    policy_recs = policy_preference_records(sft_cfg, start_params, tokenizer, make_records(args.policy_records, seed=6),
                                            seed=6)  # fmt: skip
    train_recs = make_preference_records(args.pref_records, seed=3, off_task=args.off_task) + policy_recs
    graded = {(r["instruction"], r["input"]) for r in sft_held_out}  # PPO is graded on these prompts: keep them unseen
    train_recs = [r for r in train_recs if (r["instruction"], r["input"]) not in graded]
    seen = {(r["instruction"], r["input"]) for r in train_recs}
    held_policy = policy_preference_records(sft_cfg, start_params, tokenizer, make_records(600, seed=9), seed=9)
    held_policy = [r for r in held_policy if (r["instruction"], r["input"]) not in seen]
    fresh = [r for r in make_preference_records(4 * args.eval_records, seed=4)
             if (r["instruction"], r["input"]) not in seen]  # fmt: skip
    per_kind = args.eval_records // 3
    held = [r for k in ("reverse", "add", "upper") for r in [x for x in fresh if x["kind"] == k][:per_kind]]
    path = out / "prefs-train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in train_recs))
    common = [*TEMPLATE, f"posttrain.data={path}", "posttrain.val_fraction=0.02", "optimizer.warmup_steps=20",
              "train.eval_every=100000", "train.log_every=50", "train.checkpoint_every=100000"]  # fmt: skip
    lines = [f"Preference learning from the SFT run on {len(train_recs)} pairs, chosen = the correct reply: "
             f"{args.pref_records} synthetic (seed 3; rejected = a near miss: a neighbouring-letter swap, a sum off "
             f"by 1-3, Title Case instead of UPPER CASE; or, for {args.off_task:.0%} of them, another task's answer "
             f"to the same input) and {len(policy_recs)} whose rejected reply is a wrong sample (temperature 1, up to "
             f"4 tries) of the policy PPO starts from, on {args.policy_records} prompts (seed 6). Graded on "
             f"{len(held)} held-out near-miss pairs ({per_kind} per task) and {len(held_policy)} held-out pairs of "
             "that policy's wrong samples (seed 9); none in training.", ""]

    shutil.rmtree(out / "reward", ignore_errors=True)
    rm_cfg = sft_config(sft_run, [*common, "model.head=scalar", f"train.steps={args.rm_steps}", "optimizer.lr=3e-4",
                                  f"train.batch_size={args.rm_batch}", "optimizer.warmup_steps=50",
                                  f"train.out_dir={out / 'reward'}"], suffix="reward")  # fmt: skip
    rm_result, _ = reward(rm_cfg)
    _, rm_params, _ = load_run(rm_result.run_dir)
    rm_near, rm_policy = _rm_accuracy(rm_cfg, rm_params, tokenizer, held), \
        _rm_accuracy(rm_cfg, rm_params, tokenizer, held_policy)  # fmt: skip

    shutil.rmtree(out / "dpo", ignore_errors=True)
    dpo_cfg = sft_config(sft_run, [*common, f"train.steps={args.dpo_steps}", f"optimizer.lr={args.dpo_lr}",
                                   f"train.out_dir={out / 'dpo'}"], suffix="dpo")  # fmt: skip
    _, sft_params, _ = load_run(sft_run)
    held_dpo = with_reference(dpo_cfg, sft_params, _pairs(dpo_cfg, tokenizer, held))
    # "prefers": log pi(chosen) > log pi(rejected), the policy's own preference (reference-free view)
    free = dataclasses.replace(dpo_cfg, posttrain=dataclasses.replace(dpo_cfg.posttrain, reference_free=True))
    prefers_before = preference_metrics(free, sft_params, held_dpo)
    dpo_result, _ = dpo(dpo_cfg)
    _, dpo_params, _ = load_run(dpo_result.run_dir)
    dpo_after = preference_metrics(dpo_cfg, dpo_params, held_dpo)
    prefers_after = preference_metrics(free, dpo_params, held_dpo)
    em_after = exact_match(sft_cfg, dpo_params, tokenizer, sft_held_out)

    lines += [
        "| held-out pairs | pairwise accuracy | margin | reverse | add | upper |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| reward model ({args.rm_steps} steps of {args.rm_batch} pairs, lr 3e-4, from SFT) | "
        f"{rm_near['all']:.1%} | {rm_near['margin']:.3f} (r_chosen − r_rejected) | "
        + " | ".join(f"{rm_near[k]:.1%}" for k in KINDS) + " |",
        f"| reward model, on the PPO start policy's held-out wrong samples | {rm_policy['all']:.1%} | "
        f"{rm_policy['margin']:.3f} | " + " | ".join(f"{rm_policy[k]:.1%}" for k in KINDS) + " |",
        f"| DPO after {args.dpo_steps} steps (beta {dpo_cfg.posttrain.beta}, lr {args.dpo_lr:g}): implicit reward "
        f"(starts at 0.0% / 0 by construction) | {dpo_after['accuracy']:.1%} | {dpo_after['margin']:.4f} | | | |",
        f"| SFT policy: log π(chosen) > log π(rejected) | {prefers_before['accuracy']:.1%} | "
        f"{prefers_before['margin']:.4f} (β x log-ratio) | | | |",
        f"| DPO policy: log π(chosen) > log π(rejected) | {prefers_after['accuracy']:.1%} | "
        f"{prefers_after['margin']:.4f} | | | |",
        "",
        f"Exact match of the DPO policy on the SFT held-out records: {em_after['all']:.1%} (reverse "
        f"{em_after['reverse']:.1%}, add {em_after['add']:.1%}, upper {em_after['upper']:.1%}).",
    ]
    return lines


def _ppo_phase(args, out: Path, start: Path, held_out: list) -> list[str]:
    """PPO against the reward model, from an SFT policy with room to improve (the same
    recipe stopped early), graded on the SFT held-out records by the reward model (the
    objective) and by exact match (the truth the reward model stands in for)."""
    import numpy as np

    from jaxllm.posttrain.data import prompt_messages, tokenize_prompt
    from jaxllm.posttrain.ppo_loop import evaluate_policy, ppo
    from jaxllm.train.metrics import read_metrics

    seen = {(r["instruction"], r["input"]) for r in held_out}
    prompts = [r for r in make_records(3000, seed=5) if (r["instruction"], r["input"]) not in seen]
    path = out / "ppo-prompts.jsonl"
    path.write_text("".join(json.dumps({"instruction": r["instruction"], "input": r["input"]}) + "\n" for r in prompts))
    shutil.rmtree(out / "ppo", ignore_errors=True)
    cfg = sft_config(start, [*TEMPLATE, f"posttrain.data={path}", f"ppo.reward_from={out / 'reward'}",
                             "posttrain.val_fraction=0.04", "ppo.eval_prompts=120", f"train.steps={args.ppo_steps}",
                             f"train.batch_size={args.rollout // 4}", f"ppo.rollout_batch={args.rollout}",
                             f"optimizer.lr={args.ppo_lr}",
                             "optimizer.warmup_steps=0", f"ppo.critic_lr={args.critic_lr}", "ppo.critic_warmup=4",
                             "ppo.max_new_tokens=16", f"ppo.kl_coef={args.kl_coef}", "train.eval_every=64",
                             "train.checkpoint_every=100000", f"train.out_dir={out / 'ppo'}"],
                     suffix="ppo")  # fmt: skip
    t0 = time.perf_counter()
    result = ppo(cfg)
    ppo_time = time.perf_counter() - t0
    curve = [r for r in read_metrics(result.run_dir) if r["split"] == "val"]

    tokenizer = load_run_tokenizer(load_run(start)[0])
    ids = [tokenize_prompt(tokenizer, cfg.chat, prompt_messages(r, "record")) for r in held_out]
    rows = []
    for name, run in ((f"SFT, {args.ppo_start_steps} steps (PPO's start and reference)", start),
                      (f"after PPO ({args.ppo_steps} policy steps)", result.run_dir),
                      (f"after GRPO ({args.ppo_steps} policy steps, PPO's rollouts)", out / "grpo"),
                      (f"after GRPO ({args.ppo_steps} policy steps, on-policy, 4x the rollouts)",
                       out / "grpo-onpolicy"),
                      (f"SFT, {args.sft_steps} steps (for comparison)", out / "sft")):  # fmt: skip
        _, params, _ = load_run(run)
        stats, replies = evaluate_policy(cfg, params, ids, seed=11)
        ok = {k: float(np.mean([rep.strip() == r["output"] for rep, r in zip(replies, held_out, strict=True)
                                if r["kind"] == k])) for k in ("reverse", "add", "upper")}  # fmt: skip
        greedy = exact_match(cfg, params, tokenizer, held_out)
        rows.append(f"| {name} | {stats['reward']:.3f} | {stats['kl']:.3f} | "
                    + " | ".join(f"{ok[k]:.0%}" for k in ("reverse", "add", "upper"))
                    + f" | {greedy['all']:.1%} |")  # fmt: skip
    return [
        f"PPO (`jaxllm ppo`, {ppo_time:.0f} s): the policy starts from the same SFT recipe stopped at "
        f"{args.ppo_start_steps} steps (room to improve) and learns against the reward model above; "
        f"{len(prompts)} synthetic prompts (seed 5, none of the held-out records), rollouts of {args.rollout} at "
        f"temperature 1, 4 epochs of minibatch {args.rollout // 4}, lr {args.ppo_lr:g}, critic lr {args.critic_lr:g} "
        "(4 warm-up rollouts), "
        f"kl_coef {args.kl_coef:g}, scores normalised on the start policy. Held-out curve (120 prompts of the PPO "
        "split, the same seeded samples each time; reward = raw reward-model score, KL = Σ log π − log π_ref "
        "per reply):",
        "",
        *curve_table(curve, [("reward", "reward", "{:.2f}"), ("KL", "kl", "{:.2f}")]),
        "",
        f"On the {len(held_out)} SFT held-out records: one sampled reply each (temperature 1, seed 11), its reward "
        "and KL to PPO's start, and the share of sampled replies that are right; then greedy exact match:",
        "",
        "| policy | mean reward | KL to start | reverse (sampled) | add (sampled) | upper (sampled) | greedy exact |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *rows,
    ]


def _shared() -> Path:
    return Path(__file__).resolve().parents[2] / "shared" / "data"


if __name__ == "__main__":
    main()
