"""GRPO: the advantages and the three loss normalisations against hand computation, the
rewards, and `jaxllm grpo` (python API and CLI) on a tiny model SFT-trained on synthetic
records, stopped and resumed like an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.config import ConfigError, save_config
from jaxllm.posttrain import grpo as G
from jaxllm.posttrain.rewards import exact_match, reward_function
from jaxllm.train.metrics import read_metrics

# ----------------------------------------------------------------------------- the math by hand


def _advantages_by_hand(rewards: list[float], group: int, scale: str) -> list[float]:
    out = []
    for start in range(0, len(rewards), group):
        rs = rewards[start : start + group]
        mean = sum(rs) / len(rs)
        std = math.sqrt(sum((r - mean) ** 2 for r in rs) / (len(rs) - 1))
        out += [(r - mean) / (std + 1e-4) if scale == "group" else r - mean for r in rs]
    return out


@pytest.mark.parametrize("scale", ["group", "none"])
def test_group_advantages_equal_a_hand_computation(scale):
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 3.0, -1.0, 2.0, 0.25]  # 3 groups of 4, the middle one flat
    got = np.asarray(G.group_advantages(jnp.asarray(rewards), 4, scale))
    np.testing.assert_allclose(got, _advantages_by_hand(rewards, 4, scale), rtol=1e-5, atol=1e-6)
    assert np.all(got[4:8] == 0)  # a flat group teaches nothing
    assert float(G.flat_groups(jnp.asarray(rewards), 4)) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="scale='groups'"):
        G.group_advantages(jnp.asarray(rewards), 4, "groups")


def _loss_by_hand(logp, old, ref, adv, mask, clip_low, clip_high, kl_coef, norm, max_new):
    """Per-token surrogate plus kl_coef * k3, then the normalisation, with plain loops."""
    rows, total, row_means, tokens = logp.shape[0], 0.0, [], 0
    for b in range(rows):
        row = []
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            ratio = math.exp(logp[b, t] - old[b, t])
            clipped_ratio = min(max(ratio, 1 - clip_low), 1 + clip_high)
            loss = -min(ratio * adv[b], clipped_ratio * adv[b])
            if ref is not None:
                d = ref[b, t] - logp[b, t]
                loss += kl_coef * (math.exp(d) - d - 1)
            row.append(loss)
        total += sum(row)
        tokens += len(row)
        if row:
            row_means.append(sum(row) / len(row))
    if norm == "sequence":
        return sum(row_means), len(row_means)
    if norm == "token":
        return total, tokens
    return total, rows * max_new


@pytest.mark.parametrize("norm", ["sequence", "token", "constant"])
@pytest.mark.parametrize("with_kl", [False, True])
def test_the_loss_equals_a_hand_computation_and_splits_exactly(norm, with_kl):
    rng = np.random.default_rng(3)
    B, T = 6, 7
    logp = rng.normal(-2.0, 0.5, (B, T))
    old = logp + rng.normal(0.0, 0.3, (B, T))  # ratios on both sides of the clip range
    ref = logp + rng.normal(0.0, 0.5, (B, T)) if with_kl else None
    adv = np.asarray(G.group_advantages(jnp.asarray(rng.normal(size=B)), 3))
    mask = np.zeros((B, T))
    for b, (start, n) in enumerate([(1, 4), (2, 5), (0, 7), (3, 1), (1, 3), (4, 2)]):
        mask[b, start : start + n] = 1.0  # replies of different lengths after prompts of different lengths
    args = (0.2, 0.28, 0.05)

    def loss(rows):
        losses, _, _ = G.token_terms(jnp.asarray(logp[rows]), jnp.asarray(old[rows]), jnp.asarray(adv[rows]), *args,
                                     None if ref is None else jnp.asarray(ref[rows]))  # fmt: skip
        return G.normalise(losses, jnp.asarray(mask[rows]), norm, max_new_tokens=7)

    s, c = loss(np.arange(B))
    hand_s, hand_c = _loss_by_hand(logp, old, ref, adv, mask, *args, norm, 7)
    assert float(c) == hand_c
    assert float(s) == pytest.approx(hand_s, rel=1e-5)
    # Any split of the rows (microbatches, processes) sums to the same pair: one division is exact.
    parts = [loss(np.array(rows)) for rows in ([0, 4], [1, 2, 3, 5])]
    assert float(sum(p[0] for p in parts)) == pytest.approx(float(s), rel=1e-5)
    assert float(sum(p[1] for p in parts)) == float(c)


def test_k3_and_the_clip_indicator():
    logp, ref = jnp.array([[-1.0, -2.0]]), jnp.array([[-1.0, -1.5]])
    np.testing.assert_allclose(np.asarray(G.k3_kl(logp, ref)), [[0.0, math.exp(0.5) - 0.5 - 1]], rtol=1e-6)
    # ratio e^0.5 > 1 + 0.28 with A > 0: clipped; ratio e^-0.5 < 1 - 0.2 with A < 0: clipped; ratio 1: not
    old = jnp.array([[-0.5, 0.5, -1.0]])
    new = jnp.array([[0.0, 0.0, -1.0]])
    _, clipped, kl = G.token_terms(new, old, jnp.array([1.0]), 0.2, 0.28)
    assert clipped.tolist() == [[1.0, 0.0, 0.0]] and float(kl.sum()) == 0.0  # no reference, no KL
    _, clipped, _ = G.token_terms(new, old, jnp.array([-1.0]), 0.2, 0.28)
    assert clipped.tolist() == [[0.0, 1.0, 0.0]]


# ----------------------------------------------------------------------------- rewards


def capitals(record: dict, reply: str) -> float:
    """A test reward with signal for an untrained model: the share of the reply's characters
    that are capitals (the fixture's task uppercases phrases)."""
    return sum(ch.isupper() for ch in reply) / max(len(reply), 1)


def test_reward_functions_and_their_errors():
    assert exact_match({"output": "ABC"}, " ABC ") == 1.0 and exact_match({"output": "ABC"}, "AB") == 0.0
    assert reward_function("exact_match") is exact_match
    assert reward_function("tests.test_grpo:capitals")({}, "AbC") == pytest.approx(2 / 3)
    with pytest.raises(ConfigError, match="module 'no_such_module_x' cannot be imported"):
        reward_function("no_such_module_x:f")
    with pytest.raises(ConfigError, match="grpo.reward='tests.test_grpo:nothing'.*no function 'nothing'"):
        reward_function("tests.test_grpo:nothing")
    with pytest.raises(ConfigError, match="grpo.reward=':f' is neither"):
        reward_function(":f")


def test_prompts_keep_their_records_and_exact_match_needs_outputs(tmp_path):
    from jaxllm.data.tokenizer import load_tokenizer
    from jaxllm.errors import DataError
    from jaxllm.posttrain.rewards import load_prompt_items

    records = [{"instruction": "upper", "input": f"word{i}", "output": f"WORD{i}"} for i in range(10)]
    data = tmp_path / "tasks.json"
    data.write_text(json.dumps(records))
    cfg = jaxllm.load_config("shakespeare-char", [f"posttrain.data={data}", "posttrain.val_fraction=0.2",
                                                  "grpo.eval_prompts=1", "chat.enabled=true"])  # fmt: skip
    tok = load_tokenizer("byte")
    train, val = load_prompt_items(cfg, tok)
    assert len(train) == 8 and len(val) == 1  # 2 held out, cut to grpo.eval_prompts
    for item in train + val:
        assert tok.decode(item.ids).count(item.record["input"]) == 1  # each prompt asks its own record's question
    data.write_text(json.dumps([*records, {"instruction": "upper", "input": "x"}]))
    with pytest.raises(DataError, match="record 10 has no string 'output' for grpo.reward=exact_match"):
        load_prompt_items(cfg, tok)
    custom = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, reward="tests.test_grpo:capitals"))
    assert len(load_prompt_items(custom, tok)[0]) == 9  # a reward function of its own needs no output


# ----------------------------------------------------------------------------- runs


def grpo_args(data: Path, *extra: str) -> list[str]:
    """A small GRPO run: rollouts of 4 prompts x 4 replies, 2 minibatches of 8 rows per rollout."""
    return [f"posttrain.data={data}", "posttrain.val_fraction=0.1", "grpo.group_size=4", "grpo.prompts_per_rollout=4",
            "grpo.max_new_tokens=8", "grpo.eval_prompts=8", "grpo.reward=tests.test_grpo:capitals",
            "grpo.clip_high=0.28", "optimizer.lr=1e-2", "optimizer.warmup_steps=0", "train.eval_every=2",
            "train.checkpoint_every=2", "train.tensorboard=false", *extra]  # fmt: skip


@pytest.fixture
def sft(grpo_sft) -> tuple[Path, Path]:
    return grpo_sft


def test_grpo_api_and_cli_resume_like_an_uninterrupted_run(sft, tmp_path, capsys):
    from jaxllm.cli import main
    from jaxllm.posttrain.grpo_loop import grpo
    from jaxllm.posttrain.sft import sft_config
    from jaxllm.train.load import load_run

    run, data = sft
    whole = grpo(sft_config(run, [*grpo_args(data), "train.steps=4", f"train.out_dir={tmp_path}/whole"]), log=print)
    out = capsys.readouterr().out
    assert "2 rollouts of 4 prompts x 4 replies x 1 epochs of 2 minibatches" in out and "flat groups" in out
    assert sorted(whole.train_losses) == [1, 2, 3, 4] and sorted(whole.val_losses) == [0, 2, 4]
    rows = read_metrics(tmp_path / "whole")
    train = {r["step"]: r for r in rows if r["split"] == "train"}
    assert train[1]["ratio"] == pytest.approx(1.0, abs=1e-4) and train[1]["clip_frac"] == 0.0  # on-policy at first
    assert all(r["policy_loss"] != 0.0 for r in train.values())  # the capitals reward gives signal
    rollouts = [r for r in train.values() if "reward" in r]  # a rollout's figures: on its last update's row
    assert [r["step"] for r in rollouts] == [2, 4] and all(r["flat_groups"] < 1 for r in rollouts)
    assert all(r["rollout_kl"] >= 0.0 and 0 < r["reply_tokens"] <= 8 for r in rollouts)
    from jaxllm.viz.curves import panels

    assert panels(rows) == ["reward", "kl", "lr", "iteration_s"]  # `jaxllm plot` draws it as a PPO run
    val = {r["step"]: r for r in rows if r["split"] == "val"}
    assert val[0]["kl"] == 0.0 and val[4]["kl"] > 0.0  # the reference is the start; the policy moved

    # The same run stopped after its first rollout (the API's stop_after), resumed by the CLI.
    cli = ["grpo", str(run), *grpo_args(data), "train.steps=4", f"train.out_dir={tmp_path}/resumed"]
    first = grpo(sft_config(run, cli[2:]), log=print, stop_after=2)
    assert sorted(first.train_losses) == [1, 2]
    assert main(cli) == 0
    assert "resumed from" in capsys.readouterr().out
    resumed = [r for r in read_metrics(tmp_path / "resumed") if r["split"] in ("train", "val")]
    assert sorted((r["split"], r["step"]) for r in resumed) == sorted(
        (r["split"], r["step"]) for r in rows if r["split"] in ("train", "val"))  # fmt: skip
    for r in resumed:
        if r["split"] == "train":
            for name in ("policy_loss", "reward", "rollout_kl"):
                if name in train[r["step"]]:
                    assert r[name] == pytest.approx(train[r["step"]][name], rel=1e-6), (r["step"], name)
        if r["split"] == "val":
            assert r["reward"] == pytest.approx(whole.val_losses[r["step"]], rel=1e-6), r["step"]
    cfg, _, step = load_run(tmp_path / "resumed")  # the policy: a language model `jaxllm sample` can run
    assert step == 4 and cfg.model.head == "lm" and cfg.model.dropout == 0.0 and cfg.chat.enabled


def test_grpo_raises_the_reward(sft, tmp_path):
    """12 rollouts of 2 prompts x 4 replies, one update each: the share of capitals in the
    replies rises (measured at seeds 0, 1, 2: from about 0.2 to 0.35-0.5). A sign or row-order
    error between advantages and replies would lower it or leave it flat."""
    from jaxllm.posttrain.grpo_loop import grpo
    from jaxllm.posttrain.sft import sft_config

    run, data = sft
    overrides = [*grpo_args(data), "grpo.prompts_per_rollout=2", "optimizer.lr=1e-2", "train.steps=12",
                 "train.eval_every=1000", "train.checkpoint_every=1000", f"train.out_dir={tmp_path}"]  # fmt: skip
    grpo(sft_config(run, overrides), log=lambda _: None)
    rewards = [r["reward"] for r in read_metrics(tmp_path) if r["split"] == "train" and "reward" in r]
    assert len(rewards) == 12
    assert np.mean(rewards[-4:]) > np.mean(rewards[:4]) + 0.05, rewards


def test_grpo_with_lora_without_kl_and_token_norm(sft, tmp_path, capsys):
    """kl_coef=0 keeps no reference (no KL anywhere); with model.lora only the adapters train
    (saved on their own too), the base stays the SFT run's."""
    from flax.traverse_util import flatten_dict

    from jaxllm.cli import main
    from jaxllm.train.load import load_run

    run, data = sft
    argv = ["grpo", str(run), *grpo_args(data), "grpo.kl_coef=0", "grpo.loss_norm=token", "grpo.scale_rewards=none",
            "grpo.epochs=2", "train.steps=4", "model.lora.rank=4", "model.lora.dropout=0.1",
            f"train.out_dir={tmp_path}/nokl"]  # fmt: skip
    assert main(argv) == 0
    cfg, params, _ = load_run(tmp_path / "nokl")
    assert cfg.model.lora.rank == 4 and cfg.model.lora.dropout == 0.0  # dropout off: the ratio must not be noise
    assert (tmp_path / "nokl" / "adapter" / "adapter.safetensors").is_file()
    base, tuned = flatten_dict(load_run(run)[1]), flatten_dict(params)
    assert all(np.array_equal(v, tuned[k]) for k, v in base.items())  # the base is frozen
    adapters = {k: v for k, v in tuned.items() if k[-1] == "lora_b"}
    assert adapters and any(np.abs(v).max() > 0 for v in adapters.values())  # B starts at 0: the adapters moved
    out = capsys.readouterr().out
    assert "held-out reward" in out and "policy from" in out and "reference" not in out
    rows = read_metrics(tmp_path / "nokl")
    assert all("kl" not in r and "rollout_kl" not in r for r in rows if r["split"] in ("train", "val"))
    assert [r["step"] for r in rows if "reward" in r and r["split"] == "train"] == [4]  # 2 epochs x 2 minibatches


@pytest.mark.parametrize(
    "override,message",
    [
        ("grpo.group_size=1", "grpo.group_size=1 must be >= 2"),
        ("grpo.loss_norm=mean", "grpo.loss_norm='mean' is not one of sequence, token, constant"),
        ("grpo.scale_rewards=batch", "grpo.scale_rewards='batch' is not one of group, none"),
        ("grpo.reward=score", "grpo.reward='score' is neither 'exact_match' nor 'module:function'"),
        ("grpo.reward=no_such_module_x:f", "grpo.reward='no_such_module_x:f': module 'no_such_module_x'"),
        ("grpo.prompts_per_rollout=3", "grpo.prompts_per_rollout=3 x grpo.group_size=4 = 12 rows is not a multiple "
         "of train.batch_size=8 (the minibatch); use e.g. grpo.prompts_per_rollout=4"),
    ],
)  # fmt: skip
def test_bad_config_values_are_named_with_their_fix(tmp_path, capsys, override, message):
    from jaxllm.cli import main

    run = tmp_path / "start"  # never read: every check comes before anything is loaded
    run.mkdir()
    save_config(jaxllm.load_config("shakespeare-char"), run / "config.yaml")
    argv = ["grpo", str(run), *grpo_args(tmp_path / "tasks.jsonl"), "train.batch_size=8", override]
    assert main([*argv, f"train.out_dir={tmp_path}/x"]) == 2
    assert message in capsys.readouterr().err


def test_a_reward_model_scores_each_reply_at_its_last_token(shared_sft_run, shared_reward_run, tmp_path):
    """grpo.reward_from: the reward model's value at each reply's last token (the stop string),
    against the model run on each row cut there; then a run against it; then its errors."""
    from jaxllm.generation import Generation
    from jaxllm.model.decoder import Decoder
    from jaxllm.parallel.layout import Layout
    from jaxllm.parallel.mesh import make_mesh
    from jaxllm.posttrain.grpo_loop import grpo, grpo_config
    from jaxllm.posttrain.rewards import Rewards
    from jaxllm.posttrain.rollout import build_rollout
    from jaxllm.posttrain.sft import run_tokenizer, sft_config
    from jaxllm.train.load import load_run
    from tests.fixtures import INSTRUCTIONS

    base = [f"posttrain.data={INSTRUCTIONS}", "posttrain.val_fraction=0.01", "grpo.group_size=2",
            "grpo.prompts_per_rollout=4", "grpo.max_new_tokens=6", "grpo.eval_prompts=4", "train.batch_size=8",
            "train.steps=1", "train.eval_every=1", "train.checkpoint_every=1", "train.tensorboard=false"]  # fmt: skip
    cfg = grpo_config(sft_config(shared_sft_run, [*base, f"grpo.reward_from={shared_reward_run}"]))
    layout = Layout.build(cfg, make_mesh(cfg.mesh))
    said: list[str] = []
    rewards = Rewards(cfg, layout, run_tokenizer(cfg), said.append)
    assert any("reward model" in line for line in said)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(1, 200, int(rng.integers(2, 9))).tolist() for _ in range(8)]
    replies = [rng.integers(1, 200, int(rng.integers(1, 6))).tolist() for _ in range(8)]
    ro = build_rollout(prompts, Generation(replies, ["length"] * 8, [[]] * 8), cfg.model.max_seq_len)
    got = rewards([{}] * 8, ro)
    rm_cfg, rm_params, _ = load_run(shared_reward_run)
    for i in range(3):  # (each cut is a shape of its own: a compile per row)
        row = jnp.asarray(ro.seq[i : i + 1, : ro.last[i] + 1])
        expected = float(Decoder(rm_cfg.model).apply({"params": rm_params}, row, deterministic=True)[0, -1])
        assert got[i] == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert len(set(got.tolist())) > 1

    run_cfg = sft_config(shared_sft_run, [*base, f"grpo.reward_from={shared_reward_run}", f"train.out_dir={tmp_path}"])
    assert sorted(grpo(run_cfg, log=said.append).train_losses) == [1]
    rollout = [r for r in read_metrics(tmp_path) if r["split"] == "train" and "reward" in r]
    assert len(rollout) == 1 and rollout[0]["reward_std"] > 0  # real-valued scores, not 0/1
    not_rm = dataclasses.replace(cfg, grpo=dataclasses.replace(cfg.grpo, reward_from=str(shared_sft_run)))
    with pytest.raises(ConfigError, match=f"grpo.reward_from='{shared_sft_run}' is not a reward model"):
        Rewards(not_rm, layout, run_tokenizer(cfg), said.append)
