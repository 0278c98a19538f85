"""Instruction tuning: data formats, reply-only loss weights, batches, and `jaxllm sft`
end to end on the shared instruction data (from a checkpoint)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm.cli import main
from jaxllm.config import ChatConfig
from jaxllm.data.tokenizer import ByteTokenizer
from jaxllm.errors import DataError
from jaxllm.parallel.mesh import make_mesh
from jaxllm.posttrain.batches import SFTBatches, eval_batches
from jaxllm.posttrain.data import load_records, to_messages, to_preference, tokenize_conversation
from jaxllm.train.optimizer import make_optimizer
from jaxllm.train.state import init_state
from jaxllm.train.step import make_train_step, shard_batch
from tests.data_paths import SHARED_DATA

INSTRUCTIONS = SHARED_DATA / "instructions" / "instruction-data.json"
TOK = ByteTokenizer()
RECORD = {"instruction": "Reverse the word.", "input": "stop", "output": "pots"}


def test_reply_tokens_alone_carry_loss_weight():
    ex = tokenize_conversation(TOK, ChatConfig(), to_messages(RECORD))
    text = TOK.decode(ex.ids)
    assert text == "<|user|>\nReverse the word.\n\nstop<|end|>\n<|assistant|>\npots<|end|>\n"
    learned = TOK.decode(ex.ids[ex.weights == 1])
    assert learned == "pots<|end|>\n"  # the reply and its end marker; no prompt token
    batch = next(SFTBatches([ex], 1, 96, packing=False, seed=0))
    n = len(ex.ids) - 1
    assert TOK.decode(batch["targets"][0][batch["target_mask"][0] == 1]) == "pots<|end|>\n"
    assert batch["target_mask"][0, n:].sum() == 0 and batch["segment_ids"][0, n:].sum() == 0  # padding


def test_formats_alpaca_chat_and_preference(tmp_path):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert to_messages(chat)[-1]["content"] == "hello"
    assert to_messages({"instruction": "Convert 45 km to m.", "input": "", "output": "45000 m"})[0] == {
        "role": "user", "content": "Convert 45 km to m."}  # fmt: skip
    prompt, chosen, rejected = to_preference({**RECORD, "chosen": "pots", "rejected": "tops"})
    assert prompt == [{"role": "user", "content": "Reverse the word.\n\nstop"}]
    assert (chosen, rejected) == ("pots", "tops")
    (tmp_path / "d.jsonl").write_text(json.dumps(RECORD) + "\n\n" + json.dumps(chat) + "\n")
    assert len(load_records(tmp_path / "d.jsonl")) == 2
    (tmp_path / "bad.jsonl").write_text(json.dumps(RECORD) + "\n{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2 is not valid JSON"):
        load_records(tmp_path / "bad.jsonl")
    with pytest.raises(DataError, match="neither Alpaca"):
        to_messages({"text": "x"})
    with pytest.raises(DataError, match="does not exist"):
        load_records(tmp_path / "none.json")


def test_packing_keeps_examples_apart_and_resumes_exactly():
    examples = [tokenize_conversation(TOK, ChatConfig(), to_messages({**RECORD, "output": "x" * k}))
                for k in range(1, 9)]  # fmt: skip
    it = SFTBatches(examples, 4, 256, packing=True, seed=3)
    first = next(it)
    row = first["segment_ids"][0]
    assert row.max() >= 2  # more than one conversation in a row
    for seg in range(1, row.max() + 1):  # positions restart at 0 in every segment
        assert first["positions"][0][row == seg][0] == 0
    state = it.get_state()
    expected = [next(it) for _ in range(3)]
    again = SFTBatches(examples, 4, 256, packing=True, seed=3)
    again.set_state(state)
    for a, b in zip(expected, (next(again) for _ in range(3)), strict=True):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    total = sum(float(b["target_mask"].sum()) for b in eval_batches(examples, 4, 256))
    assert total == sum(float(e.weights[1:].sum()) for e in examples)  # every reply token, once


def test_loss_is_the_exact_reply_token_mean_under_accumulation():
    overrides = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "data.seq_len=64", "model.dropout=0.0",
                 "train.batch_size=8", "train.microbatches=4"]  # fmt: skip
    cfg = jaxllm.load_config("shakespeare-char", overrides)
    records = load_records(INSTRUCTIONS)[:40]
    examples = [tokenize_conversation(TOK, cfg.chat, to_messages(r)) for r in records]
    batch = next(SFTBatches(examples, 8, 64, packing=True, seed=0))
    mesh = make_mesh(cfg.mesh)
    tx = make_optimizer(cfg.optimizer)
    state = init_state(cfg, mesh, tx)
    params = jax.device_get(state["params"])
    _, metrics = make_train_step(cfg, mesh, tx)(state, shard_batch(batch, mesh))
    logits = jaxllm.forward(cfg, params, jnp.asarray(batch["inputs"]), positions=jnp.asarray(batch["positions"]),
                            segment_ids=jnp.asarray(batch["segment_ids"]))  # fmt: skip
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(batch["targets"])[..., None], -1)[..., 0]
    w = batch["target_mask"]
    expected = float(jnp.sum(nll * w) / w.sum())
    assert float(metrics["loss"]) == pytest.approx(expected, rel=1e-5)
    assert float(metrics["tokens"]) == w.sum()


def test_sft_cli_end_to_end_on_the_shared_instructions_from_a_checkpoint(tmp_path, capsys):
    small = ["model.num_layers=1", "model.d_model=32", "model.num_heads=2", "data.seq_len=128", "train.batch_size=8",
             "train.steps=2", "train.eval_every=2", "train.eval_batches=2", "train.tensorboard=false",
             f"posttrain.data={INSTRUCTIONS}", f"data.path={tmp_path}/none"]  # fmt: skip
    first = tmp_path / "first"
    assert main(["sft", "shakespeare-char", *small, f"train.out_dir={first}"]) == 0  # random init
    assert "starting from random weights" in capsys.readouterr().out
    second = tmp_path / "second"
    assert main(["sft", str(first), "train.steps=3", f"train.out_dir={second}"]) == 0
    out = capsys.readouterr().out
    assert f"starting from {first} (step 2)" in out and "val loss" in out
    cfg = jaxllm.load_config(second / "config.yaml")
    assert cfg.chat.enabled and cfg.optimizer.decay_steps == 3 and cfg.posttrain.init_from == str(first)
    assert main(["sft", str(first), "model.num_layers=2", f"train.out_dir={tmp_path}/x"]) == 2
    assert "has a different model (num_layers differ)" in capsys.readouterr().err
