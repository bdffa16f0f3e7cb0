"""What a process needs from its platform: CPUs it may use, glibc's allocator settings,
the C library, and quiet third-party warnings.

Low-level on purpose: the chain workers (:mod:`atomate2_otf.bnn.parallel`) and the
command line both use it, and it imports nothing of the package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
import warnings

logger = logging.getLogger(__name__)


def available_cpus() -> int:
    """CPUs this process may use (the affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


#: glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: blocks below this size come from the heap, not from fresh mmap'd pages
KEEP_BLOCKS_BELOW = 32 * 2**20
#: free memory at the top of the heap is returned to the OS only above this
TRIM_ABOVE = 1024 * 2**20
#: glibc's own environment variables; when the user sets either, theirs stand
MALLOC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def c_library() -> ctypes.CDLL | None:
    """This process's C library, for the few calls Python has no wrapper for (mallopt,
    prctl); None where it cannot be loaded."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:  # pragma: no cover - no loadable C library
        return None


def keep_freed_memory(block_limit: int = KEEP_BLOCKS_BELOW,
                      trim_above: int = TRIM_ABOVE) -> bool:
    """Make glibc's malloc reuse freed blocks instead of handing them back to the OS.

    Why: a training step (forces, then their gradient) allocates and frees hundreds of
    1-10 MB tensors. glibc serves such blocks by ``mmap`` and unmaps them on free, so every
    step pays page faults on fresh zero pages: with CHGNet on 5 ethanol frames, zeroing one
    [1656, 256] gradient took 0.4-0.7 ms instead of ~0.1 ms (benchmarks/allocator.py has
    the step times). Blocks up to 32 MB come from the heap and the heap keeps up to 1 GB of
    freed memory, which leaves the peak memory unchanged (CHGNet ethanol, SevenNet-0 64-atom
    Si). Serving larger blocks from the heap too is faster on big cells but raised the peak
    RSS of SevenNet-0 on 64-atom Si by ~50 % (256 MB blocks), so that is the user's call,
    made with glibc's own variables ``MALLOC_MMAP_THRESHOLD_`` and
    ``MALLOC_TRIM_THRESHOLD_``; when either is set this function leaves malloc alone.

    It changes the whole process, so the package calls it only in processes it owns (the
    ChainPool workers and the ``atomate2-otf`` command); a FireWorks or jobflow worker may
    call it once at start. Returns False (doing nothing) where the C library is not glibc or
    the user's variables are set.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in MALLOC_ENV):
        logger.debug("malloc left as set by %s", [n for n in MALLOC_ENV if n in os.environ])
        return False
    mallopt = getattr(c_library(), "mallopt", None)
    if mallopt is None:  # pragma: no cover - a libc without mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(block_limit)) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, int(trim_above)) == 1 and ok
    if not ok:  # pragma: no cover - glibc refuses values above its limits
        logger.warning("glibc refused the malloc thresholds (%d, %d)", block_limit, trim_above)
    return ok


#: third-party warnings that say nothing a user of this package can act on, each with why
KNOWN_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # CHGNet's stress code builds a tensor from cell volumes that carry gradients
    # (chgnet/model/model.py); harmless, once per process and chain worker
    (r"Converting a tensor with requires_grad=True to a scalar", UserWarning, ""),
    # third-party API deprecations (pymatgen, jobflow, e3nn, torch, ...): for their developers
    ("", DeprecationWarning, r"^(?!atomate2_otf)"),
    ("", FutureWarning, r"^(?!atomate2_otf)"),
)


def silence_known_warnings() -> None:
    """Ignore :data:`KNOWN_WARNINGS` in this process.

    For processes the package owns (the ``atomate2-otf`` command, unless ``-v``); a
    :class:`~atomate2_otf.bnn.parallel.ChainPool` passes its creator's filters on to its
    workers, so they stay as quiet as their parent. Library code never calls this.
    """
    for message, category, module in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
