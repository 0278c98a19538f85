"""How `jaxllm` reports a failure: one line on stderr and an exit code, never a traceback
unless asked for.

Why one line: a user who gave a bad value needs the value and the fix, not forty frames
of library internals; a script or a log grep needs one line to match. Bad inputs raise
a subclass of `JaxllmError` (jaxllm/errors.py), whose messages are written for the user
and are printed as they are: one isinstance check covers them all, so a new error class
needs no change here. Anything else is a bug or an environment problem (a full disk, a
lost device): its line names the exception type, so it can still be searched for, and
says how to get the traceback (`jaxllm --debug ...` or JAXLLM_DEBUG=1) for a bug report.

Exit codes: 2 for every error, 130 (128 + SIGINT, what shells report) for Ctrl-C.
"""

from __future__ import annotations

import os
import re
import sys

from jaxllm.errors import JaxllmError

DEBUG_ENV = "JAXLLM_DEBUG"
INTERRUPTED = 130
_LONGEST = 500  # characters of an unexpected error's message (XLA's can run to pages)


def debug_requested(flag: bool = False) -> bool:
    """True with `--debug`, or JAXLLM_DEBUG set to anything but empty or 0."""
    return flag or os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")


def one_line(text: str) -> str:
    """`text` with its line breaks (and the spaces around them) folded into single spaces."""
    return re.sub(r"\s*\n\s*", " ", text.strip())


def report(error: BaseException) -> int:
    """Print `error` as one `jaxllm: ...` line on stderr; return the exit code."""
    if isinstance(error, KeyboardInterrupt):
        print("jaxllm: interrupted (Ctrl-C)", file=sys.stderr)
        return INTERRUPTED
    message = one_line(str(error))
    if not isinstance(error, JaxllmError):  # not written for the user: name its type
        kind = type(error).__qualname__
        module = type(error).__module__
        kind = kind if module == "builtins" else f"{module}.{kind}"
        if len(message) > _LONGEST:
            message = message[:_LONGEST] + " ..."
        message = (
            f"{kind}: {message} " if message else f"{kind} "
        ) + f"(unexpected; run with --debug or {DEBUG_ENV}=1 for the traceback)"
    print(f"jaxllm: error: {message}", file=sys.stderr)
    return 2
