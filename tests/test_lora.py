"""LoRA and QLoRA: adapters start at the base model, train alone with the base bit-identical,
save on their own, merge exactly, and quantized bases stay within the quantizer's error."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file

import jaxllm
from jaxllm.cli import main
from jaxllm.config import ConfigError, LoraConfig
from jaxllm.generation import generate
from jaxllm.model import lora, quant
from jaxllm.model.api import init_params
from jaxllm.model.decoder import Decoder
from jaxllm.parallel.layout import Layout
from jaxllm.parallel.mesh import make_mesh
from jaxllm.posttrain.dpo import dpo
from jaxllm.posttrain.sft import sft, sft_config
from jaxllm.train.adapters import merge_run
from jaxllm.train.load import load_run
from jaxllm.train.metrics import read_metrics
from jaxllm.train.optimizer import make_optimizer
from tests.fixtures import PREFS, QUIET, build_once

LORA = ["model.lora.rank=4", "model.lora.alpha=8", "train.steps=3", "train.log_every=1", "optimizer.lr=3e-3",
        "optimizer.warmup_steps=0", "train.checkpoint_every=3"]  # fmt: skip
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 24))


def _flat(params) -> dict:
    return {k: np.asarray(v) for k, v in flatten_dict(jax.device_get(params)).items()}


def _run(source, out, *extra: str, verb=sft):
    cfg = sft_config(source, [*extra, f"train.out_dir={out}"])
    result = verb(cfg, **QUIET)
    return result[0] if isinstance(result, tuple) else result


def _train_losses(run) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train"}


@pytest.fixture(scope="session")
def lora_runs(shared_sft_run, tmp_path_factory):
    """A LoRA SFT run and a full SFT run from the shared SFT run, same data and seed (built
    once per session): (start run, LoRA run, its train losses, the full run's)."""

    def build(root):
        _run(shared_sft_run, root / "lora", *LORA)
        _run(shared_sft_run, root / "full", "train.steps=1", "train.log_every=1")

    root = build_once(tmp_path_factory, "lora_runs", build)
    return shared_sft_run, root / "lora", _train_losses(root / "lora"), _train_losses(root / "full")


def test_lora_sft_starts_at_the_base_loss_and_keeps_the_base_bit_identical(lora_runs):
    base_run, lora_run, adapted, full = lora_runs
    # B = 0: the adapted model's first loss is the base model's (the full run's first step sees the same batch).
    assert adapted[1] == pytest.approx(full[1], rel=1e-6)
    assert adapted[3] < adapted[1]  # the adapters learn
    _, base, _ = load_run(base_run)
    cfg, tuned, step = load_run(lora_run)
    assert step == 3 and cfg.model.lora.rank == 4
    base, tuned = _flat(base), _flat(tuned)
    frozen = {k: v for k, v in tuned.items() if k[-1] not in lora.ADAPTER_LEAVES}
    assert frozen.keys() == base.keys()
    for k, v in frozen.items():
        np.testing.assert_array_equal(v, base[k], err_msg=str(k))  # bit-identical
    b = [v for k, v in tuned.items() if k[-1] == "lora_b"]
    assert len(b) == 7 - 1  # q, k, v, o, up, down (GPT-2's MLP has no gate)
    assert all(np.abs(x).max() > 0 for x in b)  # every B moved off zero


def test_the_optimizer_state_and_the_adapter_file_cover_the_adapters_alone(lora_runs):
    _, lora_run, _, _ = lora_runs
    cfg, params, _ = load_run(lora_run)
    adapters = lora.adapter_leaves(params)
    n_adapt, n_all = sum(v.size for v in adapters.values()), lora.count(params)
    assert 0 < n_adapt < 0.2 * n_all
    layout = Layout.build(cfg, make_mesh(cfg.mesh), make_optimizer(cfg.optimizer, cfg.model))
    moments = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(jax.eval_shape(
        lambda: make_optimizer(cfg.optimizer, cfg.model).init(layout.param_shapes))) if len(s.shape) > 0)  # fmt: skip
    assert moments == 2 * n_adapt  # AdamW's mu and nu, of the adapters only
    saved = load_file(str(lora_run / "adapter" / "adapter.safetensors"))
    assert saved.keys() == adapters.keys()
    for k, v in adapters.items():
        np.testing.assert_array_equal(saved[k], np.asarray(v))
    meta = json.loads((lora_run / "adapter" / "adapter.json").read_text())
    assert meta["step"] == 3 and meta["rank"] == 4 and meta["parameters"] == n_adapt


def test_merged_and_unmerged_logits_agree(lora_runs, tmp_path):
    _, lora_run, _, _ = lora_runs
    cfg, params, _ = load_run(lora_run)
    merged_run = tmp_path / "merged"
    assert main(["lora", "merge", str(lora_run), str(merged_run)]) == 0
    mcfg, merged, step = load_run(merged_run)
    assert step == 3 and mcfg.model.lora.rank == 0 and "lora_a" not in str(jax.tree.structure(merged))
    y = Decoder(cfg.model).apply({"params": params}, TOKENS)
    y_merged = Decoder(mcfg.model).apply({"params": merged}, TOKENS)
    assert float(jnp.abs(y - y_merged).max() / jnp.abs(y).max()) < 1e-5
    # Decoding with the KV cache runs the adapters too: greedy tokens equal the merged model's.
    prompts = [list(TOKENS[0, :5]), list(TOKENS[1, :9])]
    got, want = (generate(c, p, prompts, 12, temperature=0.0).tokens for c, p in ((cfg, params), (mcfg, merged)))
    assert got == want
    with pytest.raises(ConfigError, match="has no adapters"):
        merge_run(merged_run, tmp_path / "again")


def test_a_lora_run_continues_from_a_lora_run_and_dpo_trains_adapters(lora_runs, tmp_path):
    base_run, lora_run, _, _ = lora_runs
    result = _run(lora_run, tmp_path / "dpo", f"posttrain.data={PREFS}", "train.steps=1", verb=dpo)
    assert result.step == 1
    _, before, _ = load_run(lora_run)
    _, after, _ = load_run(tmp_path / "dpo")
    before, after = _flat(before), _flat(after)
    assert before.keys() == after.keys()
    moved = [k for k in before if not np.array_equal(before[k], after[k])]
    assert moved and all(k[-1] in lora.ADAPTER_LEAVES for k in moved)  # DPO moved adapters, nothing else


@pytest.mark.parametrize("fmt", ["nf4", "int8"])
def test_qlora_quantizes_the_base_within_the_stated_error_and_keeps_it_frozen(shared_sft_run, tmp_path, fmt):
    _run(shared_sft_run, tmp_path / fmt, *LORA, "train.steps=2", f"model.lora.quantize={fmt}",
         "model.lora.quant_block=32")  # fmt: skip
    cfg, tuned, _ = load_run(tmp_path / fmt)
    _, base, _ = load_run(shared_sft_run)
    tuned_flat, base_flat = flatten_dict(tuned), flatten_dict(base)
    checked = 0
    for path, kernel in base_flat.items():
        if path[-1] != "kernel" or path[-2] not in lora.PROJECTION_AXES:
            continue
        module = {k[-1]: v for k, v in tuned_flat.items() if k[:-1] == path[:-1]}
        assert "kernel" not in module and module["kernel_q"].dtype == (jnp.uint8 if fmt == "nf4" else jnp.int8)
        got = np.asarray(lora.base_kernel(cfg.model, module, path[-2], jnp.float32))
        n_in = lora.PROJECTION_AXES[path[-2]][0]
        w = np.asarray(kernel, np.float32)
        lead = w.ndim - sum(lora.PROJECTION_AXES[path[-2]])
        k_in = int(np.prod(w.shape[lead : lead + n_in]))
        blocks = w.reshape(*w.shape[:lead], k_in // 32, 32, -1)  # (*lead, blocks, 32, out)
        err = np.abs(got.reshape(blocks.shape) - blocks)
        bound = quant.max_error(fmt) * np.abs(blocks).max(axis=-2, keepdims=True)
        assert (err <= bound * (1 + 1e-5) + 1e-8).all(), path
        assert err.max() > 0  # it is quantized, not stored as is
        checked += 1
    assert checked == 6
    # Two steps later the codes are still the start's: the quantized base is frozen too.
    start = lora.adapt(cfg.model, jax.device_get(base), jax.device_get(tuned))
    for k, v in flatten_dict(start).items():
        if k[-1] in ("kernel_q", "kernel_scale"):
            np.testing.assert_array_equal(np.asarray(v), np.asarray(tuned_flat[k]), err_msg=str(k))


def test_qlora_holds_the_base_in_a_sixth_of_the_bytes(tiny_config):
    model = dataclasses.replace(tiny_config.model, d_model=64, d_ff=256)
    plain = init_params(model, jax.random.PRNGKey(0))
    q = dataclasses.replace(model, lora=LoraConfig(rank=2, quantize="nf4", quant_block=32))
    packed = lora.adapt(q, plain, init_params(q, jax.random.PRNGKey(1)))

    def projection_bytes(params, names):
        flat = flatten_dict(params).items()
        return sum(v.nbytes for k, v in flat if k[-2] in lora.PROJECTION_AXES and k[-1] in names)

    full = projection_bytes(plain, ("kernel",))
    stored = projection_bytes(packed, ("kernel_q", "kernel_scale"))
    assert stored == pytest.approx(full * (0.5 + 4 / 32) / 4)  # 0.625 bytes a weight against float32's 4


def test_bad_lora_settings_are_named(tiny_config):
    for overrides, match in [
        (["model.lora.rank=-1"], "model.lora.rank=-1"),
        (["model.lora.rank=4", "model.lora.targets=[q_proj,wq]"], "'wq'"),
        (["model.lora.quantize=nf4"], "needs model.lora.rank > 0"),
        (["model.lora.rank=4", "model.lora.quantize=nf4", "model.lora.quant_block=100"], "quant_block=100 does not"),
        (["model.lora.rank=4", "model.lora.dropout=1.0"], r"dropout=1.0 must be in \[0, 1\)"),
        (["model.lora.rank=4", "model.head=scalar"], "needs model.head=lm"),
    ]:
        with pytest.raises(ConfigError, match=match):
            jaxllm.load_config("shakespeare-char", overrides)


def test_a_start_run_may_differ_in_dropout_but_not_in_architecture(tiny_config):
    from jaxllm.train.adapters import start_params

    params = init_params(tiny_config.model, jax.random.PRNGKey(0))
    layout = Layout.build(tiny_config, make_mesh(tiny_config.mesh))
    trained_with_dropout = dataclasses.replace(
        tiny_config, model=dataclasses.replace(tiny_config.model, dropout=0.1, attention_dropout=0.1)
    )
    assert start_params(tiny_config, layout, trained_with_dropout, params) is params
    wider = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, d_ff=128))
    with pytest.raises(ConfigError, match=r"has a different model \(d_ff differ\)"):
        start_params(tiny_config, layout, wider, params)


def test_a_lora_run_holds_a_float32_base_in_bfloat16_and_its_adapters_in_float32(shared_sft_run, tmp_path):
    _run(shared_sft_run, tmp_path / "bf16", *LORA, "train.steps=2", "model.param_dtype=bfloat16",
         "model.dtype=bfloat16")  # fmt: skip
    _, base, _ = load_run(shared_sft_run)
    cfg, tuned, _ = load_run(tmp_path / "bf16")
    base, tuned = _flat(base), _flat(tuned)
    for k, v in tuned.items():
        if k[-1] in lora.ADAPTER_LEAVES:
            assert v.dtype == np.float32, k
        else:  # the start's float32 weights, rounded to bfloat16 once and frozen since
            assert v.dtype == jnp.bfloat16, k
            np.testing.assert_array_equal(v, base[k].astype(jnp.bfloat16), err_msg=str(k))



def test_the_summary_counts_the_base_and_the_adapters_apart(tiny_config):
    from jaxllm.model.summary import count_params, lora_params, memory_bytes, summary_table

    lora_model = dataclasses.replace(tiny_config.model, lora=LoraConfig(rank=2, quantize="nf4", quant_block=32))
    q = dataclasses.replace(tiny_config, model=lora_model)
    params = init_params(lora_model, jax.random.PRNGKey(0))
    assert count_params(q) == count_params(tiny_config)  # the architecture's own weights
    assert lora_params(q) == sum(v.size for v in lora.adapter_leaves(params).values()) > 0
    mem = memory_bytes(q)
    assert mem["params"] == sum(v.nbytes for v in jax.tree.leaves(params))  # as stored: codes, scales, adapters
    assert mem["adamw_state"] == 8 * lora_params(q) and mem["grads"] == 4 * lora_params(q)
    assert "lora adapters" in summary_table(q) and "projections in nf4" in summary_table(q)


def test_a_lora_step_counts_no_weight_gradients_for_the_frozen_base(tiny_config):
    from jaxllm.model.summary import flops_breakdown, lora_params, matmul_params

    lora_cfg = dataclasses.replace(tiny_config, model=dataclasses.replace(tiny_config.model, lora=LoraConfig(rank=2)))
    full, adapted = flops_breakdown(tiny_config, 32), flops_breakdown(lora_cfg, 32)
    for k, n in matmul_params(tiny_config).items():
        assert full[k] == 6 * n and adapted[k] == 4 * n, k
    assert adapted["lora_adapters"] == 6 * lora_params(lora_cfg)
    assert adapted["attention_scores"] == full["attention_scores"]
