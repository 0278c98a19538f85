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
accelerator runtime does with device memory. So it is not done on import (a library
user's process is theirs to configure): the `jaxllm` command applies it before it does
anything else, and so does the training loop when a run starts (`jaxllm.train.loop`);
a library user timing their own steps calls `jaxllm.host.tune_malloc()`.
`JAXLLM_MALLOC_TUNING=0` leaves malloc alone. Only glibc Linux is touched.

Also here: `skip_absent_tpu` (libtpu, pulled in by the [test]/[tpu] extras, prints an
error-looking banner on every host without a TPU) and `enable_compilation_cache` (the
CLI's persistent XLA cache; docs/compilation-cache.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import os
import platform
import signal
import sys
import threading
from glob import glob
from pathlib import Path
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


# Google's PCI vendor id and the device ids of its TPU chips (as jax's hardware_utils
# lists them); Google's other PCI devices (gVNIC) are not TPUs.
_GOOGLE_PCI_VENDOR = "0x1ae0"
_TPU_PCI_DEVICES = {"0x0027", "0x0056", "0x005e", "0x0062", "0x0063", "0x006f", "0x0076"}


def tpu_attached() -> bool:
    """Whether this host may have a TPU: a TPU device node (/dev/accel* on v2-v5p,
    /dev/vfio/N on v5e and later) or a TPU chip on the PCI bus. Errs towards True: a
    false True only leaves jax's own behaviour (and libtpu's banner) in place."""
    if glob("/dev/accel*") or glob("/dev/vfio/[0-9]*"):
        return True
    for vendor in glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if Path(vendor).read_text().strip() != _GOOGLE_PCI_VENDOR:
                continue
            if (Path(vendor).parent / "device").read_text().strip() in _TPU_PCI_DEVICES:
                return True
        except OSError:
            continue
    return False


def _no_tpu() -> None:
    raise RuntimeError("no TPU is attached to this host (jaxllm did not start libtpu: jaxllm/host.py)")


def skip_absent_tpu() -> bool:
    """Keep jax from starting libtpu on a host that has no TPU; True if it was kept.

    With no platform named, jax tries every backend it knows, TPU first: it loads libtpu
    (installed by the [test] and [tpu] extras), which finds no chip, prints about five
    lines to stderr (an `E0000 ... INVALID_ARGUMENT` among them, read as a failure) and
    is then dropped quietly for the CPU or GPU backend. Swapping jax's TPU backend
    factory for one that fails at once (quietly, as libtpu's failure is treated) skips
    that attempt; the platform stays known, so TPU lowering rules still register, CPU and
    GPU discovery are untouched, and `jax.experimental.topologies` (`jaxllm plan
    --topology v5p-8`) loads libtpu by its own path. Nothing is done when a platform was
    chosen (JAX_PLATFORMS or jax.config's jax_platforms: the user's choice stands), with
    JAX_FORCE_TPU_INIT, when a TPU may be attached, or once backends exist. The factory
    table is jax-internal: if it changes shape this does nothing and the banner is back.
    """
    if os.environ.get("JAX_PLATFORMS") or "JAX_FORCE_TPU_INIT" in os.environ or tpu_attached():
        return False
    try:  # slow import, not at the top: quiet_startup_interrupts must run before jax is imported
        import jax
        from jax._src import xla_bridge
    except ImportError:
        return False
    factories = getattr(xla_bridge, "_backend_factories", None)
    if jax.config.jax_platforms or not isinstance(factories, dict) or xla_bridge.backends_are_initialized():
        return False
    registration = factories.get("tpu")
    if registration is None or not hasattr(registration, "factory") or not getattr(registration, "fail_quietly", 0):
        return False
    factories["tpu"] = dataclasses.replace(registration, factory=_no_tpu)
    return True


CACHE_ENV = "JAXLLM_COMPILATION_CACHE"
_OFF = {"0", "off", "false", "no", "none"}


def compilation_cache_dir(environ: dict[str, str] | None = None) -> Path | None:
    """The folder `enable_compilation_cache` uses: JAXLLM_COMPILATION_CACHE if it names
    one, None if it says 0/off/false/no/none, else $XDG_CACHE_HOME/jaxllm/xla
    (~/.cache/jaxllm/xla; a relative XDG_CACHE_HOME is ignored, as the XDG spec says)."""
    environ = os.environ if environ is None else environ
    value = environ.get(CACHE_ENV, "").strip()
    if value.lower() in _OFF:
        return None
    if value:
        return Path(value).expanduser()
    xdg = environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "jaxllm" / "xla"


def enable_compilation_cache() -> Path | None:
    """Turn on jax's persistent compilation cache for this process; the folder, or None.

    Every `jaxllm` command otherwise recompiles the same programs from scratch: a
    30-token `jaxllm sample` of a small model spent most of its wall time compiling
    (BENCHMARKS.md has the figures). jax caches only compiles over 1 s by default, which
    leaves out every CPU compile of a small model, so the time threshold is 0 and the
    size threshold off. Called by `cli.main`, not on import: a library user's process is
    theirs to configure. A cache dir set through jax (JAX_COMPILATION_CACHE_DIR) is left
    as it is; a folder that cannot be created or written means no cache, not an error.
    """
    import jax  # slow import, not at the top: see skip_absent_tpu

    if jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    folder = compilation_cache_dir()
    if folder is None:
        return None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK | os.X_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder
