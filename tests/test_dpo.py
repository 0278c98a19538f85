"""DPO: the loss against hand computation (label smoothing, reference-free, beta -> 0),
reply-only log-probs, and `jaxllm dpo` end to end on the shared preference data."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.cli import main
from jaxllm.posttrain.dpo import dpo_loss, policy_logprobs
from jaxllm.posttrain.pairs import BatchCycle
from jaxllm.train.metrics import read_metrics
from tests.data_paths import SHARED_DATA

PREFS = SHARED_DATA / "instructions" / "instruction-data-with-preference.json"


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_dpo_loss_matches_hand_computation():
    pc, pr = jnp.array([-5.0]), jnp.array([-7.0])
    rc, rr = jnp.array([-4.0]), jnp.array([-8.0])
    # h = 0.1 * ((-5 + 4) - (-7 + 8)) = -0.2; loss = -log sigmoid(h) = log(1 + e^0.2)
    losses, m = dpo_loss(pc, pr, rc, rr, beta=0.1)
    assert float(losses[0]) == pytest.approx(_softplus(0.2), rel=1e-6)
    assert float(m["margin"][0]) == pytest.approx(-0.2) and float(m["accuracy"][0]) == 0.0
    assert float(m["reward_chosen"][0]) == pytest.approx(-0.1) and float(m["reward_rejected"][0]) == pytest.approx(0.1)
    smoothed, _ = dpo_loss(pc, pr, rc, rr, beta=0.1, label_smoothing=0.1)
    assert float(smoothed[0]) == pytest.approx(0.9 * _softplus(0.2) + 0.1 * _softplus(-0.2), rel=1e-6)
    free, m = dpo_loss(pc, pr, rc, rr, beta=0.1, reference_free=True)  # h = 0.1 * (-5 + 7) = 0.2
    assert float(free[0]) == pytest.approx(_softplus(-0.2), rel=1e-6) and float(m["accuracy"][0]) == 1.0


def test_small_beta_gives_log2_and_vanishing_gradients():
    def loss(pc, beta):
        return dpo_loss(pc, jnp.array([-7.0]), jnp.array([-4.0]), jnp.array([-8.0]), beta=beta)[0].sum()

    for beta in (1e-3, 1e-6):
        assert float(loss(jnp.array([-5.0]), beta)) == pytest.approx(math.log(2), abs=2 * beta)  # h = -2 beta
        grad = float(jax.grad(loss)(jnp.array([-5.0]), beta)[0])
        assert grad == pytest.approx(-beta / 2, rel=1e-2)  # d/dpc of -log sigmoid(h) at h ~ 0: -beta * sigmoid(-h)


FAMILY_VARIANTS = {
    "base": {},
    # Gemma-like: windows, sandwich norms, both soft-caps (the final one inside the chunked head)
    "gemma": dict(norm="rmsnorm", position="rope", block="sandwich", norm_unit_offset=True, sliding_window=3,
                  sliding_window_pattern=2, attn_logit_softcap=5.0, final_logit_softcap=2.0, mlp="geglu"),
    "moe": dict(num_experts=4, experts_per_token=2, expert_d_ff=16),
}  # fmt: skip


@pytest.mark.parametrize("variant", list(FAMILY_VARIANTS))
def test_policy_logprobs_count_reply_tokens_only_in_chunks(tiny_config, variant):
    """DPO's log pi(y|x) sums log p(target) over the reply tokens only, from the chunked head
    (model.loss_chunk 4 over 8 positions); checked against log_softmax of the full logits, for
    the dense model and Gemma- and MoE-style ones."""
    model = dataclasses.replace(tiny_config.model, loss_chunk=4, **FAMILY_VARIANTS[variant])
    cfg = dataclasses.replace(tiny_config, model=model)
    rng = np.random.default_rng(0)
    tokens = {k: jnp.asarray(rng.integers(0, 256, (2, 8)), jnp.int32) for k in ("ci", "ct", "ri", "rt")}
    mask = jnp.asarray([[0, 0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1, 1]], jnp.float32)
    batch = {"chosen_inputs": tokens["ci"], "chosen_targets": tokens["ct"], "chosen_mask": mask,
             "rejected_inputs": tokens["ri"], "rejected_targets": tokens["rt"], "rejected_mask": mask[::-1]}
    params = jaxllm.init_params(cfg, jax.random.key(0))
    chosen, rejected = jax.jit(policy_logprobs, static_argnums=0)(cfg, params, batch)
    for got, inputs, targets, m in ((chosen, "ci", "ct", mask), (rejected, "ri", "rt", mask[::-1])):
        logp = jax.nn.log_softmax(jax.jit(jaxllm.forward, static_argnums=0)(cfg, params, tokens[inputs]))
        token = jnp.take_along_axis(logp, tokens[targets][..., None], axis=-1)[..., 0]
        np.testing.assert_allclose(got, jnp.sum(token * m, axis=-1), rtol=1e-5)
        assert not np.allclose(got, jnp.sum(token, axis=-1), rtol=1e-3)  # the prompt tokens are left out


def test_dpo_cli_end_to_end_on_the_shared_preferences(shared_sft_run, tmp_path, capsys):
    sft_run = shared_sft_run  # SFT_SMALL (tests/fixtures.py): 1 layer, batch 8, 2 steps on PREFS
    run = tmp_path / "dpo"
    assert main(["dpo", str(sft_run), "train.steps=6", "optimizer.lr=3e-3", "optimizer.warmup_steps=1",
                 "train.log_every=1", f"train.out_dir={run}"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert f"reference and start: {sft_run} (step 2)" in out and "dpo held-out: accuracy" in out
    assert "(6 of " in out and " train batches read by 6 steps)" in out  # the reference of those 6 only
    rows = read_metrics(run)
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 6 and all({"accuracy", "margin", "reward_chosen"} <= set(r) for r in train)
    assert train[0]["loss"] == pytest.approx(math.log(2), abs=1e-4)  # the policy starts as the reference: h = 0
    assert train[-1]["margin"] > train[0]["margin"]  # training pairs pull apart
    held = [r for r in rows if r["split"] == "val_preference"]  # before (step 0: the reference) and after
    assert [r["step"] for r in held] == [0, 6] and held[0]["accuracy"] == 0.0 and held[0]["margin"] == 0.0
    assert main(["dpo", "shakespeare-char", f"posttrain.data={PREFS}", f"train.out_dir={tmp_path}/x"]) == 2
    assert "needs a reference policy" in capsys.readouterr().err
    assert jaxllm.load_config(run / "config.yaml").posttrain.init_from == str(sft_run)


@pytest.mark.parametrize("reads", [0, 3, 7, 10, 25])
def test_read_by_names_the_batches_a_run_of_that_many_steps_reads(reads):
    """DPO computes reference log-probs only for these: they must be exactly the batches
    the cycle hands out, over epoch boundaries and across a resume mid-epoch."""
    n, seed = 7, 3
    cycle = BatchCycle(list(range(n)), seed)
    seen = [next(cycle) for _ in range(reads // 2)]
    resumed = BatchCycle(list(range(n)), seed)  # a resumed run: a new cycle from the saved state
    resumed.set_state(cycle.get_state())
    seen += [next(resumed) for _ in range(reads - reads // 2)]
    assert BatchCycle.read_by(reads, n, seed) == set(seen)
    if reads < n:  # a batch the run does not read is not prepared; reading it says so
        unread = min(set(range(n)) - set(seen))
        batches = [None if i == unread else i for i in range(n)]
        with pytest.raises(RuntimeError, match=f"batch {unread} .* was not prepared"):
            cycle = BatchCycle(batches, seed)
            for _ in range(n):
                next(cycle)
