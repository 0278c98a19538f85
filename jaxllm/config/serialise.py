"""A resolved Config -> plain dict / YAML / a file; `load_config` of the YAML gives it back equal."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import yaml

from jaxllm.config.schema import Config


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
