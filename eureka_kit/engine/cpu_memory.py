"""glibc's allocator set up for a CPU training process: memory freed in one step stays in the heap for the next.

A toy RL step on CPU allocates and frees tens of MB of activations and gradients. With glibc's defaults the heap's
top is handed back to the kernel whenever more than the trim threshold is free (twice the largest mmapped block
freed so far, a few MB here), and blocks above the mmap threshold are mapped afresh, so every step touches new pages
again: 3,000-6,000 page faults per toy step on a 2-core KVM guest, 3-5 with these settings; the step's update ran
~4 ms (~8%) faster with this and the learner's copy-free attention together (benchmarks/RESULTS.md). PyTorch's CPU
tuning advice is to preload jemalloc or tcmalloc for the same reason; `keep_freed_memory` is the in-process
equivalent with the allocator already loaded.

The cost is memory the process keeps: up to `TRIM_BYTES` of free heap stays mapped (never more than the step's own
peak). Blocks above `MMAP_BYTES` are still mapped and unmapped per allocation, as before. Set
`EUREKA_KIT_MALLOC_TUNING=0` to leave glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import sys

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
TRIM_BYTES = 256 * 2**20
MMAP_BYTES = 32 * 2**20  # glibc's own ceiling for its dynamic mmap threshold


@functools.cache
def keep_freed_memory() -> bool:
    """Raise glibc's trim threshold to `TRIM_BYTES` and fix its mmap threshold at `MMAP_BYTES`, once per process.

    True when set; False where it does not apply (not Linux/glibc, or EUREKA_KIT_MALLOC_TUNING=0). Process-wide:
    train() and sft() call it when they run on CPU."""
    if os.environ.get("EUREKA_KIT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
