"""glibc's allocator told to keep freed memory: a worker allocates and frees the same large
tensors at every batch, and by default glibc hands a freed stretch at the top of the heap (or a
freed mmap'd block) back to the kernel, so the next batch faults every page in again and the
kernel zeroes it. Measured (bench/allocator.py, one CPU thread): that was more than half of a
batch-256 ResNet forward pass.

`keep_freed_memory` fixes the two thresholds, which also stops glibc raising them dynamically:
blocks up to MMAP_THRESHOLD come from the heap (reused, not mapped afresh each time), and the
heap is trimmed only when more than TRIM_THRESHOLD lies free at its top. A worker's resident
size can stay that much above its live tensors; that is the price of not paging."""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30  # 1 GiB free at the heap's top before glibc returns any
MMAP_THRESHOLD = 256 << 20  # blocks up to 256 MiB from the heap; above, mapped as before

_done = False


def keep_freed_memory() -> bool:
    """Set the thresholds once per process (True if they are set: Linux with glibc)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
              and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1)
    if not ok:
        log.warning("mallopt refused the allocator thresholds; keeping glibc's defaults")
    _done = ok
    return ok
