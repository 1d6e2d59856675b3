"""A CPU run's process settings, set once before the model runs: torch's intra-op threads
(``threads.tune_cpu_threads``, TRAIN.CPU_THREADS) and glibc malloc keeping freed memory
(``malloc.tune_cpu_memory``, TRAIN.CPU_KEEP_FREED_MEMORY). Training and the test call ``tune_cpu``."""
from __future__ import annotations

from gcvideo.utils.malloc import tune_cpu_memory
from gcvideo.utils.threads import tune_cpu_threads

__all__ = ["tune_cpu"]


def tune_cpu(threads: int, keep_freed: bool, num_workers: int, device) -> str:
    """Threads for ``threads`` (TRAIN.CPU_THREADS; 0: the usable cores less the ``num_workers`` loader
    workers), then malloc if ``keep_freed``; returns the log line ("threads: ...; malloc: ...", "" on CUDA)."""
    notes = [tune_cpu_threads(threads, num_workers, device), tune_cpu_memory(keep_freed, device)]
    return "; ".join(n for n in notes if n)
