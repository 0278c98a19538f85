"""Host-process settings that the step's speed depends on.

On CPU, XLA allocates each step's temporary memory afresh on every call, as one large
block. glibc's malloc serves blocks above M_MMAP_THRESHOLD (dynamically 128 KiB to
32 MiB) with a fresh mmap and unmaps them on free, and trims freed memory at the top of
its heaps back to the kernel; either way the next step writes to untouched pages and
every page faults on first write. On the nanoGPT CPU recipe that churn was a third of
the step (BENCHMARKS.md, "train_step"). So jaxllm asks malloc to serve blocks up to
1 GiB from its heap (M_MMAP_THRESHOLD), to keep freed memory (M_TRIM_THRESHOLD,
M_TOP_PAD), and to use one heap for all threads (M_ARENA_MAX: a thread's own arena
cannot grow past 64 MiB and mmaps anything larger whatever the threshold).

The price: the process keeps its peak host memory instead of returning it, as an
accelerator runtime does with device memory. Applied once when jaxllm is imported;
`JAXLLM_MALLOC_TUNING=0` leaves malloc alone. Only glibc Linux is touched.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers, from glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -2, -3, -8
SETTINGS = {_M_MMAP_THRESHOLD: 1 << 30, _M_TRIM_THRESHOLD: 1 << 30, _M_TOP_PAD: 256 << 20, _M_ARENA_MAX: 1}


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
