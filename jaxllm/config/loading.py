"""Presets, YAML files with `base:` chains, and `a.b.c=value` overrides -> one validated Config.

Loading order (later wins): dataclass defaults; the YAML file's `base:` chain; the file
itself; command-line overrides; `$JAXLLM_OVERRIDES`. Then cross-section derived fields are
filled and every rule is checked (jaxllm/config/validation.py).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from jaxllm.config.coercion import _build, _field_names
from jaxllm.config.schema import Config
from jaxllm.config.validation import validate
from jaxllm.errors import ConfigError


def config_dir() -> Path:
    """Where named presets live: $JAXLLM_CONFIG_DIR, else the repository's configs/."""
    env = os.environ.get("JAXLLM_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"


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

def _resolve(cfg: Config) -> Config:
    """Fill derived fields that span sections (ModelConfig fills its own)."""
    if cfg.optimizer.decay_steps is None:
        return dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, decay_steps=cfg.train.steps))
    return cfg


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
    the chapters' commands as written with `train.steps=8`).
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
