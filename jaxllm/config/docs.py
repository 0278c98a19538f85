"""docs/config.md's key reference, generated from the schema: every key, its type, default and meaning.

Why generated: the `#:` comment above each field (jaxllm/config/schema*.py) is the one place
a key is explained; a hand-kept list drifts from the code the first time a field is added.
The page keeps its hand-written prose; only the part between KEYS_BEGIN and KEYS_END is
rewritten.

    python -m jaxllm.config.docs           # rewrite docs/config.md
    python -m jaxllm.config.docs --check   # exit 1 when docs/config.md is stale
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import sys
import textwrap
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxllm.config.coercion import type_name
from jaxllm.config.schema import Config

DOC_PREFIX = "#:"
KEYS_BEGIN = "<!-- keys:begin -->"
KEYS_END = "<!-- keys:end -->"
PAGE = Path(__file__).resolve().parents[2] / "docs" / "config.md"


@dataclasses.dataclass(frozen=True)
class KeyDoc:
    """One leaf key of the config tree, as the reference lists it."""

    key: str  # dotted, e.g. "model.rope_scaling.factor"
    type: str  # as YAML sees it, e.g. "int | null", "list of str"
    default: Any  # the dataclass default (before derived fields are filled)
    doc: str  # the field's `#:` comment, lines joined


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its `#:` comment} for a dataclass: the comment lines right above each field."""
    lines, _ = inspect.getsourcelines(cls)
    tree = ast.parse(textwrap.dedent("".join(lines)))
    body = tree.body[0].body  # the class statement's body
    out = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        comment = []
        i = node.lineno - 2  # the line above the field, 0-based
        while i >= 0 and lines[i].strip().startswith(DOC_PREFIX):
            comment.insert(0, lines[i].strip()[len(DOC_PREFIX) :].strip())
            i -= 1
        out[node.target.id] = " ".join(comment)
    return out


def keys(cls: type = Config, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key under dataclass `cls`, depth first in field order."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(keys(tp, f"{key}."))
        else:
            out.append(KeyDoc(key, type_name(tp), f.default, docs.get(f.name, "")))
    return out


def sections() -> list[tuple[str, str, list[KeyDoc]]]:
    """(section name, its `#:` comment on Config, its leaf keys) for each top-level section."""
    docs = field_docs(Config)
    hints = typing.get_type_hints(Config)
    return [(f.name, docs.get(f.name, ""), keys(hints[f.name], f"{f.name}.")) for f in dataclasses.fields(Config)]


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell (a `|` would end the cell, even in a code span)."""
    return text.replace("|", "\\|")


def _default(value: Any) -> str:
    """A default as it is written in YAML (JSON flow style is valid YAML): null, true, "text", [..]."""
    if isinstance(value, tuple):
        value = list(value)
    return json.dumps(value, ensure_ascii=False)


def render_keys() -> str:
    """The generated part of the page: one table per section, every leaf key."""
    out = [
        "## Every key",
        "",
        "Generated from the `#:` comments in `jaxllm/config/schema*.py` by `python -m jaxllm.config.docs`;",
        "edit those, not this part of the page. A default of `null` is filled in from other keys (the meaning",
        "says how).",
    ]
    for name, doc, entries in sections():
        out += ["", f"### `{name}`", "", doc, "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        for k in entries:
            out.append(f"| `{k.key}` | {_cell(k.type)} | `{_cell(_default(k.default))}` | {_cell(k.doc)} |")
    return "\n".join(out) + "\n"


def render_page(current: str) -> str:
    """`current` with the text between the markers replaced by the generated reference."""
    head, sep, rest = current.partition(KEYS_BEGIN)
    _, sep2, tail = rest.partition(KEYS_END)
    if not (sep and sep2):
        raise ValueError(f"the page has no {KEYS_BEGIN} ... {KEYS_END} markers to write the keys between")
    return f"{head}{KEYS_BEGIN}\n{render_keys()}{KEYS_END}{tail}"


def undocumented() -> list[str]:
    """Leaf keys with no `#:` comment."""
    return [k.key for k in keys() if not k.doc]


def main(argv: Sequence[str] | None = None) -> int:
    """Write docs/config.md (or, with --check, say whether it is current). Returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m jaxllm.config.docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the page is stale; write nothing")
    parser.add_argument("--page", type=Path, default=PAGE, help=f"the page (default {PAGE})")
    args = parser.parse_args(argv)
    missing = undocumented()
    if missing:
        print(f"keys without a #: comment in jaxllm/config/schema*.py: {', '.join(missing)}", file=sys.stderr)
        return 1
    current = args.page.read_text(encoding="utf-8")
    wanted = render_page(current)
    if args.check:
        if current != wanted:
            print(f"{args.page} is stale; run python -m jaxllm.config.docs", file=sys.stderr)
            return 1
        return 0
    if current != wanted:
        args.page.write_text(wanted, encoding="utf-8")
        print(f"wrote {args.page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
