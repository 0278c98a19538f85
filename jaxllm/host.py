"""Host-process settings that the step's speed depends on.

On CPU, XLA allocates the step's temporary buffers afresh on every call. glibc's
malloc hands freed memory at the top of a heap back to the kernel as soon as it
exceeds a small threshold, so the next step's buffers come back as untouched pages and
every one of them page-faults on first write. In the nanoGPT CPU recipe that was about
a quarter of the step (BENCHMARKS.md, "what made the step fast"). Asking malloc to keep
some padding at the top of its heaps (M_TOP_PAD) removes that churn for a bounded cost:
at most `JAXLLM_MALLOC_TOP_PAD` bytes (default 256 MiB) stay mapped per heap.

Applied once when jaxllm is imported; `JAXLLM_MALLOC_TOP_PAD=0` leaves malloc alone.
Only glibc Linux is touched; elsewhere this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_M_TOP_PAD = -2  # mallopt parameter number, from glibc's malloc.h
DEFAULT_TOP_PAD = 256 << 20


def keep_heap_padding(top_pad: int | None = None) -> bool:
    """Set glibc's M_TOP_PAD (bytes); True if it was applied."""
    if top_pad is None:
        raw = os.environ.get("JAXLLM_MALLOC_TOP_PAD", str(DEFAULT_TOP_PAD))
        try:
            top_pad = int(raw)
        except ValueError:
            msg = f"JAXLLM_MALLOC_TOP_PAD={raw!r}: expected a byte count, e.g. 268435456 (0 disables)"
            raise ValueError(msg) from None
    if top_pad <= 0 or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_TOP_PAD, ctypes.c_int(min(top_pad, 2**31 - 1))))
    except (OSError, AttributeError):
        return False
