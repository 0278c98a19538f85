"""Model weights as safetensors files: one model.safetensors, or shards plus an index.

Safetensors only, never pickle (unpickling a .bin checkpoint can run code).
bfloat16: numpy has no bfloat16 of its own, so `safetensors.numpy` cannot read it
alone; ml_dtypes (installed with jax, which depends on it) registers one with numpy,
and safetensors then reads and writes bf16 tensors as numpy arrays. No torch needed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import ml_dtypes  # noqa: F401  registers bfloat16 with numpy, so safetensors.numpy can read it
import numpy as np
import safetensors
import safetensors.numpy

from jaxllm.convert.hf_config import ConversionError

Tensors = dict[str, np.ndarray]

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
_SHARD = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")
DEFAULT_MAX_SHARD_SIZE = 5_000_000_000  # transformers' "5GB"


def safetensors_files(directory: str | os.PathLike[str]) -> dict[Path, list[str] | None]:
    """{file: tensor names it holds per the index, or None for all} of a model directory:
    model.safetensors if present (transformers' own choice), else the shards that
    model.safetensors.index.json lists."""
    d = Path(directory)
    if (d / SAFETENSORS).is_file():
        return {d / SAFETENSORS: None}
    index_path = d / SAFETENSORS_INDEX
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConversionError(f"{index_path} is not a safetensors index with a weight_map ({e})") from None
        files: dict[Path, list[str] | None] = {}
        for name, file in weight_map.items():
            files.setdefault(d / file, []).append(name)
        for file in files:
            if not file.is_file():
                raise ConversionError(f"{index_path} lists {file.name}, which does not exist in {d}")
        return files
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in (".bin", ".pt", ".pth")) if d.is_dir() else []
    others = sorted(p.name for p in d.glob("*.safetensors"))
    hint = (
        f"; it holds only pickle checkpoints ({', '.join(pickles)}), which jaxllm never loads (unpickling can run "
        "code): save the model with save_pretrained(..., safe_serialization=True) first"
        if pickles
        else f"; found {', '.join(others)} under other names"
        if others
        else ""
    )
    raise ConversionError(f"{d} has no {SAFETENSORS} or {SAFETENSORS_INDEX}{hint}")


def read_safetensors(directory: str | os.PathLike[str]) -> Tensors:
    """Every tensor of a model directory (single file or shards), in its stored dtype
    (bfloat16 arrives as ml_dtypes.bfloat16). A file that cannot be read is named."""
    tensors: Tensors = {}
    for path, names in safetensors_files(directory).items():
        try:
            with safetensors.safe_open(str(path), framework="numpy") as f:
                present = set(f.keys())
                for name in names if names is not None else sorted(present):
                    if name not in present:
                        raise ConversionError(f"{path} has no tensor {name!r}, though {SAFETENSORS_INDEX} says so")
                    tensors[name] = f.get_tensor(name)
        except ConversionError:
            raise
        except (safetensors.SafetensorError, OSError, TypeError, ValueError) as e:
            raise ConversionError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    return tensors


def write_safetensors(
    tensors: Mapping[str, np.ndarray], directory: str | os.PathLike[str], max_shard_size: int | None = None
) -> list[Path]:
    """Write tensors as model.safetensors, or as shards model-0000i-of-0000n.safetensors plus
    model.safetensors.index.json (metadata.total_size, weight_map) when they exceed
    max_shard_size bytes. Shards fill in order; a tensor larger than a shard gets its own.
    Old model files in the directory are removed first, so no stale shard is read back."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for old in d.iterdir():
        if old.name in (SAFETENSORS, SAFETENSORS_INDEX) or _SHARD.fullmatch(old.name):
            old.unlink()
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    total = sum(a.nbytes for a in arrays.values())
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, a in arrays.items():
        if max_shard_size is not None and shards[-1] and size + a.nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][name] = a
        size += a.nbytes
    metadata = {"format": "pt"}  # transformers checks this field when it loads
    if len(shards) == 1:
        path = d / SAFETENSORS
        safetensors.numpy.save_file(shards[0], str(path), metadata=metadata)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards):
        path = d / f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        safetensors.numpy.save_file(shard, str(path), metadata=metadata)
        weight_map.update(dict.fromkeys(shard, path.name))
        paths.append(path)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (d / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return paths


def describe_source(directory: Path) -> str:
    files = list(safetensors_files(directory))
    return str(files[0]) if len(files) == 1 else f"the {len(files)} safetensors shards in {directory}"
