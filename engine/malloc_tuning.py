"""glibc malloc settings for CPU inference.

By default glibc serves an allocation of ≥ 128 KiB (a threshold it raises, up to 32 MiB, as such blocks are freed)
with a fresh mmap, unmaps it on free, and gives the top of the heap back to the system once 2× that much is free
there. Every page handed out again this way faults on first touch. A decode step allocates and frees the same
large temporaries layer after layer, so which side of the threshold they fall on, an accident of the process's
history, decided whether the demo model's 32k-token full-attention decode took 30 or 75 ms per token (32k page
faults per step). Fixing the thresholds keeps freed blocks in the heap for reuse.
"""
import ctypes
import logging
import sys

log = logging.getLogger("actserve")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3   # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 32 << 20    # glibc's maximum: larger allocations are always mmapped
TRIM_THRESHOLD = 1 << 30     # freed memory kept in the heap before any is given back

_applied: bool | None = None   # None: not tried yet


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for the whole process (tried once); False where libc is not glibc
    or refused them. Up to TRIM_THRESHOLD of freed memory then stays with the process instead of going back to the
    system."""
    global _applied
    if _applied is None:
        _applied = _set_thresholds()
    return _applied


def _set_thresholds() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):   # musl and others: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    applied = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not applied:
        log.warning("mallopt refused the mmap/trim thresholds; large CPU temporaries may page-fault every step")
    return applied
