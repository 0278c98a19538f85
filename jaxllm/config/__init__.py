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

The parts: the schema (schema.py and its sections in schema_*.py, each field commented
where it is defined), coercion.py (YAML values -> typed fields), validation.py (the rules),
loading.py (presets, `base:` chains, overrides), serialise.py (dict / YAML / file) and
docs.py (docs/config.md generated from the schema). This module re-exports the public names.
"""

from __future__ import annotations

from jaxllm.config.loading import (
    OVERRIDES_ENV,
    apply_overrides,
    config_dir,
    from_dict,
    list_presets,
    load_config,
    parse_override,
)
from jaxllm.config.schema import Config
from jaxllm.config.schema_data import (
    DataConfig,
    DedupConfig,
    FilterConfig,
    MixtureComponent,
    TokenizerConfig,
    TokenizerKind,
)
from jaxllm.config.schema_model import (
    AttentionImpl,
    BlockKind,
    DType,
    Head,
    MeshConfig,
    MLPKind,
    ModelConfig,
    Norm,
    PipelineConfig,
    Position,
    Remat,
    RopeScalingConfig,
    RopeScalingKind,
)
from jaxllm.config.schema_posttrain import LORA_TARGETS, GRPOConfig, LoraConfig
from jaxllm.config.schema_run import ChatConfig, OptimizerConfig, PostTrainConfig, PPOConfig, TrainConfig
from jaxllm.config.serialise import save_config, to_dict, to_yaml
from jaxllm.config.validation import validate, validate_model
from jaxllm.errors import ConfigError

__all__ = [
    "OVERRIDES_ENV",
    "AttentionImpl",
    "BlockKind",
    "ChatConfig",
    "Config",
    "ConfigError",
    "DType",
    "DataConfig",
    "DedupConfig",
    "MixtureComponent",
    "FilterConfig",
    "GRPOConfig",
    "LORA_TARGETS",
    "LoraConfig",
    "Head",
    "MLPKind",
    "MeshConfig",
    "ModelConfig",
    "Norm",
    "OptimizerConfig",
    "PPOConfig",
    "PipelineConfig",
    "Position",
    "PostTrainConfig",
    "Remat",
    "RopeScalingConfig",
    "RopeScalingKind",
    "TokenizerConfig",
    "TokenizerKind",
    "TrainConfig",
    "apply_overrides",
    "config_dir",
    "from_dict",
    "list_presets",
    "load_config",
    "parse_override",
    "save_config",
    "to_dict",
    "to_yaml",
    "validate",
    "validate_model",
]
