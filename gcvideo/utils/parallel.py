"""Run one function over many jobs in worker processes, with a progress bar.

Used by the dataset tools (toy generator, video checker, Kinetics re-encoder): results come
back in completion order; the pool and the bar are closed however the loop ends.
"""
from __future__ import annotations

import multiprocessing as mp
from typing import Callable, Iterator, Sequence, TypeVar

from gcvideo.utils.progress import progress_bar

__all__ = ["parallel_imap"]

J = TypeVar("J")
R = TypeVar("R")


def parallel_imap(fn: Callable[[J], R], jobs: Sequence[J], workers: int, desc: str, unit: str = "it",
                  progress: bool = True, chunksize: int = 1) -> Iterator[R]:
    """Yield ``fn(job)`` for every job, unordered; ``workers`` <= 1 (or one job) runs in this process.

    If the loop ends early (an exception in a job or in the caller, KeyboardInterrupt, or the
    caller closing the generator), the workers are terminated instead of finishing the queue.

    Worker processes are forked where the platform allows it, so ``fn`` may be any module-level
    function of an imported module.
    """
    bar = progress_bar(total=len(jobs), desc=desc, unit=unit) if progress and len(jobs) else None
    pool = None
    if workers > 1 and len(jobs) > 1:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        pool = ctx.Pool(min(workers, len(jobs)))
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
