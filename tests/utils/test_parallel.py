"""parallel_imap: every job once, same results in and out of worker processes, errors reach the caller."""
import os

import pytest

from gcvideo.utils.parallel import parallel_imap


def _square_and_pid(x):
    if x == -1:
        raise ValueError("job -1 failed")
    return x * x, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_every_job_once(workers):
    out = list(parallel_imap(_square_and_pid, list(range(23)), workers, "test", progress=False, chunksize=3))
    assert sorted(v for v, _ in out) == [x * x for x in range(23)]
    pids = {p for _, p in out}
    assert (pids == {os.getpid()}) == (workers == 1)


def test_errors_reach_the_caller():
    with pytest.raises(ValueError, match="job -1 failed"):
        list(parallel_imap(_square_and_pid, [1, -1, 2], 2, "test", progress=False))


def _slow(x):
    import time
    time.sleep(0.3)
    return x


def test_stopping_early_drops_the_queued_jobs():
    import time

    t0 = time.perf_counter()
    gen = parallel_imap(_slow, list(range(20)), 2, "test", progress=False)
    next(gen)
    gen.close()  # what an exception or Ctrl-C in the caller's loop does
    assert time.perf_counter() - t0 < 1.5  # not the 20 x 0.3 s / 2 workers = 3 s of the whole queue
