"""One config tree: typed dataclasses loaded from YAML, with `a.b.c=value` overrides.

Why this shape: every run is described by one resolved, validated `Config` that can be
printed, saved next to a checkpoint and loaded back identically. Everything is checked
once, up front, so a bad value fails in the first second with a message that names the
key, the value and the fix, never forty minutes into a run.

Loading order (later wins):
  1. dataclass defaults;
  2. the YAML file's `base:` chain (a preset name from configs/ or a path), recursively;
  3. the YAML file itself;
  4. command-line overrides `model.num_layers=4` (values parsed as YAML scalars).
Then derived fields are filled in (`num_kv_heads`, `head_dim`, `d_ff`, ...) and the
cross-field rules are checked. The dataclasses are frozen (hashable), so a config can
be a static argument to `jax.jit`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

Norm = Literal["layernorm", "rmsnorm"]
BlockKind = Literal["pre_ln", "post_ln"]
Position = Literal["learned", "rope"]
MLPKind = Literal["gelu", "relu", "swiglu"]
AttentionImpl = Literal["xla", "dot_product"]
Remat = Literal["none", "full", "save_dots", "save_dots_no_batch"]
DType = Literal["float32", "bfloat16", "float16"]
RopeScalingKind = Literal["none", "llama3"]
Head = Literal["lm", "scalar"]


class ConfigError(ValueError):
    """A bad config value. The message is one line: key, value, and how to fix it."""


@dataclasses.dataclass(frozen=True)
class RopeScalingConfig:
    """Llama-3.1 style RoPE frequency scaling (long-context extension).

    Frequencies whose wavelength is longer than `original_max_seq_len / low_freq_factor`
    are divided by `factor`; those shorter than `original_max_seq_len / high_freq_factor`
    are kept; the band in between is interpolated smoothly.
    """

    kind: RopeScalingKind = "none"
    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The decoder's architecture: every family is a choice of these fields."""

    vocab_size: int = 256
    max_seq_len: int = 256
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: = num_heads (MHA); 1 is MQA; between is GQA
    head_dim: int | None = None  # None: d_model // num_heads
    d_ff: int | None = None  # None: 4 * d_model
    norm: Norm = "layernorm"
    norm_eps: float = 1e-5
    block: BlockKind = "pre_ln"
    final_norm: bool = True  # ln_f after the stack (GPT-2 and Llama have it)
    position: Position = "learned"
    rope_theta: float = 10000.0
    rope_scaling: RopeScalingConfig = RopeScalingConfig()
    mlp: MLPKind = "gelu"
    attention_impl: AttentionImpl = "xla"
    tie_embeddings: bool = True
    use_bias: bool = True  # biases on attention and MLP projections
    dropout: float = 0.0  # on embeddings and on each residual branch (GPT-2 resid/embd)
    attention_dropout: float = 0.0  # on the attention probabilities
    init_std: float = 0.02
    remat: Remat = "none"
    # Unroll every loop over layers (and the pipeline schedule's ticks and the accumulation
    # microbatches) into straight-line code. Compiles grow with depth; XLA's cost analysis
    # counts a loop body once, so `jaxllm plan` compiles small unrolled probes to count all.
    scan_unroll: bool = False
    head: Head = "lm"  # "lm": next-token logits; "scalar": one value per position (reward models)
    dtype: DType = "float32"  # compute dtype of matmuls and activations
    param_dtype: DType = "float32"

    def __post_init__(self) -> None:
        # Derived sizes are filled in at construction, so every ModelConfig (from YAML
        # or built in code) says exactly what runs and prints/saves concretely.
        if self.num_kv_heads is None:
            object.__setattr__(self, "num_kv_heads", self.num_heads)
        if self.head_dim is None and self.num_heads > 0:
            object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
        if self.d_ff is None:
            object.__setattr__(self, "d_ff", 4 * self.d_model)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Device mesh axis sizes; their product is the device count, -1 means "the rest"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    pipeline: int = 1
    # Changes to the logical-axis rules table (jaxllm/parallel/rules.py), each
    # "logical=axis" or "logical=axis1+axis2" or "logical=" (replicated), e.g. ["embed=", "mlp=tensor"].
    rules: tuple[str, ...] = ()


TokenizerKind = Literal["bpe", "unigram", "char", "word"]


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """Which tokenizer a run uses, and how `jaxllm tokenizer train` makes one.

    `path` is "byte" (256 byte ids, no training; byte 0 doubles as EOS/PAD), a
    sentencepiece `.model` file, or a Hugging Face `tokenizer.json` (an imported
    model's). The rest only matters when training one.
    """

    path: str = "byte"
    kind: TokenizerKind = "bpe"
    vocab_size: int = 8000
    byte_fallback: bool = True  # unseen characters become byte pieces: nothing is ever out of vocabulary
    character_coverage: float = 1.0  # share of characters that get their own piece; the rest fall back to bytes
    input_sentence_size: int = 0  # lines sampled for training; 0 = all
    max_sentence_length: int = 65536  # longest training line, in bytes; longer lines are skipped
    # pieces that always stay whole (sentencepiece user-defined symbols): the default chat
    # template's markers, so `<|user|>` costs one token, never seven
    special_tokens: tuple[str, ...] = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


@dataclasses.dataclass(frozen=True)
class FilterConfig:
    """Document quality filters applied by `jaxllm data prepare` (see jaxllm/data/clean.py)."""

    min_chars: int = 20
    max_chars: int = 50_000_000
    min_alnum_fraction: float = 0.5  # letters+digits over non-whitespace characters
    max_repeated_line_fraction: float = 0.5  # non-empty lines that repeat an earlier line of the document


@dataclasses.dataclass(frozen=True)
class DedupConfig:
    """Exact (normalized-text hash) and near (MinHash + LSH) deduplication."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.8  # estimated Jaccard similarity of word shingles at which a document is a near-duplicate
    num_perm: int = 128  # MinHash signature length
    bands: int = 16  # LSH bands; num_perm / bands rows each
    shingle_words: int = 5


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Raw text -> prepared shards (`jaxllm data prepare`) -> batches (the grain pipeline)."""

    path: str = "data/prepared"  # the prepared dataset (manifest.json + shards): prepare writes it, train reads it
    inputs: tuple[str, ...] = ()  # raw text files, globs, or .jsonl files (one JSON object per line)
    jsonl_field: str = "text"
    val_fraction: float = 0.05  # share held out for validation (see data.split)
    # "document": whole documents, chosen by a seeded hash of their text;
    # "tail": the last val_fraction of every document (nanoGPT's split, for a one-document corpus).
    split: Literal["document", "tail"] = "document"
    # What one document is in a text file: the whole "file", or each "paragraph" (a block
    # between blank lines; a speech, in a play). Filters and dedup judge one document at a
    # time, so paragraphs let them see boilerplate and repeats inside files. JSONL: a record.
    documents: Literal["file", "paragraph"] = "file"
    shard_tokens: int = 16_777_216  # tokens per shard file
    seq_len: int = 256
    seed: int = 0
    num_workers: int = 0  # grain worker processes; 0 reads in the main process
    prefetch: int = 4  # batches read ahead of the train step
    filters: FilterConfig = FilterConfig()
    dedup: DedupConfig = DedupConfig()


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warmup and cosine decay to `min_lr_ratio * lr`."""

    lr: float = 3e-4
    min_lr_ratio: float = 0.1
    warmup_steps: int = 100
    decay_steps: int | None = None  # None: train.steps
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0  # global-norm clipping; 0 disables


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    steps: int = 1000
    batch_size: int = 32  # global batch, in sequences
    microbatches: int = 1  # gradient accumulation: batch_size is split into this many
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 20  # validation batches per evaluation
    checkpoint_every: int = 500
    keep_checkpoints: int = 3  # the most recent N are kept...
    keep_every: int = 0  # ...plus every checkpoint whose step is a multiple of this (0: none)
    on_nonfinite: Literal["stop", "skip"] = "stop"  # a NaN/inf loss or gradient: stop the run, or skip that update
    tensorboard: bool = True
    out_dir: str = "runs/default"


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The pipeline schedule used when mesh.pipeline > 1 (jaxllm/model/pipelined.py)."""

    repeats: int = 1  # 1: GPipe; R > 1: circular, each stage holds R non-adjacent layer chunks


@dataclasses.dataclass(frozen=True)
class ChatConfig:
    """How a conversation becomes text: instruction tuning trains on it and `jaxllm chat`
    renders it, so the template travels with the run (its config.yaml).

    Each role's template holds `{content}` once. A reply is generated after the text
    before `{content}` in `assistant` and ends at the text after it (its first line,
    e.g. "<|end|>"), which is the stop string. `enabled` marks an instruction-tuned run.

    An imported model brings its own Jinja template (`template`, rendered as transformers
    does, jaxllm/chat_template.py); it then replaces the three role templates, and a reply
    ends at one of `stop_tokens` (the template's end-of-turn token, e.g. "<|im_end|>") or EOS.
    """

    enabled: bool = False
    system: str = "<|system|>\n{content}<|end|>\n"
    user: str = "<|user|>\n{content}<|end|>\n"
    assistant: str = "<|assistant|>\n{content}<|end|>\n"
    default_system: str = ""  # used when a conversation brings no system message
    template: str = ""  # a Jinja chat template (an imported model's); "" = the role templates above
    stop_tokens: tuple[str, ...] = ()  # special tokens that end a reply besides EOS (with a Jinja template)


@dataclasses.dataclass(frozen=True)
class PostTrainConfig:
    """Instruction tuning and preference learning (jaxllm/posttrain/)."""

    data: str = ""  # .json / .jsonl: Alpaca records, chat `messages`, or chosen/rejected pairs
    init_from: str = ""  # a run directory whose newest weights start the run ("" = random init)
    val_fraction: float = 0.05  # records held out (seeded by train.seed) for validation
    packing: bool = True  # several conversations per row (separate segments) instead of one row each
    beta: float = 0.1  # DPO: strength of the pull away from the reference (lower: further)
    label_smoothing: float = 0.0  # DPO: assumed share of flipped preference labels (conservative DPO)
    reference_free: bool = False  # DPO without the reference model's log-probs
    reward_margin: float = 0.0  # reward model: required gap r_chosen - r_rejected inside the log-sigmoid
    reward_center: float = 0.0  # reward model: weight of (r_chosen + r_rejected)^2, keeps rewards near 0


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """PPO against a reward model (jaxllm/posttrain/ppo_loop.py); train.steps counts
    policy updates: each rollout of `rollout_batch` prompts gives epochs x rollout_batch /
    train.batch_size of them. The policy starts from (and is regularised towards)
    posttrain.init_from; prompts come from posttrain.data."""

    reward_from: str = ""  # the reward model's run directory (jaxllm reward)
    critic_from: str = ""  # the critic's start: a scalar-head run ("" = the reward model)
    rollout_batch: int = 64  # prompts sampled per rollout (a multiple of train.batch_size)
    epochs: int = 4  # passes over each rollout batch
    max_new_tokens: int = 32  # reply length cap during rollouts and evaluation
    temperature: float = 1.0  # rollout sampling temperature (it also divides the logits of every log-prob)
    kl_coef: float = 0.05  # per-token KL penalty to the reference policy (its starting value if adaptive)
    adaptive_kl: bool = False  # steer kl_coef towards kl_target (Ziegler et al.'s proportional controller)
    kl_target: float = 6.0  # adaptive KL: target KL per reply (summed over its tokens)
    kl_horizon: int = 10000  # adaptive KL: the controller's horizon, in replies
    clip: float = 0.2  # policy ratio clip
    value_clip: float = 0.2  # critic: how far a value may move from its rollout-time value per update
    gamma: float = 1.0  # discount
    lam: float = 0.95  # GAE lambda
    critic_lr: float = 0.0  # the critic's peak learning rate (0 = optimizer.lr)
    critic_warmup: int = 0  # rollouts at the start that train only the critic (its values settle first)
    missing_stop_penalty: float = 0.0  # subtracted from the score of replies cut at max_new_tokens
    normalize_reward: bool = True  # scores as (score - mean) / std of the starting policy's replies
    eval_prompts: int = 64  # held-out prompts sampled and scored at each evaluation


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole run."""

    model: ModelConfig = ModelConfig()
    mesh: MeshConfig = MeshConfig()
    pipeline: PipelineConfig = PipelineConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    train: TrainConfig = TrainConfig()
    chat: ChatConfig = ChatConfig()
    posttrain: PostTrainConfig = PostTrainConfig()
    ppo: PPOConfig = PPOConfig()


# --------------------------------------------------------------------------- files


def config_dir() -> Path:
    """Where named presets live: $JAXLLM_CONFIG_DIR, else the repository's configs/."""
    env = os.environ.get("JAXLLM_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "configs"


def list_presets() -> list[str]:
    """Names of the YAML presets in `config_dir()`, sorted."""
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def _find_file(name: str, key: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{key}={name!r}: no such file; give an existing YAML path or a preset name")
        return path
    preset = config_dir() / f"{name}.yaml"
    if preset.is_file():
        return preset
    close = difflib.get_close_matches(name, list_presets(), n=3)
    hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(list_presets())}"
    raise ConfigError(f"{key}={name!r} is not a file nor a preset in {config_dir()}; {hint}")


def _read_yaml(path: Path, key: str, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML config and merge its `base:` chain underneath it."""
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"{key}: circular `base:` chain {' -> '.join(p.name for p in (*chain, path))}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); give a YAML config") from None
    except yaml.YAMLError as e:  # file:line:col, as editors and compilers print it, so it can be jumped to
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(p for p in (getattr(e, "context", None), getattr(e, "problem", None)) if p)
        raise ConfigError(f"{where}: invalid YAML ({what or str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"base={base!r} in {path}: must be a preset name or a YAML path")
    sibling = path.parent / base  # a relative base path is read beside the file naming it
    base_path = sibling if sibling.suffix in (".yaml", ".yml") and sibling.is_file() else _find_file(base, "base")
    return _deep_merge(_read_yaml(base_path, "base", (*chain, path)), raw)


def _deep_merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in top.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str], Any]:
    """`model.num_layers=4` -> (["model", "num_layers"], 4). Values parse as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} has no '='; write it as section.key=value, e.g. model.num_layers=4")
    key, _, value = text.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {text!r}: empty key part; write it as section.key=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def _set_path(tree: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


# --------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp` and convert the few safe cases."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                pass
        raise ConfigError(f"{key}={value!r} has the wrong type; expected {_type_name(tp)}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(map(str, choices))}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list of {_type_name(typing.get_args(tp)[0])}")
        return tuple(_coerce(v, typing.get_args(tp)[0], f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be true or false")
        return value
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}={value!r} must be an integer")
        return value
    if tp is float:
        if isinstance(value, str):  # PyYAML reads "3e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}={value!r} must be a number")
        if not math.isfinite(value):  # inf passes range checks like `lr > 0`; nan fails them with a wrong message
            raise ConfigError(f"{key}={value} must be a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r} must be a string")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {key}")  # a bug in this file


def _build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix}={raw!r} must be a mapping with keys {', '.join(_field_names(cls))}")
    hints = typing.get_type_hints(cls)
    names = _field_names(cls)
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            hint = (
                f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
                if close
                else f"valid keys: {', '.join(names)}"
            )
            raise ConfigError(f"unknown key {key}; {hint}")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _field_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


# --------------------------------------------------------------------------- resolve + validate


def _resolve(cfg: Config) -> Config:
    """Fill derived fields that span sections (ModelConfig fills its own)."""
    if cfg.optimizer.decay_steps is None:
        return dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, decay_steps=cfg.train.steps))
    return cfg


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def validate_model(m: ModelConfig) -> None:
    """Rules of the model section alone. Raises ConfigError naming the first broken key."""
    for name in ("vocab_size", "max_seq_len", "d_model", "num_layers", "num_heads"):
        value = getattr(m, name)
        _need(value > 0, f"model.{name}={value} must be a positive integer")
    _need(
        m.d_model % m.num_heads == 0,
        f"model.num_heads={m.num_heads} does not divide model.d_model={m.d_model}; "
        f"choose num_heads among the divisors of {m.d_model}",
    )
    for name in ("num_kv_heads", "head_dim", "d_ff"):
        value = getattr(m, name)
        _need(
            value is not None and value > 0,
            f"model.{name}={value} must be a positive integer (or null for the default)",
        )
    _need(
        m.num_heads % m.num_kv_heads == 0,
        f"model.num_kv_heads={m.num_kv_heads} does not divide model.num_heads={m.num_heads}; "
        "use a divisor (1 = MQA, num_heads = MHA)",
    )
    if m.position == "rope":
        _need(m.head_dim % 2 == 0, f"model.head_dim={m.head_dim} must be even for RoPE (it rotates pairs)")
        _need(m.rope_theta > 0, f"model.rope_theta={m.rope_theta} must be positive (10000 GPT-NeoX, 500000 Llama-3)")
    s = m.rope_scaling
    if s.kind != "none":
        _need(m.position == "rope", f"model.rope_scaling.kind={s.kind!r} needs model.position=rope")
        _need(s.factor >= 1, f"model.rope_scaling.factor={s.factor} must be >= 1")
        _need(
            s.high_freq_factor > s.low_freq_factor > 0,
            f"model.rope_scaling.high_freq_factor={s.high_freq_factor} must exceed "
            f"low_freq_factor={s.low_freq_factor} > 0",
        )
        _need(
            s.original_max_seq_len > 0,
            f"model.rope_scaling.original_max_seq_len={s.original_max_seq_len} must be positive",
        )
    _need(m.norm_eps > 0, f"model.norm_eps={m.norm_eps} must be positive (1e-5 is usual)")
    _need(m.init_std > 0, f"model.init_std={m.init_std} must be positive (0.02 is usual)")
    for name in ("dropout", "attention_dropout"):
        value = getattr(m, name)
        _need(0.0 <= value < 1.0, f"model.{name}={value} must be in [0, 1)")
    _need(
        not (m.attention_impl == "dot_product" and m.attention_dropout > 0),
        f"model.attention_dropout={m.attention_dropout} is not supported by model.attention_impl=dot_product; "
        "set attention_impl=xla or attention_dropout=0",
    )


def validate(cfg: Config) -> None:
    """All rules, within and across sections. Raises ConfigError naming the first broken key."""
    m = cfg.model
    validate_model(m)
    mesh = cfg.mesh
    sizes = {name: getattr(mesh, name) for name in ("data", "fsdp", "tensor", "pipeline")}
    for name, value in sizes.items():
        _need(value == -1 or value >= 1, f"mesh.{name}={value} must be >= 1, or -1 for the remaining devices")
    _need(list(sizes.values()).count(-1) <= 1, f"mesh: only one axis may be -1, got {sizes}")
    if mesh.tensor > 1:
        for name in ("num_heads", "num_kv_heads", "d_ff"):
            value = getattr(m, name)
            _need(
                value % mesh.tensor == 0,
                f"model.{name}={value} is not divisible by mesh.tensor={mesh.tensor}; "
                "tensor parallelism splits it evenly, so pick mesh.tensor dividing it",
            )
    R = cfg.pipeline.repeats
    _need(R >= 1, f"pipeline.repeats={R} must be >= 1 (1 = GPipe, more = circular schedule)")
    if mesh.pipeline > 1:
        S, M = mesh.pipeline, cfg.train.microbatches
        _need(
            m.num_layers % (S * R) == 0,
            f"model.num_layers={m.num_layers} is not divisible by mesh.pipeline x pipeline.repeats = {S} x {R}; "
            "every stage needs the same number of layers per lap",
        )
        _need(
            M % S == 0,
            f"train.microbatches={M} is not divisible by mesh.pipeline={S}; the schedule needs M = k x S "
            f"microbatches (e.g. train.microbatches={2 * S})",
        )
        _need(
            m.dropout == 0 and m.attention_dropout == 0,
            f"model.dropout={m.dropout} / attention_dropout={m.attention_dropout}: dropout inside the pipeline "
            "schedule is not supported yet; set them to 0 with mesh.pipeline > 1",
        )

    tok = cfg.tokenizer
    _need(tok.vocab_size > 0, f"tokenizer.vocab_size={tok.vocab_size} must be positive")
    _need(
        not tok.byte_fallback or tok.vocab_size > 260,
        f"tokenizer.vocab_size={tok.vocab_size} leaves no room for pieces: byte fallback takes 256 byte ids + 4 "
        "special ids; use a larger vocab_size (e.g. 1000) or tokenizer.byte_fallback=false",
    )
    _need(0 < tok.character_coverage <= 1, f"tokenizer.character_coverage={tok.character_coverage} must be in (0, 1]")
    if tok.path == "byte":
        _need(
            m.vocab_size >= 256,
            f"model.vocab_size={m.vocab_size} is too small for tokenizer.path=byte (256 ids); set it to 256 or more",
        )

    d = cfg.data
    _need(d.seq_len > 0, f"data.seq_len={d.seq_len} must be positive")
    _need(0 <= d.val_fraction < 1, f"data.val_fraction={d.val_fraction} must be in [0, 1)")
    _need(d.shard_tokens > 0, f"data.shard_tokens={d.shard_tokens} must be positive")
    _need(d.num_workers >= 0, f"data.num_workers={d.num_workers} must be >= 0 (0 reads in the main process)")
    _need(d.prefetch >= 0, f"data.prefetch={d.prefetch} must be >= 0")
    f = d.filters
    _need(f.min_chars >= 0, f"data.filters.min_chars={f.min_chars} must be >= 0")
    _need(f.max_chars >= f.min_chars, f"data.filters.max_chars={f.max_chars} must be >= min_chars={f.min_chars}")
    for name in ("min_alnum_fraction", "max_repeated_line_fraction"):
        value = getattr(f, name)
        _need(0 <= value <= 1, f"data.filters.{name}={value} must be in [0, 1]")
    dd = d.dedup
    _need(0 < dd.threshold <= 1, f"data.dedup.threshold={dd.threshold} must be in (0, 1]")
    _need(dd.num_perm > 0 and dd.bands > 0, f"data.dedup.num_perm={dd.num_perm} and bands={dd.bands} must be positive")
    _need(
        dd.num_perm % dd.bands == 0,
        f"data.dedup.num_perm={dd.num_perm} is not divisible by data.dedup.bands={dd.bands}",
    )
    _need(dd.shingle_words > 0, f"data.dedup.shingle_words={dd.shingle_words} must be positive")
    _need(
        d.seq_len <= m.max_seq_len,
        f"data.seq_len={d.seq_len} exceeds model.max_seq_len={m.max_seq_len}; "
        "lower data.seq_len or raise model.max_seq_len",
    )

    for role in ("system", "user", "assistant"):
        template = getattr(cfg.chat, role)
        _need(
            template.count("{content}") == 1,
            f"chat.{role}={template!r} must contain {{content}} exactly once "
            f"(e.g. '<|{role}|>\\n{{content}}<|end|>\\n')",
        )
    _need(
        cfg.chat.assistant.split("{content}")[1].strip() != "",
        f"chat.assistant={cfg.chat.assistant!r} needs text after {{content}} (the stop string that ends a reply)",
    )

    _need(cfg.posttrain.beta > 0, f"posttrain.beta={cfg.posttrain.beta} must be > 0 (DPO's usual value is 0.1)")
    _need(
        0 <= cfg.posttrain.label_smoothing < 0.5,
        f"posttrain.label_smoothing={cfg.posttrain.label_smoothing} must be in [0, 0.5)",
    )
    for name in ("reward_margin", "reward_center"):
        value = getattr(cfg.posttrain, name)
        _need(value >= 0, f"posttrain.{name}={value} must be >= 0 (0 turns it off)")
    _need(
        0 <= cfg.posttrain.val_fraction < 1,
        f"posttrain.val_fraction={cfg.posttrain.val_fraction} must be in [0, 1)",
    )

    p = cfg.ppo
    for name in ("rollout_batch", "epochs", "max_new_tokens", "kl_horizon", "eval_prompts"):
        value = getattr(p, name)
        _need(value > 0, f"ppo.{name}={value} must be a positive integer")
    _need(p.temperature > 0, f"ppo.temperature={p.temperature} must be > 0 (rollouts sample; 1.0 is usual)")
    for name in ("kl_coef", "critic_lr", "missing_stop_penalty", "critic_warmup"):
        value = getattr(p, name)
        _need(value >= 0, f"ppo.{name}={value} must be >= 0")
    for name in ("clip", "value_clip", "kl_target"):
        value = getattr(p, name)
        _need(value > 0, f"ppo.{name}={value} must be > 0")
    for name in ("gamma", "lam"):
        value = getattr(p, name)
        _need(0 <= value <= 1, f"ppo.{name}={value} must be in [0, 1]")

    t = cfg.train
    for name in ("steps", "batch_size", "microbatches"):
        value = getattr(t, name)
        _need(value > 0, f"train.{name}={value} must be a positive integer")
    _need(
        t.batch_size % t.microbatches == 0,
        f"train.batch_size={t.batch_size} is not divisible by train.microbatches={t.microbatches}",
    )
    for name in ("log_every", "eval_every", "eval_batches", "checkpoint_every", "keep_checkpoints"):
        value = getattr(t, name)
        _need(value > 0, f"train.{name}={value} must be a positive integer")
    _need(t.keep_every >= 0, f"train.keep_every={t.keep_every} must be >= 0 (0 keeps none beyond the last N)")

    o = cfg.optimizer
    _need(o.lr > 0, f"optimizer.lr={o.lr} must be positive")
    _need(0.0 <= o.min_lr_ratio <= 1.0, f"optimizer.min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
    _need(o.warmup_steps >= 0, f"optimizer.warmup_steps={o.warmup_steps} must be >= 0")
    _need(o.decay_steps is not None and o.decay_steps >= 0, f"optimizer.decay_steps={o.decay_steps} must be >= 0")
    for name in ("beta1", "beta2"):
        value = getattr(o, name)
        _need(0.0 <= value < 1.0, f"optimizer.{name}={value} must be in [0, 1)")
    _need(o.eps > 0, f"optimizer.eps={o.eps} must be positive")
    _need(o.weight_decay >= 0, f"optimizer.weight_decay={o.weight_decay} must be >= 0")
    _need(o.grad_clip >= 0, f"optimizer.grad_clip={o.grad_clip} must be >= 0 (0 disables clipping)")

    from jaxllm.parallel.rules import parse_rules  # the rules table lives with the mesh code

    parse_rules(mesh.rules)
    known = [mesh.data, mesh.fsdp]
    if -1 not in known:
        per_step = t.batch_size // t.microbatches
        shards = math.prod(known)
        _need(
            per_step % shards == 0,
            f"train.batch_size={t.batch_size} / microbatches={t.microbatches} = {per_step} is not divisible by "
            f"mesh.data*mesh.fsdp={shards}",
        )


# --------------------------------------------------------------------------- public


def from_dict(raw: Mapping[str, Any]) -> Config:
    """Build, resolve and validate a Config from a nested mapping."""
    cfg = _resolve(_build(Config, raw, ""))
    validate(cfg)
    return cfg


def apply_overrides(raw: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set each `a.b.c=value` in the nested mapping `raw` (in place; returned for chaining)."""
    for text in overrides:
        parts, value = parse_override(text)
        _check_override_path(parts)
        _set_path(raw, parts, value)
    return raw


OVERRIDES_ENV = "JAXLLM_OVERRIDES"


def load_config(source: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """Load a preset name or YAML path, apply `a.b.c=value` overrides, resolve, validate.

    `$JAXLLM_OVERRIDES` (whitespace-separated `a.b.c=value`) is applied after `overrides`:
    it shrinks every command of a script at once without editing it (the guide's test runs
    the chapters' commands as written with `train.steps=20`).
    """
    extra = os.environ.get(OVERRIDES_ENV, "").split()
    return from_dict(apply_overrides(_read_yaml(_find_file(str(source), "config"), "config"), [*overrides, *extra]))


def _check_override_path(parts: Sequence[str]) -> None:
    """Reject an unknown key before it is merged, so the error names the override."""
    cls: Any = Config
    for i, p in enumerate(parts):
        names = _field_names(cls)
        if p not in names:
            prefix = ".".join(parts[:i])
            close = difflib.get_close_matches(p, names, n=1)
            hint = (
                f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
                if close
                else f"valid keys: {', '.join(names)}"
            )
            raise ConfigError(f"unknown key {'.'.join(parts)}; {hint}")
        tp = typing.get_type_hints(cls)[p]
        if not dataclasses.is_dataclass(tp):
            if i != len(parts) - 1:
                raise ConfigError(
                    f"unknown key {'.'.join(parts)}; {'.'.join(parts[: i + 1])} is a value, not a section"
                )
            return
        cls = tp


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (tuples become lists) for YAML and JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    return plain(dataclasses.asdict(cfg))


class _Dumper(yaml.SafeDumper):
    """Strings with line breaks (chat templates) as one double-quoted line with \\n escapes."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = '"' if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML; `load_config` of it gives an identical Config."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, width=1000)


def save_config(cfg: Config, path: str | os.PathLike[str]) -> None:
    """Write the resolved config (e.g. next to a checkpoint)."""
    Path(path).write_text(to_yaml(cfg))
