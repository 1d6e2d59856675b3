"""The output-folder lock: exclusive across open files, free again after release, a note where no lock exists."""
import os

import pytest

from gcvideo.utils.folder_lock import LOCK_NAME, FolderInUse, FolderLock


def test_second_holder_is_refused_with_pid_and_host(tmp_path):
    out = str(tmp_path / "run")
    with FolderLock(out) as first:
        assert first.fd is not None and os.path.exists(os.path.join(out, LOCK_NAME))
        with pytest.raises(FolderInUse, match=rf"OUTPUT_DIR = '{out}' is in use by another run \(pid {os.getpid()} "
                                              rf"on host {os.uname().nodename}"):
            FolderLock(out).acquire()
    with FolderLock("file://" + out) as again:  # released: free again (file:// is the same local folder)
        assert again.fd is not None


def test_release_can_remove_the_lock_file_it_created(tmp_path):
    lock = FolderLock(str(tmp_path)).acquire()
    lock.release(remove=True)
    assert not os.path.exists(tmp_path / LOCK_NAME)


def test_locations_that_cannot_be_locked_say_so():
    lock = FolderLock("s3://bucket/run").acquire()
    assert lock.fd is None and "cannot be locked" in lock.note
    lock.release()
