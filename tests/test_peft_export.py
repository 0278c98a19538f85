"""LoRA runs to Hugging Face: the PEFT adapter on its exported base, and the merged export,
give the LoRA run's own logits in transformers / peft.

Each case starts from a tiny random transformers model (vocab 256, so the run uses the
byte tokenizer) imported with import_hf, then a short LoRA SFT moves every adapter's B off
zero: Llama (rmsnorm, SwiGLU, RoPE, no bias, untied) with every projection adapted; the
same as QLoRA (nf4 base); GPT-2 with q, v and the MLP's down projection adapted, so the
fused c_attn carries two of its three projections' adapters and attn.c_proj none.

Tolerance, as the Hugging Face tests: max|peft - jaxllm| <= 1e-4 x max(1, max|jaxllm logits|),
float32 on CPU. Measured: 3e-6 to 7e-6 absolute on logits up to 4.5-4.8, while switching
the adapter off moves the logits by over 2 (so a dropped or misplaced adapter fails).
"""

from __future__ import annotations

import json

import numpy as np
import peft
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from jaxllm.cli import main
from jaxllm.convert import ConversionError, export_hf, import_hf
from jaxllm.convert.peft_export import export_peft, frozen_base
from jaxllm.model.decoder import Decoder
from jaxllm.posttrain.sft import sft, sft_config
from jaxllm.train.load import load_run
from tests.fixtures import PREFS, QUIET, build_once

ATOL = 1e-4
LORA = ["model.lora.rank=4", "model.lora.alpha=8", "optimizer.lr=3e-2", "optimizer.warmup_steps=0",
        f"posttrain.data={PREFS}", "posttrain.val_fraction=0.02", "data.seq_len=128", "train.batch_size=8",
        "train.eval_every=100", "train.tensorboard=false"]  # fmt: skip
TOKENS = np.random.default_rng(0).integers(0, 256, (2, 24))


def _llama():
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.2,
            bos_token_id=None, eos_token_id=None,
        )
    )  # fmt: skip


def _gpt2():
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(vocab_size=256, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                initializer_range=0.2, bos_token_id=None, eos_token_id=None)
    )  # fmt: skip


CASES = ("llama", "llama-nf4", "gpt2")


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """name -> a LoRA run directory, each from an imported tiny random model (built once per
    session, whichever worker asks first)."""
    root = build_once(tmp_path_factory, "peft_runs", _build_runs)
    return {"base": root / "llama-base", **{name: root / name for name in CASES}}


def _build_runs(root):
    bases = {}
    for name, build in (("llama", _llama), ("gpt2", _gpt2)):
        torch.manual_seed(0)
        build().save_pretrained(root / f"{name}-hf")
        bases[name] = import_hf(root / f"{name}-hf", root / f"{name}-base", **QUIET)
    cases = {
        "llama": (bases["llama"], ["train.steps=2"]),
        "llama-nf4": (bases["llama"], ["train.steps=1", "model.lora.quantize=nf4", "model.lora.quant_block=32"]),
        "gpt2": (bases["gpt2"], ["train.steps=1", "model.lora.targets=[q_proj,v_proj,down_proj]"]),
    }
    for name, (base, extra) in cases.items():
        sft(sft_config(base, [*LORA, *extra, f"train.out_dir={root / name}"]), **QUIET)


def _jaxllm_logits(run) -> np.ndarray:
    cfg, params, _ = load_run(run)
    assert cfg.model.lora.rank == 4
    return np.asarray(Decoder(cfg.model).apply({"params": params}, TOKENS), np.float64)


def _logits(model) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(TOKENS)).logits.numpy().astype(np.float64)


def _assert_close(actual, expected, what) -> float:
    err, scale = float(np.abs(actual - expected).max()), float(np.abs(expected).max())
    assert err <= ATOL * max(1.0, scale), f"{what}: max abs difference {err:.3g} (logits up to {scale:.3g})"
    print(f"{what}: max abs logit difference {err:.2e} (logits up to {scale:.2f})")
    return err


@pytest.mark.parametrize("name", ["llama", "llama-nf4", "gpt2"])
def test_the_peft_adapter_on_its_base_gives_the_lora_runs_logits(name, runs, tmp_path, capsys):
    adapter, base = tmp_path / "adapter", tmp_path / "base"
    assert main(["convert", "to-hf", str(runs[name]), str(adapter), "--peft", "--peft-base", str(base)]) == 0
    said = capsys.readouterr().out
    assert "PEFT adapter" in said and ("dequantized from nf4" in said) == (name == "llama-nf4")
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["lora_alpha"] == 8
    assert config["base_model_name_or_path"] == str(base.resolve())
    saved = load_file(str(adapter / "adapter_model.safetensors"))
    model = peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    loaded = peft.get_peft_model_state_dict(model)
    assert loaded.keys() == saved.keys()  # every tensor the file holds is in the model, and nothing else
    for k, v in saved.items():
        np.testing.assert_array_equal(loaded[k].numpy(), v, err_msg=k)
    expected = _jaxllm_logits(runs[name])
    _assert_close(_logits(model), expected, f"{name}: peft adapter + base")
    with model.disable_adapter():
        assert np.abs(_logits(model) - expected).max() > 0.1  # the adapter is what makes them agree


def test_gpt2s_fused_c_attn_gets_the_stacked_block_diagonal_adapter(runs, tmp_path):
    export_peft(runs["gpt2"], tmp_path, **QUIET)
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    # attn.c_proj (o_proj) is not a target, so the MLP's c_proj is named with its parent.
    assert config["target_modules"] == ["c_attn", "mlp.c_proj"] and config["fan_in_fan_out"] is True
    assert config["rank_pattern"] == {"c_attn": 8} and config["alpha_pattern"] == {"c_attn": 16}  # alpha / r kept
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    _, params, _ = load_run(runs["gpt2"])
    attn = params["blocks"]["attn"]
    for i in range(2):
        key = f"base_model.model.transformer.h.{i}.attn.c_attn"
        a, b = saved[f"{key}.lora_A.weight"], saved[f"{key}.lora_B.weight"]
        assert a.shape == (8, 32) and b.shape == (96, 8)
        np.testing.assert_array_equal(a[:4], np.asarray(attn["q_proj"]["lora_a"][i]).T)
        np.testing.assert_array_equal(a[4:], np.asarray(attn["v_proj"]["lora_a"][i]).T)
        np.testing.assert_array_equal(b[:32, :4], np.asarray(attn["q_proj"]["lora_b"][i]).reshape(4, 32).T)
        np.testing.assert_array_equal(b[64:, 4:], np.asarray(attn["v_proj"]["lora_b"][i]).reshape(4, 32).T)
        assert not b[:32, 4:].any() and not b[64:, :4].any() and not b[32:64].any()  # k: no adapter
        assert np.abs(b[:32, :4]).min() > 0  # trained


@pytest.mark.parametrize("name", ["llama", "llama-nf4"])
def test_the_merged_export_gives_the_lora_runs_logits(name, runs, tmp_path):
    said = []
    export_hf(runs[name], tmp_path, log=said.append)
    assert "LoRA adapters merged in" in said[0] and ("nf4 base dequantized" in said[0]) == (name == "llama-nf4")
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    _assert_close(_logits(model), _jaxllm_logits(runs[name]), f"{name}: merged export")


def test_a_qlora_adapters_base_is_the_dequantized_base_and_the_export_says_so(runs, tmp_path):
    cfg, params, _ = load_run(runs["llama-nf4"])
    _, original, _ = load_run(runs["base"])
    base = frozen_base(cfg.model, params)
    q = np.asarray(base["blocks"]["attn"]["q_proj"]["kernel"])
    q0 = np.asarray(original["blocks"]["attn"]["q_proj"]["kernel"])
    assert 0 < np.abs(q - q0).max() < 0.2 * np.abs(q0).max()  # within nf4's error of the original, not it
    said = []
    export_peft(runs["llama-nf4"], tmp_path / "adapter", log=said.append)
    assert any("dequantized base" in line and "--peft-base" in line for line in said)
    assert not (tmp_path / "base").exists()


def test_refusals_name_the_fix(runs, tmp_path):
    with pytest.raises(ConversionError, match=r"no LoRA adapters \(model.lora.rank=0\).*convert to-hf"):
        export_peft(runs["base"], tmp_path / "adapter", **QUIET)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConversionError, match="existing file"):
        export_peft(runs["llama"], tmp_path / "adapter", base=tmp_path / "file", **QUIET)
