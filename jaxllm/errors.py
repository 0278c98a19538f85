"""The one base class for errors a user can fix, and the data stage's error.

Why one base: the CLI catches `JaxllmError` once and prints its message as one line (exit 2);
anything else is a bug and names its type. Every module below the CLI raises a subclass,
so a new error class needs no change to the CLI. The classes also derive from the builtin
they refine (ValueError, ...), so library callers can keep catching those.
"""

from __future__ import annotations


class JaxllmError(Exception):
    """Bad input or state the user can fix; the message names the bad value and the fix."""


class ConfigError(JaxllmError, ValueError):
    """A bad config value. The message is one line: key, value, and how to fix it.

    Here, not in jaxllm.config, so the layers below config (jaxllm.parallel.axes parses
    `mesh.rules`) can raise it; jaxllm.config re-exports it."""


class DataError(JaxllmError, ValueError):
    """Inputs or a prepared dataset that cannot be used; the message says which and the fix."""
