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
