"""Run one function over many jobs in worker processes, with a progress bar.

Used by the dataset tools (toy generator, video checker, Kinetics re-encoder): results come
back in completion order; the pool and the bar are closed however the loop ends, and the workers
end with the process that started them, however it ends (even SIGKILL).
"""
from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from typing import Callable, Iterator, Sequence, TypeVar

from gcvideo.utils.progress import progress_bar

__all__ = ["parallel_imap"]

J = TypeVar("J")
R = TypeVar("R")

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent(parent: int) -> None:
    """Pool initializer: end this worker when ``parent`` ends, however it ends.

    Linux: the kernel sends SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``; SIGKILL
    because a worker may have inherited Python signal handlers that would catch a SIGTERM).
    Elsewhere: a daemon thread that exits the worker once its parent process has changed.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            _watch_parent(parent)
    else:
        _watch_parent(parent)
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _watch_parent(parent: int) -> None:
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watchdog", daemon=True).start()


def parallel_imap(fn: Callable[[J], R], jobs: Sequence[J], workers: int, desc: str, unit: str = "it",
                  progress: bool = True, chunksize: int = 1) -> Iterator[R]:
    """Yield ``fn(job)`` for every job, unordered; ``workers`` <= 1 (or one job) runs in this process.

    If the loop ends early (an exception in a job or in the caller, KeyboardInterrupt, or the
    caller closing the generator), the workers are terminated instead of finishing the queue.

    Worker processes are forked where the platform allows it, so ``fn`` may be any module-level
    function of an imported module. They die with this process (SIGKILL of it included), so no
    worker goes on writing files for a run that has ended.
    """
    bar = progress_bar(total=len(jobs), desc=desc, unit=unit) if progress and len(jobs) else None
    pool = None
    if workers > 1 and len(jobs) > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        pool = ctx.Pool(min(workers, len(jobs)), initializer=_die_with_parent, initargs=(os.getpid(),))
        results = pool.imap_unordered(fn, jobs, chunksize=chunksize)
    else:
        results = map(fn, jobs)
    finished = False
    try:
        for result in results:
            if bar is not None:
                bar.update(1)
            yield result
        finished = True
    finally:
        if pool is not None:
            if finished:
                pool.close()
            else:  # an error, Ctrl-C or the caller stopped early: drop the queued jobs now
                pool.terminate()
            pool.join()
        if bar is not None:
            bar.close()
