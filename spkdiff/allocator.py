"""Keep freed memory in the process instead of handing it back to the kernel (glibc ``mallopt``).

Training and sampling allocate and free tensors of the same few sizes (1-30 MB) at every step. With glibc's
defaults each of them is a fresh ``mmap`` whose pages the kernel must fault in and zero, and the next ``free``
unmaps them again: on the 2-core CPU a third to a half of a training step's CPU time went to the kernel
(``bench/bench_train.py --allocator`` measures it). Raising the mmap and trim thresholds lets the heap reuse
those pages; the price is that the process keeps its peak memory until it exits.

``SPKDIFF_MALLOC=default`` leaves glibc's settings alone (for comparisons, or to give memory back).
"""

from __future__ import annotations

import ctypes
import functools
import os

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

MMAP_MAX = 0  # no block gets its own mmap (mallopt caps M_MMAP_THRESHOLD at 32 MiB, below some activations)
TRIM_THRESHOLD = 2**31 - 1  # (a C int) in effect, never trim the heap top
TOP_PAD = 2**30  # grow the heap in large steps


@functools.cache
def keep_freed_memory() -> bool:
    """Apply the settings above once per process; False where they do not apply (not glibc, or opted out)."""
    if os.environ.get("SPKDIFF_MALLOC", "").lower() == "default":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library: no library search
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in (
        (M_MMAP_MAX, MMAP_MAX), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (M_TOP_PAD, TOP_PAD)))
