"""A prepared dataset's folder: its manifest, which files it owns, and when prepare may replace it.

Why a module of its own: `data.path` is the one path prepare replaces whole, and a path in a config
is easy to get wrong (the corpus file itself, the folder that holds the corpus and its notes). So
prepare replaces only what is unmistakably its own work: nothing, an empty folder, or a complete
jaxllm dataset that holds nothing but its manifest, the shards the manifest lists and the
verification record jaxllm writes beside them. Anything else is refused before a byte is touched,
and the replacement itself deletes only those known files, one by one, never a whole tree.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jaxllm.errors import DataError

MANIFEST = "manifest.json"
FORMAT = "jaxllm-shards"
VERIFIED = "verified.json"  # the checksum record of jaxllm.data.verified, written by jaxllm into the dataset
VERIFIED_TMP = re.compile(r"^\.verified\.json\.[A-Za-z0-9_]+\.tmp$")  # its temporary, left by a crash mid-write
ANOTHER_PATH = "choose another data.path (a folder that does not exist yet; prepare creates it)"


def _manifest_problem(manifest: Any) -> str | None:
    """What makes a parsed manifest unusable, or None; later code indexes it without guarding."""
    if not isinstance(manifest, dict):
        return f"it holds a JSON {type(manifest).__name__}, not an object"
    if manifest.get("format") != FORMAT:
        return f"its format is {manifest.get('format')!r}, not {FORMAT!r}"
    tok = manifest.get("tokenizer")
    if not isinstance(tok, dict) or not all(k in tok for k in ("path", "identity", "vocab_size", "eos_id")):
        return "its 'tokenizer' entry lacks path, identity, vocab_size or eos_id"
    splits = manifest.get("splits")
    if not isinstance(splits, dict) or not splits:
        return "it has no 'splits'"
    for name, split in splits.items():
        shards = split.get("shards") if isinstance(split, dict) else None
        if not isinstance(shards, list):
            return f"split {name!r} has no list of shards"
        for entry in shards:
            if not (isinstance(entry, dict) and all(k in entry for k in ("file", "sha256", "docs", "tokens"))):
                return f"a shard of split {name!r} lacks file, sha256, docs or tokens"
            file = entry["file"]
            if not isinstance(file, str) or file in ("", ".", "..") or Path(file).name != file:
                return f"split {name!r} names the shard {file!r}, which is not a file name in the folder"
    if not isinstance(manifest.get("sources", []), list):
        return "its 'sources' is not a list"
    return None


def read_manifest(manifest_path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None), or (None, why it is not a jaxllm manifest) for an unreadable or foreign file."""
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except OSError as e:
        return None, f"it cannot be read: {e.strerror or e}"
    except UnicodeDecodeError:
        return None, "it is not UTF-8 text"
    except json.JSONDecodeError as e:
        return None, f"it is not JSON ({e.msg} at line {e.lineno} column {e.colno})"
    problem = _manifest_problem(manifest)
    return (None, problem) if problem else (manifest, None)


def load_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a prepared dataset directory; a one-line DataError if absent, garbled or foreign."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise DataError(
            f"data.path={str(path)!r} has no {MANIFEST}; prepare it first with `jaxllm data prepare CONFIG`"
        )
    manifest, problem = read_manifest(manifest_path)
    if manifest is None:
        raise DataError(
            f"{manifest_path} is not a jaxllm dataset manifest: {problem}; "
            "rebuild the dataset with `jaxllm data prepare CONFIG`"
        )
    return manifest


def dataset_files(manifest: dict[str, Any]) -> set[str]:
    """The names jaxllm writes into a dataset folder: the manifest, its shards, the verification record."""
    shards = {e["file"] for split in manifest["splits"].values() for e in split["shards"]}
    return {MANIFEST, VERIFIED} | shards


def _is_own(folder: Path, name: str, own: set[str]) -> bool:
    path = folder / name
    return (name in own or bool(VERIFIED_TMP.match(name))) and path.is_file() and not path.is_symlink()


def _names(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_replaceable(out: Path) -> None:
    """Refuse (DataError, nothing touched) unless prepare may replace `out`: it is absent, an empty
    folder, or a complete jaxllm dataset that holds only the files it wrote."""
    where = f"data.path={str(out)!r}"
    if out.is_symlink():
        raise DataError(f"{where} is a symbolic link; prepare never replaces a link or its target: {ANOTHER_PATH}")
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError(
            f"{where} is a file, not a prepared dataset folder; prepare writes a folder at data.path and never "
            f"replaces your file: {ANOTHER_PATH}, and name the file in data.inputs"
        )
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return
    if MANIFEST not in names:
        raise DataError(
            f"{where} is a folder that is not a jaxllm dataset (no {MANIFEST}; it holds {_names(names)}); "
            f"prepare replaces data.path whole, so it leaves this folder alone: {ANOTHER_PATH}"
        )
    manifest, problem = read_manifest(out / MANIFEST)
    if manifest is None:
        raise DataError(
            f"{where} holds a {MANIFEST} that is not a jaxllm manifest ({problem}); prepare replaces data.path whole, "
            f"so it leaves this folder alone: {ANOTHER_PATH}, or delete the folder yourself if it is an old dataset"
        )
    own = dataset_files(manifest)
    foreign = [n for n in names if not _is_own(out, n, own)]
    if foreign:
        raise DataError(
            f"{where} is a jaxllm dataset but also holds {len(foreign)} file(s) it did not write "
            f"({_names(foreign)}); prepare replaces data.path whole, so it leaves this folder alone: "
            f"move those files out, or {ANOTHER_PATH}"
        )


def _remove_own_files(folder: Path, log: Callable[[str], None]) -> None:
    """Delete the files of a replaced dataset one by one, then the folder; anything else stays."""
    manifest, _ = read_manifest(folder / MANIFEST)
    own = dataset_files(manifest) if manifest is not None else set()
    for path in folder.iterdir():
        if _is_own(folder, path.name, own):
            path.unlink()
    try:
        folder.rmdir()
        folder.parent.rmdir()
    except OSError:  # a file appeared after the check: it is not ours to delete
        log(f"warning: the replaced dataset's folder {folder} still holds files prepare did not write; left it there")


def replace_dataset(new: Path, out: Path, log: Callable[[str], None] = print) -> None:
    """Put the finished dataset folder `new` at `out`; an old dataset there is removed only after the
    new one is in place, and only after checking again that it is one prepare may replace."""
    if not (out.exists() or out.is_symlink()):
        os.replace(new, out)  # fails rather than replaces if a non-empty folder appeared meanwhile
        return
    check_replaceable(out)  # again: prepare may have run for hours since the first check
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))  # a folder of prepare's own
    old = aside / out.name
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)  # put the old dataset back
        aside.rmdir()
        raise
    _remove_own_files(old, log)
