"""Hugging Face import/export against transformers itself, offline, on tiny random models.

Each case is a transformers model built here from a seeded random init (weights
perturbed so no norm is 1 and no bias 0: an identity would hide a wrong mapping),
saved with save_pretrained, imported into a jaxllm run, and compared logit by logit.

Tolerance: max|jaxllm - transformers| <= 1e-5 x max|transformers logits| (float32 on
CPU; the logits here reach 6-10, so 6e-5 to 1e-4 absolute). Measured max abs differences
(import / export): gpt2-tied 1.3e-5 / 4.7e-6, llama-gqa-tied 1.7e-5 / 9.5e-6,
llama3-mqa-untied 3.5e-5 / 9.3e-6, i.e. at most 3.8e-6 of the logit scale.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

import jaxllm
from jaxllm.cli import main
from jaxllm.config import RopeScalingConfig
from jaxllm.convert import (
    ConversionError,
    config_to_hf,
    export_hf,
    hf_to_config,
    hf_to_params,
    import_hf,
    params_to_hf,
    read_safetensors,
    write_safetensors,
)
from jaxllm.data.hf_tokenizer import HFTokenizer
from jaxllm.data.tokenizer import TokenizerError, load_tokenizer
from jaxllm.evaluate import encode_pair, evaluate_mc, perplexity
from jaxllm.evaluate.multiple_choice import MCExample
from jaxllm.model.rope import rope_inv_freq
from jaxllm.train.load import load_run, load_run_tokenizer, write_run
from tests.data_paths import SHARED_DATA

RTOL = 1e-5
QUIET = lambda _: None  # noqa: E731
LINES = [
    "the quick brown fox jumps over the lazy dog",
    "a tokenizer trained offline on a handful of lines",
    "naïve café, 123 numbers and\ttabs",
]


def _gpt2():
    return transformers.GPT2LMHeadModel(
        transformers.GPT2Config(
            vocab_size=300, n_embd=48, n_layer=2, n_head=4, n_positions=64, n_inner=None,
            initializer_range=0.2, bos_token_id=None, eos_token_id=None,
        )
    )  # fmt: skip


def _llama_gqa_tied():
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=64, rms_norm_eps=1e-6,
            tie_word_embeddings=True, initializer_range=0.2, bos_token_id=None, eos_token_id=None,
        )
    )  # fmt: skip


# Llama-3.1 scaling with head_dim 16: wavelengths 2*pi*10000^(i/8) are 6.3 (< 32/4: kept),
# 19.9 (between: blended) and 63+ (> 32/1: divided by 4), so all three bands are exercised,
# and a 48-token prompt reaches past original_max_position_embeddings=32.
LLAMA3 = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 32, "rope_theta": 10000.0}  # fmt: skip


def _llama3_mqa_untied():
    return transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=128, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=1, max_position_embeddings=64, rms_norm_eps=1e-5, rope_parameters=dict(LLAMA3),
            tie_word_embeddings=False, initializer_range=0.2, bos_token_id=None, eos_token_id=None,
        )
    )  # fmt: skip


CASES = {"gpt2-tied": _gpt2, "llama-gqa-tied": _llama_gqa_tied, "llama3-mqa-untied": _llama3_mqa_untied}

forward = jax.jit(jaxllm.forward, static_argnums=0)


def random_params(model, seed):
    """Random jaxllm params in numpy (no compile): norm scales 1 + 0.2 N(0, 1), the rest 0.2 N(0, 1),
    so no parameter is trivially 1 or 0."""
    rng = np.random.default_rng(seed)

    def draw(path, shape):
        noise = 0.2 * rng.standard_normal(shape.shape).astype(np.float32)
        return 1 + noise if path[-1].key == "scale" else noise

    return jax.tree_util.tree_map_with_path(draw, jaxllm.param_shapes(model))


def _perturbed(build, seed):
    torch.manual_seed(seed)
    model = build()
    with torch.no_grad():
        for p in model.parameters():  # tied weights are one Parameter, perturbed once
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _tokens(vocab, length=48, batch=2, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=(batch, length)).astype(np.int32)


def _hf_logits(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x).long()).logits.numpy()


def _assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, what
    err, scale = float(np.max(np.abs(actual - expected))), float(np.max(np.abs(expected)))
    assert err <= RTOL * scale, f"{what}: max abs difference {err:.3g} > {RTOL:g} x {scale:.3g}"
    print(f"{what}: max abs logit difference {err:.2e} (logits up to {scale:.2f}, relative {err / scale:.1e})")


def _train_tokenizer(directory):
    """A byte-level BPE tokenizer.json (vocab 300) and the tokenizer_config.json naming its EOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|pad|>", "<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    tok.train_from_iterator(LINES * 4, trainer)
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return directory / "tokenizer.json"


class Case(NamedTuple):
    name: str
    model: torch.nn.Module  # the transformers model
    root: Path  # root/hf: its save_pretrained directory; root/run: the imported jaxllm run
    cfg: jaxllm.Config  # the imported run's config...
    params: dict  # ...and weights, as load_run returns them


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """name -> Case, each built once: saved with save_pretrained, imported with import_hf,
    read back with load_run."""
    cache = {}

    def build(name):
        if name not in cache:
            root = tmp_path_factory.mktemp(name)
            model = _perturbed(CASES[name], seed=list(CASES).index(name))
            model.save_pretrained(root / "hf")
            if name == "gpt2-tied":
                _train_tokenizer(root / "hf")
            import_hf(root / "hf", root / "run", log=QUIET)
            cfg, params, step = load_run(root / "run")
            assert step == 0
            cache[name] = Case(name, model, root, cfg, params)
        return cache[name]

    return build


@pytest.fixture(params=list(CASES))
def case(request, built):
    return built(request.param)


@pytest.fixture
def gpt2(built):
    return built("gpt2-tied")


@pytest.fixture
def llama(built):
    return built("llama-gqa-tied")


@pytest.fixture
def llama3(built):
    return built("llama3-mqa-untied")


# --------------------------------------------------------------------------- parity


def test_import_parity(case):
    name, model, cfg, params = case.name, case.model, case.cfg, case.params
    x = _tokens(cfg.model.vocab_size)
    _assert_close(forward(cfg.model, params, jnp.asarray(x)), _hf_logits(model, x), f"{name} import")


def test_llama3_scaling_is_imported_and_changes_frequencies(llama3):
    cfg = llama3.cfg
    s = cfg.model.rope_scaling
    assert s == RopeScalingConfig("llama3", 4.0, 1.0, 4.0, 32) and cfg.model.max_seq_len == 64
    plain = np.asarray(rope_inv_freq(cfg.model.head_dim, cfg.model.rope_theta))
    scaled = np.asarray(rope_inv_freq(cfg.model.head_dim, cfg.model.rope_theta, s))
    kept, divided = scaled == plain, np.isclose(scaled, plain / 4)
    assert kept.any() and divided.any() and (~kept & ~divided).any(), "all three bands occur"


def test_export_parity(case, tmp_path):
    """Random jaxllm params -> export -> AutoModelForCausalLM gives jaxllm's logits."""
    name, cfg = case.name, case.cfg
    params = random_params(cfg.model, seed=7)
    run = tmp_path / "run"
    write_run(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(run))), params, run)
    export_hf(run, tmp_path / "hf", log=QUIET)
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    x = _tokens(cfg.model.vocab_size, seed=3)
    _assert_close(_hf_logits(exported, x), forward(cfg.model, params, jnp.asarray(x)), f"{name} export")
    if name == "llama3-mqa-untied":
        assert exported.config.rope_parameters["rope_type"] == "llama3"
        assert exported.config.rope_parameters["original_max_position_embeddings"] == 32


def test_greedy_generation_matches_transformers(case):
    model, cfg, params = case.model, case.cfg, case.params
    prompt = [int(t) for t in _tokens(cfg.model.vocab_size, length=20, batch=1, seed=11)[0]]
    ours = jaxllm.generate(cfg, params, [prompt], max_new_tokens=12, temperature=0.0).tokens[0]
    with torch.no_grad():
        ids = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=12, pad_token_id=0)
    theirs = ids[0, len(prompt) :].tolist()
    assert ours == theirs
    assert len(set(ours)) > 3, "a non-degenerate continuation"


# --------------------------------------------------------------------------- round trips


def test_params_round_trip_bit_exact(case):
    cfg = case.cfg
    params = jax.tree.map(np.asarray, random_params(cfg.model, seed=5))
    back = hf_to_params(cfg.model, params_to_hf(cfg.model, params))
    assert jax.tree.structure(back) == jax.tree.structure(params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True))


def test_hf_files_round_trip_bit_exact(case, tmp_path):
    """save_pretrained -> import -> export gives back the same tensors, bit for bit."""
    name, root = case.name, case.root
    export_hf(root / "run", tmp_path, log=QUIET)
    original, exported = read_safetensors(root / "hf"), read_safetensors(tmp_path)
    assert set(exported) == set(original)
    if name.endswith("-tied"):
        assert "lm_head.weight" not in exported, "tied: no head tensor, as transformers writes it"
    for key in original:
        assert exported[key].dtype == np.float32 and np.array_equal(exported[key], original[key]), key


def test_load_run_returns_the_imported_weights(case):
    root, cfg, params = case.root, case.cfg, case.params
    expected = hf_to_params(cfg.model, read_safetensors(root / "hf"))
    loaded = jax.tree.map(np.asarray, params)
    assert jax.tree.structure(loaded) == jax.tree.structure(expected)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(expected), strict=True))
    assert cfg.train.out_dir == str(root / "run")


def test_config_round_trip_and_transformers_reads_it(case, tmp_path):
    name, model, cfg = case.name, case.model, case.cfg
    hf = config_to_hf(cfg.model)
    assert hf_to_config(hf) == cfg.model
    (tmp_path / "config.json").write_text(json.dumps(hf))
    loaded = transformers.AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is type(model.config)
    for key in ("vocab_size", "tie_word_embeddings"):
        assert getattr(loaded, key) == getattr(model.config, key), key
    if name.startswith("llama"):
        assert loaded.rope_parameters == model.config.rope_parameters


def test_rope_config_forms_agree():
    """transformers 5's rope_parameters and the older rope_theta/rope_scaling (with "type") read the same."""
    new = {"architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
           "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 64,
           "rope_parameters": dict(LLAMA3, rope_theta=500000.0)}  # fmt: skip
    old = {k: v for k, v in new.items() if k != "rope_parameters"}
    old["rope_theta"] = 500000.0
    old["rope_scaling"] = {"type" if k == "rope_type" else k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    assert hf_to_config(new) == hf_to_config(old)
    assert hf_to_config(new).rope_theta == 500000.0 and hf_to_config(new).rope_scaling.kind == "llama3"
    plain = hf_to_config({k: v for k, v in old.items() if k != "rope_scaling"})
    assert plain.rope_scaling.kind == "none" and plain.rope_theta == 500000.0


# --------------------------------------------------------------------------- files


def test_sharded_export_reads_back_and_loads(llama3, tmp_path):
    model, root, cfg = llama3.model, llama3.root, llama3.cfg
    export_hf(root / "run", tmp_path, max_shard_size=40_000, log=QUIET)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    assert not (tmp_path / "model.safetensors").exists()
    original = read_safetensors(root / "hf")
    back = read_safetensors(tmp_path)
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in back.values())
    assert set(back) == set(original) and all(np.array_equal(back[k], original[k]) for k in original)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    x = _tokens(cfg.model.vocab_size, seed=4)
    _assert_close(_hf_logits(loaded, x), _hf_logits(model, x), "sharded export")
    export_hf(root / "run", tmp_path, log=QUIET)  # re-export unsharded: stale shards are removed
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_bfloat16_files_import_exactly_and_export(gpt2, tmp_path):
    model, root, cfg = gpt2.model, gpt2.root, gpt2.cfg
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16.save_pretrained(tmp_path / "bf16")
    tensors = read_safetensors(tmp_path / "bf16")
    assert tensors["transformer.wte.weight"].dtype.name == "bfloat16"
    widened = {k: v.float().numpy() for k, v in bf16.state_dict().items() if k != "lm_head.weight"}
    expected = hf_to_params(cfg.model, widened)
    got = hf_to_params(cfg.model, tensors)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True))
    export_hf(root / "run", tmp_path / "out", dtype="bfloat16", log=QUIET)
    exported = read_safetensors(tmp_path / "out")
    rounded = params_to_hf(cfg.model, gpt2.params, dtype="bfloat16")
    assert exported["transformer.wte.weight"].dtype.name == "bfloat16"
    assert all(np.array_equal(exported[k], rounded[k]) for k in rounded)
    assert json.loads((tmp_path / "out" / "config.json").read_text())["dtype"] == "bfloat16"
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.transformer.wte.weight.dtype == torch.bfloat16


def test_buffers_and_a_copied_tied_head_are_accepted(case):
    name, root, cfg, params = case.name, case.root, case.cfg, case.params
    tensors = read_safetensors(root / "hf")
    if name == "gpt2-tied":
        tensors["transformer.h.0.attn.bias"] = np.tril(np.ones((64, 64), np.float32))[None, None]
        tensors["transformer.h.1.attn.masked_bias"] = np.float32(-1e4)
        tensors["lm_head.weight"] = tensors["transformer.wte.weight"]
        # a base-model (GPT2Model) file, like the original gpt2 on the Hub: no "transformer." prefix
        base = {k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
        got = hf_to_params(cfg.model, base)
        want = jax.tree.map(np.asarray, params)
        assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))
    else:
        tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    got = hf_to_params(cfg.model, tensors)
    want = jax.tree.map(np.asarray, params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True))


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama-errors")
    _perturbed(_llama_gqa_tied, seed=3).save_pretrained(root / "hf")
    return root / "hf"


def _variant(src, dst, edit):
    """A copy of the model directory whose tensors went through `edit`."""
    shutil.copytree(src, dst)
    tensors = read_safetensors(src)
    edit(tensors)
    save_file(tensors, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def test_missing_tensor_is_named(llama_dir, tmp_path):
    bad = _variant(llama_dir, tmp_path / "bad", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    match = r"model\.safetensors has no tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"
    with pytest.raises(ConversionError, match=match):
        import_hf(bad, tmp_path / "run", log=QUIET)


def test_wrong_shape_is_named(llama_dir, tmp_path):
    def edit(t):
        t["model.layers.0.self_attn.k_proj.weight"] = np.zeros((8, 48), np.float32)

    bad = _variant(llama_dir, tmp_path / "bad", edit)
    match = r"'model\.layers\.0\.self_attn\.k_proj\.weight'.*shape \(8, 48\), expected \(16, 48\)"
    with pytest.raises(ConversionError, match=match):
        import_hf(bad, tmp_path / "run", log=QUIET)


def test_unexpected_tensor_is_named(llama_dir, tmp_path):
    def edit(t):
        t["model.layers.0.self_attn.q_norm.weight"] = np.ones(8, np.float32)

    bad = _variant(llama_dir, tmp_path / "bad", edit)
    with pytest.raises(ConversionError, match=r"'model\.layers\.0\.self_attn\.q_norm\.weight'"):
        import_hf(bad, tmp_path / "run", log=QUIET)


def test_corrupt_file_is_named(llama_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(llama_dir, bad)
    data = (bad / "model.safetensors").read_bytes()
    (bad / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match=rf"{bad / 'model.safetensors'} is not a readable safetensors file"):
        import_hf(bad, tmp_path / "run", log=QUIET)


def test_missing_files_are_named(llama_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="has no config.json"):
        import_hf(tmp_path / "empty", tmp_path / "run", log=QUIET)
    shutil.copy(llama_dir / "config.json", tmp_path / "empty")
    (tmp_path / "empty" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ConversionError, match=r"no model\.safetensors.*pytorch_model\.bin.*never loads"):
        import_hf(tmp_path / "empty", tmp_path / "run", log=QUIET)


def test_out_dir_with_checkpoints_is_refused(case):
    root = case.root
    with pytest.raises(ConversionError, match="already holds checkpoints"):
        import_hf(root / "hf", root / "run", log=QUIET)


GPT2_CONFIG = {"architectures": ["GPT2LMHeadModel"], "vocab_size": 50, "n_embd": 32, "n_layer": 1, "n_head": 4,
               "n_positions": 32}  # fmt: skip
LLAMA_CONFIG = {"architectures": ["LlamaForCausalLM"], "vocab_size": 50, "hidden_size": 32, "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": 4}  # fmt: skip


@pytest.mark.parametrize(
    "config,match",
    [
        ({"architectures": ["BertForMaskedLM"]}, r"'BertForMaskedLM' is not supported; supported: GPT2LMHead"),
        (GPT2_CONFIG | {"activation_function": "relu"}, r"activation_function='relu' is not supported"),
        (GPT2_CONFIG | {"scale_attn_by_inverse_layer_idx": True}, r"scale_attn_by_inverse_layer_idx=True"),
        (GPT2_CONFIG | {"reorder_and_upcast_attn": True}, r"reorder_and_upcast_attn=True"),
        (LLAMA_CONFIG | {"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
        (LLAMA_CONFIG | {"attention_bias": True}, r"attention_bias=True"),
        (LLAMA_CONFIG | {"mlp_bias": True}, r"mlp_bias=True"),
        (LLAMA_CONFIG | {"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, r"rope_parameters\.rope_type='yarn"),
        (LLAMA_CONFIG | {"rope_scaling": {"type": "linear", "factor": 2.0}}, r"rope_scaling\.rope_type='linear'"),
        ({k: v for k, v in LLAMA_CONFIG.items() if k != "hidden_size"}, r"no 'hidden_size'"),
    ],
)
def test_config_errors_name_the_field(config, match):
    with pytest.raises(ConversionError, match=match):
        hf_to_config(config)


def test_export_refuses_a_model_without_hf_architecture():
    model = hf_to_config(GPT2_CONFIG)
    with pytest.raises(ConversionError, match=r"model\.block='post_ln'"):
        config_to_hf(dataclasses.replace(model, block="post_ln", mlp="relu"))
    with pytest.raises(ConversionError, match=r"use_bias=False"):
        config_to_hf(dataclasses.replace(model, use_bias=False))


# --------------------------------------------------------------------------- tokenizer


def test_hf_tokenizer_loads_and_round_trips(tmp_path):
    path = _train_tokenizer(tmp_path)
    tok = load_tokenizer(str(path))
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 300
    assert tok.piece(tok.eos_id) == "<|endoftext|>" and tok.bos_id is None
    assert tok.pad_id == tok.eos_id, "no pad_token named: pad falls back to eos"
    text = "the lazy café\tfox, 42 naïve lines\n  and spaces 🙂"
    ids = tok.encode(text)
    assert ids.dtype == np.int32 and len(ids) < len(text.encode())
    assert tok.decode(ids) == text
    assert tok.identity.startswith("hf-tokenizer:") and tok.identity == HFTokenizer(path).identity
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|pad|>"}}))
    renamed = HFTokenizer(path)  # an AddedToken dict in tokenizer_config.json names another EOS
    assert renamed.piece(renamed.eos_id) == "<|pad|>"


def test_hf_tokenizer_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        load_tokenizer(str(tmp_path / "missing.json"))
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": 3')
    with pytest.raises(TokenizerError, match="is not a readable Hugging Face tokenizer.json"):
        load_tokenizer(str(tmp_path / "tokenizer.json"))


def test_import_copies_the_tokenizer_and_export_carries_it(gpt2, tmp_path):
    root, cfg = gpt2.root, gpt2.cfg
    tok = load_run_tokenizer(cfg)
    assert isinstance(tok, HFTokenizer)
    assert tok.path == root / "run" / "tokenizer.json"
    assert tok.identity == HFTokenizer(root / "hf" / "tokenizer.json").identity
    assert tok.decode(tok.encode(LINES[2])) == LINES[2]
    export_hf(root / "run", tmp_path, log=QUIET)
    hf_config = json.loads((tmp_path / "config.json").read_text())
    assert hf_config["eos_token_id"] == tok.eos_id and hf_config["bos_token_id"] is None
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert theirs.eos_token_id == tok.eos_id
    assert theirs(LINES[0], add_special_tokens=False).input_ids == tok.encode(LINES[0]).tolist()


def test_write_safetensors_single_file_when_small(tmp_path):
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    assert [p.name for p in write_safetensors(tensors, tmp_path, max_shard_size=1 << 20)] == ["model.safetensors"]
    back = read_safetensors(tmp_path)
    assert set(back) == {"a", "b"} and np.array_equal(back["a"], tensors["a"])


def test_cli_convert_both_ways(llama, tmp_path, capsys):
    root = llama.root
    assert main(["convert", "to-hf", str(root / "run"), str(tmp_path / "hf"), "--max-shard-mb", "0.02"]) == 0
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    assert main(["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "run")]) == 0
    assert main(["convert", "from-hf", str(tmp_path / "hf"), str(tmp_path / "run")]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    original, again = read_safetensors(root / "hf"), read_safetensors(tmp_path / "hf")
    assert set(again) == set(original) and all(np.array_equal(again[k], original[k]) for k in original)
    assert main(["convert", "to-hf", str(root / "run"), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["torch_dtype"] == "bfloat16"


# --------------------------------------------------------------------------- imported runs at work


def test_evaluating_an_imported_model_equals_transformers(gpt2):
    """jaxllm's perplexity and multiple-choice scores of an imported GPT-2 are transformers'
    own log-likelihoods of the same token ids."""
    tok = load_run_tokenizer(gpt2.cfg)
    text = LINES[1]
    ids = [tok.eos_id, *tok.encode(text).tolist()]
    assert len(ids) - 1 <= gpt2.cfg.model.max_seq_len
    with torch.no_grad():
        x = torch.tensor([ids])
        theirs = float(gpt2.model(input_ids=x, labels=x).loss) * (len(ids) - 1)  # mean over the scored tokens
    ours = perplexity(gpt2.cfg, gpt2.params, tok, [text], batch_size=2)
    np.testing.assert_allclose(ours.nll, theirs, rtol=1e-5)

    example = MCExample(LINES[0][:20], (LINES[0][21:40], LINES[2][:15]), 0)
    result = evaluate_mc(gpt2.cfg, gpt2.params, tok, [example], batch_size=2)
    for choice, lp in zip(example.choices, result.logprobs[0], strict=True):
        ctx, cont = encode_pair(tok, example.context, " " + choice)
        with torch.no_grad():
            logp = torch.log_softmax(gpt2.model(input_ids=torch.tensor([ctx + cont])).logits[0].double(), -1)
        want = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
        np.testing.assert_allclose(lp, want, rtol=1e-5)


def test_sft_starts_from_an_imported_model(gpt2, tmp_path, capsys):
    """Instruction tuning takes an imported run as its start, like a native one."""
    data = SHARED_DATA / "instructions" / "instruction-data.json"
    out = tmp_path / "sft"
    argv = ["sft", str(gpt2.root / "run"), f"posttrain.data={data}", "train.steps=2", "train.batch_size=8",
            "train.eval_every=2", "train.eval_batches=1", "train.tensorboard=false",
            f"train.out_dir={out}"]  # fmt: skip
    assert main(argv) == 0
    assert f"starting from {gpt2.root / 'run'} (step 0)" in capsys.readouterr().out
    cfg, params, step = load_run(out)
    assert step == 2 and cfg.chat.enabled and cfg.tokenizer.path == gpt2.cfg.tokenizer.path
