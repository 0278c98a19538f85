"""RLHF end to end on the shared data: an SFT run, a reward model trained from it
(`jaxllm reward`), then PPO (`jaxllm ppo`) against that reward model, resumed once."""

from __future__ import annotations

import math

import pytest

import jaxllm
from jaxllm.cli import main
from jaxllm.posttrain.ppo_loop import evaluate_policy
from jaxllm.train.load import load_run
from jaxllm.train.metrics import read_metrics
from tests.data_paths import SHARED_DATA
from tests.fixtures import PPO_SMALL, copy_run

INSTRUCTIONS = SHARED_DATA / "instructions" / "instruction-data.json"


def test_reward_then_ppo_cli_from_an_sft_checkpoint(shared_sft_run, shared_reward_run, shared_ppo_run, tmp_path,
                                                    capsys):  # fmt: skip
    sft_run = shared_sft_run  # SFT_SMALL (tests/fixtures.py): 1 layer, batch 8, 2 steps on PREFS; read only
    rm = shared_reward_run  # `jaxllm reward` of it, REWARD_SMALL: 4 steps
    out = (rm.parent / "stdout.txt").read_text()
    assert "score head starts at zero" in out and "reward held-out: pairwise accuracy" in out
    train = [r for r in read_metrics(rm) if r["split"] == "train"]
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # all rewards 0 at the start
    assert {"accuracy", "margin"} <= set(train[0])
    assert jaxllm.load_config(rm / "config.yaml").model.head == "scalar"

    # `jaxllm ppo` against it (PPO_SMALL), 8 steps in the shared run, then resumed on a copy
    out = (shared_ppo_run.parent / "stdout.txt").read_text()
    assert "2 rollouts of 16 prompts x 2 epochs of 2 minibatches" in out and "held-out reward" in out
    run = copy_run(shared_ppo_run, tmp_path / "ppo")
    ppo = ["ppo", str(sft_run), f"ppo.reward_from={rm}", *PPO_SMALL, f"train.out_dir={run}"]
    assert main([*ppo, "train.steps=12"]) == 0  # resumes: one more rollout
    out = capsys.readouterr().out
    assert "resumed from" in out and "(step 8, iteration 2," in out and "rollout 3 " in out
    rows = read_metrics(run)
    val = [r for r in rows if r["split"] == "val"]
    assert [r["step"] for r in val] == [0, 4, 8, 12]
    assert val[0]["kl"] == 0.0  # the policy is the reference before its first update
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [4, 8, 12] and train[2]["iteration"] == 3
    assert {"reward", "kl", "kl_coef", "policy_loss", "value_loss", "clip_frac", "entropy"} <= set(train[0])
    assert train[0]["kl_coef"] != 0.05  # the adaptive controller moved it
    cfg, params, step = load_run(run)  # the policy: a language model `jaxllm sample` can run
    assert step == 12 and cfg.model.head == "lm" and "score" not in params
    assert load_run(run / "critic")[0].model.head == "scalar"
    _, sft_params, _ = load_run(sft_run)
    stats, replies = evaluate_policy(cfg, sft_params, [[1, 2, 3], [4, 5]], seed=0)  # the reference itself
    assert stats["kl"] == 0.0 and len(replies) == 2 and 1 <= stats["reply_tokens"] <= 6

    assert main(["ppo", str(sft_run), f"posttrain.data={INSTRUCTIONS}", f"train.out_dir={tmp_path}/x"]) == 2
    assert "set ppo.reward_from=RUN_DIR" in capsys.readouterr().err
    assert main([*ppo[:-1], "ppo.rollout_batch=12", f"train.out_dir={tmp_path}/y"]) == 2
    assert "ppo.rollout_batch=12 is not a multiple of train.batch_size=8" in capsys.readouterr().err
