"""Argument parsing for `jaxllm`: a parser whose usage errors are one line, range checks
for numeric options, and the arguments several verb groups share.

Why a custom parser: argparse prints the whole usage synopsis (often several wrapped lines)
before its error. jaxllm promises one line on stderr for every bad input, so scripts and
logs show the cause in one grep-able line; `--help` still prints the full usage.

Why numeric options are checked by store *actions* and not `type=` functions: argparse
turns every error of a `type=` function into a usage error (SystemExit), while a bad value
is a bad input like any other: `main()` returns 2 for it (as callers and tests rely on),
with a message naming the option, the value and the accepted range. An exception raised
by an action's `__call__` leaves argparse untouched and reaches `main()`'s error handling.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any

from jaxllm.config import list_presets
from jaxllm.errors import ConfigError

#: A `section.key=value` config override, recognisable wherever it sits among a verb's arguments.
OVERRIDE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)+=")

TOKENIZER_HELP = "'byte', a sentencepiece .model, a scratch BPE .json or an HF tokenizer.json"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser (sub-parsers inherit the class) whose errors are a single line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"\s*\n\s*", " ", message.strip())
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help` for usage\n")


def bounded(
    kind: type = float, low: float | None = None, high: float | None = None, *, above: bool = False, hint: str = ""
) -> type[argparse.Action]:
    """A store action (use it instead of `type=`) that converts each value (each of a list,
    with nargs) with `kind` and refuses values outside [low, high] (`above`: low excluded)
    and non-finite floats (nan, inf), with a ConfigError that names the option, the value
    and the accepted range: `--top-k -3: must be an integer >= 0 (0 = off)`."""
    parts = [f"{'>' if above else '>='} {low:g}"] if low is not None else []
    parts += [f"<= {high:g}"] if high is not None else []
    rule = f"in {'(' if above else '['}{low:g}, {high:g}]" if low is not None and high is not None else " ".join(parts)
    rule = f"{'an integer' if kind is int else 'a finite number'} {rule}".strip() + (f" ({hint})" if hint else "")

    def check(text: Any, option: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            value = None
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{option} {text}: must be {rule}")
        if (low is not None and (value <= low if above else value < low)) or (high is not None and value > high):
            raise ConfigError(f"{option} {text}: must be {rule}")
        return value

    class Bounded(argparse.Action):
        def __call__(
            self,
            parser: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            option = option_string or self.dest
            checked = [check(v, option) for v in values] if isinstance(values, list) else check(values, option)
            setattr(namespace, self.dest, checked)

    return Bounded


def positive(kind: type = int, hint: str = "") -> type[argparse.Action]:
    """Numbers > 0 (integers by default)."""
    return bounded(kind, 0, above=True, hint=hint)


def non_negative(kind: type = int, hint: str = "") -> type[argparse.Action]:
    """Numbers >= 0 (integers by default)."""
    return bounded(kind, 0, hint=hint)


def config_args(p: argparse.ArgumentParser) -> None:
    """CONFIG and its overrides: the positional pair of every verb that starts from a config."""
    p.add_argument("config", help=f"a YAML path or a preset name ({', '.join(list_presets())})")
    p.add_argument("overrides", nargs="*", help="section.key=value, e.g. model.num_layers=4")
