"""One run per output folder: an advisory lock on ``FOLDER/.gcvideo.lock`` held while a run writes there.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on an open file: the kernel drops it when the holding
process ends, however it ends (exit, exception, SIGKILL, a crash of the machine as seen by an
NFS server), so nothing stale is ever left to clean. The file holds the holder's pid, host and
start time only so that the refusal can name them.

Shared file systems: on Linux NFS (v4, or v3 with lockd) ``flock`` is carried out as a byte-range
lock by the server and so excludes processes on other machines; Lustre needs its ``flock`` mount
option, where ``flock`` fails with ENOLCK/EOPNOTSUPP otherwise: then, and for iopath locations
that are not local files (object stores, HTTP), no lock can be taken; :meth:`FolderLock.acquire`
says so in its ``note`` and the run goes on unprotected. Multi-process runs: only rank 0 locks.
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import time
from typing import Optional

from gcvideo.utils.errors import UserError
from gcvideo.utils.io import local_path

__all__ = ["FolderLock", "FolderInUse", "LOCK_NAME"]

LOCK_NAME = ".gcvideo.lock"


class FolderInUse(UserError, RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """``with FolderLock(folder):`` -- hold ``folder``'s lock (the folder is created if needed).

    ``acquire`` raises :class:`FolderInUse` at once, naming the folder and the holder's pid and
    host, when another process (on this or another machine) holds it.
    """

    def __init__(self, folder: str, what: str = "OUTPUT_DIR"):
        self.folder, self.what = folder, what
        self.fd: Optional[int] = None
        self.note = ""  # why no lock could be taken ("" when held)
        self.created = False  # acquire created the lock file

    def acquire(self) -> "FolderLock":
        local = local_path(self.folder)
        if local is None:
            self.note = (f"warning: {self.what} = {self.folder!r} is not a local file system path: it cannot be "
                         "locked, so nothing stops a second run from writing into it at the same time")
            return self
        os.makedirs(local, exist_ok=True)
        path = os.path.join(local, LOCK_NAME)
        self.created = not os.path.exists(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise FolderInUse(
                    f"{self.what} = {self.folder!r} is in use by another run ({holder or 'holder unknown'}); "
                    "wait for it to end or choose another folder (a run that ended, however it ended, "
                    "holds no lock)") from None
            self.note = (f"warning: {path} cannot be locked on this file system ({os.strerror(e.errno)}), so "
                         "nothing stops a second run from writing into it at the same time")
            return self
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self, remove: bool = False) -> None:
        """Let the lock go; ``remove``: also delete the lock file if ``acquire`` created it."""
        if self.fd is not None:
            if remove and self.created:
                os.remove(os.path.join(local_path(self.folder), LOCK_NAME))
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
