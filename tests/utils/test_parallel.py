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


def _slow(job):
    import time
    folder, x = job
    time.sleep(0.3)
    open(os.path.join(folder, f"done_{x}"), "w").close()
    return x


def test_stopping_early_drops_the_queued_jobs(tmp_path):
    """Counted, not timed (a loaded CI machine makes any time bound flaky): after the caller
    closes the generator, the queued jobs never run; at most those already started finish."""
    import time

    gen = parallel_imap(_slow, [(str(tmp_path), x) for x in range(20)], 2, "test", progress=False)
    next(gen)
    gen.close()  # what an exception or Ctrl-C in the caller's loop does; the pool is joined here
    time.sleep(0.5)  # a job that still ran would have written its file by now
    done = len(list(tmp_path.glob("done_*")))
    assert 1 <= done <= 4, done  # not the 20 of the whole queue
