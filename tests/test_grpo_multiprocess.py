"""GRPO on two loopback processes (4 CPU devices each, joined by jax.distributed into one
8-device mesh) equals GRPO in one process on 8 devices: every process samples, rewards and
scores the whole rollout alike and trains on its own rows of each minibatch."""

from __future__ import annotations

import pytest

from tests.test_grpo import grpo_args
from tests.test_multiprocess import KL_ABS, one_and_two_processes


def test_grpo_on_two_processes_equals_one(grpo_sft, tmp_path):
    run, data = grpo_sft
    # Two rollouts of 2 minibatches, the second rollout after a checkpoint (train.checkpoint_every=2).
    args = ["grpo", str(run), *grpo_args(data), "train.steps=4"]
    one, two = one_and_two_processes(args, tmp_path)
    assert set(one) == set(two)
    assert {("train", s) for s in (1, 2, 3, 4)} | {("val", 0), ("val", 2), ("val", 4)} <= set(one)
    assert "reward" in one[("train", 2)] and "reward" in one[("train", 4)]  # each rollout's figures
    assert all(row["policy_loss"] != 0.0 for key, row in one.items() if key[0] == "train")  # not a trivial match
    for key, row in one.items():
        for name in ("policy_loss", "clip_frac", "kl", "reward", "rollout_kl", "flat_groups", "reply_tokens"):
            if name in row:
                floor = KL_ABS if name in ("kl", "rollout_kl") else 1e-7
                assert two[key][name] == pytest.approx(row[name], rel=1e-5, abs=floor), (key, name)
