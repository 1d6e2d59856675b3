"""Keep freed memory in the process (glibc malloc) for CPU training and benchmarks.

PyTorch's CPU allocator gets its memory from malloc. glibc hands allocations above its mmap
threshold (dynamic, at most 32 MiB) to fresh ``mmap`` pages and returns freed heap memory
to the system, so a training step that frees and re-allocates the same activation and
gradient buffers page-faults on them every step: thousands of faults per step at Slow-R50
sizes, a varying 5-10% of the step (bench/results/context.md). PyTorch's CPU tuning guide
recommends jemalloc or tcmalloc for this; where neither is preloaded, ``keep_freed_memory``
sets glibc's thresholds instead (``mallopt``), so that freed buffers are reused.

The training and test engines call it on CPU runs (``TRAIN.CPU_KEEP_FREED_MEMORY``);
bench_context.py calls it for every model alike. Memory then stays at the run's peak. glibc
cannot keep blocks above 32 MiB (always mapped afresh): for big batches on CPUs, preload
jemalloc or tcmalloc (``LD_PRELOAD``), which this then leaves alone.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory", "tune_cpu_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_MAX = 32 << 20  # glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
_TRIM = 2 ** 31 - 1  # mallopt takes an int: about 2 GiB of free heap kept before trimming
_done = None


def keep_freed_memory() -> str:
    """Set glibc's mmap/trim thresholds once per process; returns what was done (for the log)."""
    global _done
    if _done is not None:
        return _done
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload:
        _done = "malloc: preloaded allocator, left as is"
    elif any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        _done = "malloc: MALLOC_*_THRESHOLD_ set in the environment, left as is"
    elif not sys.platform.startswith("linux"):
        _done = "malloc: not glibc, left as is"
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_MAX) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM) == 1
            _done = ("malloc: glibc keeps freed memory (mmap threshold 32 MiB, trim threshold 2 GiB)" if ok
                     else "malloc: mallopt refused, left as is")
        except (OSError, AttributeError):  # musl and other C libraries have no mallopt
            _done = "malloc: no glibc mallopt, left as is"
    return _done


def tune_cpu_memory(enabled: bool, device) -> str:
    """``keep_freed_memory()`` for CPU runs when ``enabled`` (TRAIN.CPU_KEEP_FREED_MEMORY); returns a log line or ""."""
    if getattr(device, "type", str(device)) != "cpu" or not enabled:
        return ""
    return keep_freed_memory()
