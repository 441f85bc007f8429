"""Keep glibc from mapping and unmapping every large tensor: the page-fault churn of big CPU forwards.

A CPU forward allocates and frees feature maps of tens of MB per layer. glibc serves blocks above its
dynamic mmap threshold with a fresh `mmap` and returns them with `munmap`, and trims the heap top back to
the kernel after every large free; the next layer's buffer is then faulted in again, page by page, as
zeroed memory. On a 512x512 photo at x2 that was 1.8 million minor faults and 3 s of system time for 5 s
of wall time (issue 14). Raising the mmap threshold to its ceiling (32 MiB on 64-bit glibc) and keeping up
to 1 GiB of freed heap (trim threshold) lets those buffers be reused in place. Peak RSS can grow by
what is kept, never past the forward's own peak plus the trim threshold.

Only glibc has `mallopt`; elsewhere (macOS, musl, Windows) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's ceiling on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 2**30
TOP_PAD = 64 * 2**20


@functools.lru_cache(maxsize=1)
def tune_for_large_tensors() -> bool:
    """Set glibc's malloc thresholds once per process; True when they were set. `RIBSR_MALLOC=default`
    leaves the allocator alone (to measure the difference, or if a system's malloc misbehaves)."""
    if os.environ.get("RIBSR_MALLOC", "").lower() == "default" or os.name != "posix":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    ok &= mallopt(_M_TOP_PAD, TOP_PAD) == 1
    return bool(ok)
