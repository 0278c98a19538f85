"""Host-process settings that the step's speed depends on.

On CPU, XLA allocates each step's temporary memory afresh on every call, as one large
block. glibc's malloc serves blocks above M_MMAP_THRESHOLD (dynamically 128 KiB to
32 MiB) with a fresh mmap and unmaps them on free, and trims freed memory at the top of
its heaps back to the kernel; either way the next step writes to untouched pages and
every page faults on first write. On the nanoGPT CPU recipe that churn was a third of
the step (docs/performance.md). So jaxllm asks malloc to serve every block from its
heap (M_MMAP_THRESHOLD), to keep freed memory (M_TRIM_THRESHOLD, M_TOP_PAD), and to use
one heap for all threads (M_ARENA_MAX: a thread's own arena cannot grow past 64 MiB and
mmaps anything larger whatever the threshold). If the heap cannot grow, glibc still
falls back to mmap, so nothing fails for want of it.

The price: the process keeps its peak host memory instead of returning it, as an
accelerator runtime does with device memory. Applied once when jaxllm is imported;
`JAXLLM_MALLOC_TUNING=0` leaves malloc alone. Only glibc Linux is touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import signal
import sys
import threading
from typing import Any

# mallopt parameter numbers, from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
# -1 reaches glibc as SIZE_MAX (mallopt takes an int, the thresholds are size_t): no limit.
# A bounded threshold is not enough: GPT-2 124M's step needs 2.8 GiB of temporaries at
# batch 2 x 1024, above the 2 GiB an int can say, and a block mmapped afresh each step
# page-faults through all of it (measured: the first op to write it ran 5x slower).
NO_LIMIT = -1
SETTINGS = {_M_MMAP_THRESHOLD: NO_LIMIT, _M_TRIM_THRESHOLD: NO_LIMIT, _M_TOP_PAD: 256 << 20, _M_ARENA_MAX: 1}


def tune_malloc() -> bool:
    """Apply SETTINGS with glibc's mallopt; True if all were accepted."""
    if os.environ.get("JAXLLM_MALLOC_TUNING", "1") == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return all(libc.mallopt(param, ctypes.c_int(value)) == 1 for param, value in SETTINGS.items())
    except (OSError, AttributeError):
        return False


def _exit_interrupted(signum: int, frame: Any) -> None:
    os.write(2, b"jaxllm: interrupted (Ctrl-C)\n")
    os._exit(130)


def quiet_startup_interrupts() -> None:
    """When this process is the `jaxllm` command, a Ctrl-C before `cli.main` runs ends it
    with one line and exit 130, not a traceback from inside an import (importing jax
    takes a second or more). `cli.main` puts Python's own handler back with
    `restore_interrupts`, so from there Ctrl-C is a KeyboardInterrupt as usual. Library
    users (notebooks, pytest) are left alone: they are not the command."""
    argv = getattr(sys, "orig_argv", [])
    command = os.path.basename(sys.argv[0] if sys.argv else "") == "jaxllm" or argv[1:3] == ["-m", "jaxllm.cli"]
    if not command or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not someone else's handler
        signal.signal(signal.SIGINT, _exit_interrupted)


def restore_interrupts() -> None:
    """Undo `quiet_startup_interrupts` (a no-op if it did nothing)."""
    if signal.getsignal(signal.SIGINT) is _exit_interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)

