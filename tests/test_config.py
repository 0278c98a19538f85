"""The config tree: presets, YAML round trips, overrides, `base:` chains, derived fields, errors."""

import dataclasses
import re

import jax
import jax.numpy as jnp
import pytest
import yaml

from jaxllm import errors
from jaxllm.config import (
    Config,
    ConfigError,
    MeshConfig,
    ModelConfig,
    list_presets,
    load_config,
    parse_override,
    to_dict,
    to_yaml,
)
from jaxllm.parallel import axes, mesh, rules

PRESETS = list_presets()

# Valid for every preset: a smaller stack, a float written the way PyYAML reads as a
# string, a list for a tuple field, an int, a bool and a null for an optional field.
ROUND_TRIP_OVERRIDES = [
    "model.num_layers=2",
    "optimizer.lr=3e-4",
    "data.inputs=[a.txt,b.txt]",
    "train.steps=123",
    "model.final_norm=false",
    "optimizer.decay_steps=null",
]


def _write(path, text):
    path.write_text(text)
    return path


def _round_trip(cfg, tmp_path, name="cfg.yaml"):
    return load_config(_write(tmp_path / name, to_yaml(cfg)))


def _config_error(source, overrides=()):
    """Load a bad config; return the ConfigError message after checking it is one line."""
    with pytest.raises(ConfigError) as info:
        load_config(source, overrides)
    msg = str(info.value)
    assert msg, "empty ConfigError message"
    assert "\n" not in msg, f"ConfigError message is not one line: {msg!r}"
    return msg


# --------------------------------------------------------------------------- presets + round trip


def test_presets_are_found():
    # The published shapes the other suites rely on must all be there.
    for name in ("gpt2-124m", "gpt2-355m", "gpt2-774m", "gpt2-1.5b", "llama-8b", "llama-70b", "shakespeare-char"):
        assert name in PRESETS
    assert PRESETS == sorted(PRESETS)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_loads_and_round_trips(preset, tmp_path):
    cfg = load_config(preset)
    assert isinstance(cfg, Config)
    back = _round_trip(cfg, tmp_path)
    assert back == cfg
    assert to_yaml(back) == to_yaml(cfg)  # the printed form is a fixed point too


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_round_trips_with_overrides(preset, tmp_path):
    cfg = load_config(preset, ROUND_TRIP_OVERRIDES)
    assert cfg.model.num_layers == 2
    assert cfg.optimizer.lr == 3e-4
    assert cfg.data.inputs == ("a.txt", "b.txt")
    assert cfg.model.final_norm is False
    assert cfg.optimizer.decay_steps == 123
    assert cfg != load_config(preset)
    assert _round_trip(cfg, tmp_path) == cfg


def test_to_yaml_is_plain_yaml_with_all_sections():
    cfg = load_config("shakespeare-char")
    raw = yaml.safe_load(to_yaml(cfg))
    sections = ["model", "mesh", "pipeline", "tokenizer", "data", "optimizer", "train", "chat", "posttrain", "ppo"]
    sections.append("grpo")
    assert list(raw) == sections
    assert raw == to_dict(cfg)
    # derived fields are written out concretely, tuples as lists
    assert raw["model"]["head_dim"] == 64
    assert raw["model"]["num_kv_heads"] == 6
    assert raw["model"]["d_ff"] == 4 * 384
    assert raw["optimizer"]["decay_steps"] == 5000
    assert raw["data"]["inputs"] == ["../shared/data/tinyshakespeare.txt"]
    assert raw["data"]["filters"]["min_chars"] == 20  # nested sections are written out too


# --------------------------------------------------------------------------- overrides


def test_override_int():
    cfg = load_config("gpt2-124m", ["model.num_layers=3", "train.batch_size=16"])
    assert cfg.model.num_layers == 3 and type(cfg.model.num_layers) is int
    assert cfg.train.batch_size == 16
    # the rest of the preset is untouched
    assert cfg.model.d_model == 768 and cfg.model.vocab_size == 50257


def test_override_integral_float_for_int_field_becomes_int():
    cfg = load_config("gpt2-124m", ["model.num_layers=4.0"])
    assert cfg.model.num_layers == 4 and type(cfg.model.num_layers) is int


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3e-4", 3e-4), ("3.0e-4", 3e-4), ("1e-3", 1e-3), ("0.0006", 6e-4), ("1", 1.0), ("2E-5", 2e-5)],
)
def test_override_float_forms(text, expected):
    assert yaml.safe_load("3e-4") == "3e-4"  # why the loader has to coerce
    cfg = load_config("gpt2-124m", [f"optimizer.lr={text}"])
    assert type(cfg.optimizer.lr) is float
    assert cfg.optimizer.lr == pytest.approx(expected, rel=1e-12)


def test_float_in_yaml_file_written_like_3e_4(tmp_path):
    path = _write(tmp_path / "f.yaml", "base: gpt2-124m\noptimizer:\n  lr: 3e-4\n  eps: 1e-6\n")
    cfg = load_config(path)
    assert type(cfg.optimizer.lr) is float and cfg.optimizer.lr == 3e-4
    assert cfg.optimizer.eps == 1e-6


def test_override_bools():
    cfg = load_config("gpt2-124m", ["model.tie_embeddings=false", "model.use_bias=False", "model.final_norm=true"])
    assert cfg.model.tie_embeddings is False
    assert cfg.model.use_bias is False
    assert cfg.model.final_norm is True


def test_override_nested_rope_scaling():
    cfg = load_config("llama-8b", ["model.rope_scaling.factor=16"])
    assert cfg.model.rope_scaling.factor == 16.0 and type(cfg.model.rope_scaling.factor) is float
    # siblings of the overridden leaf keep the preset's values
    assert cfg.model.rope_scaling.kind == "llama3"
    assert cfg.model.rope_scaling.original_max_seq_len == 8192
    assert load_config("llama-8b").model.rope_scaling.factor == 8.0


def test_override_lists_for_tuple_fields():
    cfg = load_config("shakespeare-char", ["data.inputs=[a.txt,b.txt]"])
    assert cfg.data.inputs == ("a.txt", "b.txt")
    assert isinstance(cfg.data.inputs, tuple)
    assert load_config("shakespeare-char", ["data.inputs=c.txt"]).data.inputs == ("c.txt",)  # one string: a list of one
    assert load_config("shakespeare-char", ["data.inputs=[]"]).data.inputs == ()


def test_override_null_for_optional_fields():
    cfg = load_config(
        "gpt2-124m",
        ["model.d_model=1024", "model.num_heads=16", "model.d_ff=null", "optimizer.decay_steps=null", "train.steps=42"],
    )
    assert cfg.model.d_ff == 4 * 1024
    assert cfg.model.head_dim == 1024 // 16
    assert cfg.optimizer.decay_steps == 42
    llama = load_config("llama-8b", ["model.num_kv_heads=null", "model.d_ff="])
    assert llama.model.num_kv_heads == llama.model.num_heads == 32  # null -> MHA
    assert llama.model.d_ff == 4 * 4096  # an empty value is null too


def test_later_override_wins():
    cfg = load_config("gpt2-124m", ["model.num_layers=3", "model.num_layers=5"])
    assert cfg.model.num_layers == 5


def test_parse_override():
    assert parse_override("model.num_layers=4") == (["model", "num_layers"], 4)
    assert parse_override("model.rope_scaling.factor=16") == (["model", "rope_scaling", "factor"], 16)
    assert parse_override("data.inputs=[a,b]") == (["data", "inputs"], ["a", "b"])
    assert parse_override("train.out_dir=runs/x=1") == (["train", "out_dir"], "runs/x=1")  # split at the first '='
    assert parse_override("model.head_dim=null") == (["model", "head_dim"], None)


# --------------------------------------------------------------------------- base: inheritance


def test_base_preset_inheritance(tmp_path):
    path = _write(
        tmp_path / "child.yaml",
        "base: gpt2-124m\nmodel:\n  num_layers: 4\n  dropout: 0.1\ntrain:\n  steps: 10\n",
    )
    cfg = load_config(path)
    base = load_config("gpt2-124m")
    assert cfg.model.num_layers == 4
    assert cfg.model.dropout == 0.1
    assert cfg.train.steps == 10 and cfg.optimizer.decay_steps == 10
    # everything else is inherited
    assert cfg.model.d_model == base.model.d_model == 768
    assert cfg.model.vocab_size == 50257
    assert cfg.data.seq_len == 1024
    assert cfg == load_config("gpt2-124m", ["model.num_layers=4", "model.dropout=0.1", "train.steps=10"])


def test_relative_base_beside_the_file(tmp_path, monkeypatch):
    cfg_dir = tmp_path / "cfgs"
    cfg_dir.mkdir()
    _write(
        cfg_dir / "other.yaml",
        "base: llama-8b\nmodel:\n  num_layers: 3\n  rope_scaling:\n    factor: 16.0\ntrain:\n  steps: 7\n",
    )
    child = _write(cfg_dir / "child.yaml", "base: other.yaml\nmodel:\n  num_layers: 2\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the base is found beside the file, not in the cwd
    cfg = load_config(child)
    assert cfg.model.num_layers == 2  # the child wins over its base
    assert cfg.train.steps == 7  # from other.yaml
    assert cfg.model.rope_scaling.factor == 16.0  # deep merge of a nested section
    assert cfg.model.rope_scaling.kind == "llama3"  # ... keeping the rest from llama-8b
    assert cfg.model.d_model == 4096 and cfg.model.num_kv_heads == 8
    # overrides apply on top of the whole chain
    assert load_config(child, ["model.num_layers=5"]).model.num_layers == 5


@pytest.mark.parametrize("cycle", ["self", "pair", "triple"])
def test_circular_base_chain(tmp_path, cycle):
    names = {"self": ["a"], "pair": ["a", "b"], "triple": ["a", "b", "c"]}[cycle]
    for i, name in enumerate(names):
        _write(tmp_path / f"{name}.yaml", f"base: {names[(i + 1) % len(names)]}.yaml\nmodel:\n  num_layers: 2\n")
    msg = _config_error(tmp_path / "a.yaml")
    assert "circular" in msg
    assert "a.yaml" in msg


def test_missing_base_is_a_config_error(tmp_path):
    path = _write(tmp_path / "c.yaml", "base: gpt2-999m\n")
    assert "gpt2-999m" in _config_error(path)


# --------------------------------------------------------------------------- derived fields


def test_derived_fields_from_yaml(tmp_path):
    path = _write(
        tmp_path / "d.yaml",
        "model:\n  d_model: 96\n  num_heads: 6\n  num_layers: 2\ntrain:\n  steps: 321\n",
    )
    cfg = load_config(path)
    m = cfg.model
    assert m.num_kv_heads == 6
    assert m.head_dim == 96 // 6
    assert m.d_ff == 4 * 96
    assert cfg.optimizer.decay_steps == 321


def test_explicit_values_beat_derived_defaults():
    cfg = load_config(
        "shakespeare-char",
        ["model.num_kv_heads=2", "model.head_dim=32", "model.d_ff=1000", "optimizer.decay_steps=50"],
    )
    assert (cfg.model.num_kv_heads, cfg.model.head_dim, cfg.model.d_ff) == (2, 32, 1000)
    assert cfg.optimizer.decay_steps == 50
    assert cfg.train.steps == 5000


def test_derived_fields_follow_overrides():
    # shakespeare-char leaves head_dim, num_kv_heads and d_ff to be derived
    cfg = load_config("shakespeare-char", ["model.d_model=192", "model.num_heads=12", "train.steps=77"])
    assert cfg.model.head_dim == 16
    assert cfg.model.num_kv_heads == 12
    assert cfg.model.d_ff == 768
    assert cfg.optimizer.decay_steps == 77


def test_derived_fields_in_code(tmp_path):
    m = ModelConfig(d_model=64, num_heads=8)
    assert (m.num_kv_heads, m.head_dim, m.d_ff) == (8, 8, 256)
    assert Config().optimizer.decay_steps is None  # filled by the loader, not by the dataclass
    # an empty file gives the dataclass defaults, resolved
    cfg = load_config(_write(tmp_path / "empty.yaml", ""))
    assert cfg.optimizer.decay_steps == Config().train.steps
    assert cfg.model == ModelConfig()


# --------------------------------------------------------------------------- bad configs

BAD_OVERRIDES = [
    # (preset, overrides, substrings the one-line message must contain)
    ("gpt2-124m", ["model.num_heads=5"], ["model.num_heads", "model.d_model"]),
    ("gpt2-124m", ["model.num_kv_heads=5"], ["model.num_kv_heads"]),
    ("llama-8b", ["model.num_kv_heads=3"], ["model.num_kv_heads"]),
    ("gpt2-124m", ["model.num_layer=3"], ["model.num_layer", "model.num_layers"]),
    ("gpt2-124m", ["modle.x=1"], ["modle.x"]),
    ("gpt2-124m", ["model.d_model=-4"], ["model.d_model"]),
    ("gpt2-124m", ["model.num_layers=-1"], ["model.num_layers"]),
    ("gpt2-124m", ["model.num_heads=0"], ["model.num_heads"]),
    ("gpt2-124m", ["model.vocab_size=0"], ["model.vocab_size"]),
    ("gpt2-124m", ["model.norm=batchnorm"], ["model.norm", "batchnorm"]),
    ("gpt2-124m", ["model.mlp=tanh"], ["model.mlp"]),
    ("gpt2-124m", ["model.num_layers=abc"], ["model.num_layers"]),
    ("gpt2-124m", ["model.num_layers=2.5"], ["model.num_layers"]),
    ("gpt2-124m", ["model.tie_embeddings=3"], ["model.tie_embeddings"]),
    ("gpt2-124m", ["model.num_kv_heads=abc"], ["model.num_kv_heads"]),
    ("gpt2-124m", ["optimizer.lr=fast"], ["optimizer.lr"]),
    ("gpt2-124m", ["optimizer.lr=-1e-3"], ["optimizer.lr"]),
    ("gpt2-124m", ["data.inputs=3"], ["data.inputs"]),
    ("gpt2-124m", ["data.seq_len=2048"], ["data.seq_len", "model.max_seq_len"]),
    ("gpt2-124m", ["train.batch_size=10", "train.microbatches=3"], ["train.batch_size", "train.microbatches"]),
    ("gpt2-124m", ["mesh.tensor=5"], ["mesh.tensor"]),
    ("llama-8b", ["mesh.tensor=3"], ["mesh.tensor"]),
    ("gpt2-124m", ["mesh.data=0"], ["mesh.data"]),
    ("gpt2-124m", ["model.num_layers"], ["model.num_layers", "="]),
    ("gpt2-124m", ["model.num_layers.x=3"], ["model.num_layers.x"]),
    ("llama-8b", ["model.rope_scaling.factor=0.5"], ["model.rope_scaling.factor"]),
    ("llama-8b", ["model.rope_scaling.kind=yarn"], ["model.rope_scaling.kind"]),
    ("gpt2-124m", ["model.rope_scaling.kind=llama3"], ["model.rope_scaling.kind", "model.position"]),
    ("gpt2-124m", ["model.dropout=1.5"], ["model.dropout"]),
]


@pytest.mark.parametrize(
    ("preset", "overrides", "needles"),
    BAD_OVERRIDES,
    ids=[" ".join(o) for _, o, _ in BAD_OVERRIDES],
)
def test_bad_override_raises_one_line_config_error(preset, overrides, needles):
    load_config(preset)  # the preset itself is fine: the override is what breaks it
    msg = _config_error(preset, overrides)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_unknown_key_names_it_and_suggests_the_right_one():
    msg = _config_error("gpt2-124m", ["model.num_layer=3"])
    assert re.search(r"model\.num_layer\b", msg), msg  # the unknown key itself
    assert "model.num_layers" in msg  # the suggestion
    msg = _config_error("gpt2-124m", ["modle.x=1"])
    assert "modle.x" in msg and re.search(r"\bmodel\b", msg), msg


def test_missing_preset_is_named():
    msg = _config_error("gpt2-999m")
    assert "gpt2-999m" in msg


def test_missing_yaml_path_is_named(tmp_path):
    missing = tmp_path / "nope.yaml"
    assert "nope.yaml" in _config_error(missing)


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("model:\n  num_layer: 3\n", ["model.num_layer", "model.num_layers"]),
        ("modle:\n  num_layers: 3\n", ["modle"]),
        ("model:\n  rope_scaling:\n    factr: 2.0\n", ["model.rope_scaling.factr"]),
        ("base: gpt2-124m\nmodel:\n  num_layer: 3\n", ["model.num_layer"]),
        ("model:\n  norm: batchnorm\n", ["model.norm", "batchnorm"]),
        ("model:\n  num_heads: 5\n", ["model.num_heads"]),
        ("train:\n  batch_size: 10\n  microbatches: 4\n", ["train.batch_size", "train.microbatches"]),
    ],
    ids=["unknown-key", "unknown-section", "unknown-nested-key", "unknown-key-with-base", "enum", "heads", "micro"],
)
def test_bad_yaml_file_raises_one_line_config_error(tmp_path, body, needles):
    msg = _config_error(_write(tmp_path / "bad.yaml", body))
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_config_error_is_the_one_in_jaxllm_errors():
    # the CLI catches JaxllmError once; layers below config (parallel.axes) raise the same class
    assert ConfigError is errors.ConfigError
    assert issubclass(ConfigError, errors.JaxllmError)


@pytest.mark.parametrize("entry", ["embed", "nonsense=tensor", "embed=model"])
def test_bad_mesh_rules_entry_is_a_config_error(entry):
    with pytest.raises(ConfigError, match="mesh.rules entry"):
        axes.parse_rules([entry])
    msg = _config_error("gpt2-124m", [f"mesh.rules=[{entry}]"])
    assert "mesh.rules entry" in msg and entry in msg, msg


def test_mesh_axes_are_written_once():
    # MeshConfig has one size field per mesh axis, in mesh order; the mesh and the rules use the same names
    # (mesh.slices, also an int, says how the axes are laid over TPU slices: not an axis)
    sizes = [f.name for f in dataclasses.fields(MeshConfig) if f.type in ("int", int) and f.name != "slices"]
    assert tuple(sizes) == axes.MESH_AXES
    assert mesh.AXES is axes.MESH_AXES and rules.MESH_AXES is axes.MESH_AXES
    assert rules.parse_rules is axes.parse_rules


# --------------------------------------------------------------------------- hashable / static


def test_config_is_hashable_and_frozen():
    a = load_config("gpt2-124m")
    b = load_config("gpt2-124m")
    assert isinstance(hash(a), int)
    assert a == b and hash(a) == hash(b)
    assert hash(load_config("gpt2-124m", ["data.inputs=[x.txt]"])) is not None  # tuple fields hash too
    assert len({a, b, load_config("gpt2-124m", ["model.num_layers=2"])}) == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.model.num_layers = 3  # type: ignore[misc]


def test_config_is_a_jit_static_argument():
    calls = []

    def f(x, cfg):
        calls.append(1)
        return x * cfg.model.num_layers

    jf = jax.jit(f, static_argnums=1)
    cfg = load_config("gpt2-124m")
    assert float(jf(jnp.float32(2.0), cfg)) == 24.0
    assert float(jf(jnp.float32(2.0), load_config("gpt2-124m"))) == 24.0  # equal config: cache hit
    assert len(calls) == 1
    assert float(jf(jnp.float32(2.0), load_config("gpt2-124m", ["model.num_layers=3"]))) == 6.0
    assert len(calls) == 2
