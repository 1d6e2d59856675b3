"""SIGTERM and SIGINT (Ctrl-C) during a training run: one line saying what is saved, no traceback.

The trainer installs ``StopSignals`` for the run; while the epochs run the first signal is only
noted (the loop saves a checkpoint at the end of the step and exits with 128 + the signal's number),
a second one, or one outside the epochs, stops at once.
"""
from __future__ import annotations

import contextlib
import signal
from typing import Any, Iterator

__all__ = ["StopSignals", "TrainingStopped"]


class TrainingStopped(SystemExit):
    """SIGTERM or SIGINT (Ctrl-C): the run exits with 128 + the signal's number after one line saying
    what is saved (restart the same command to resume)."""


class StopSignals:
    """The handler of SIGTERM and SIGINT (Ctrl-C) during a run. While the epochs run (``defer``) the
    first one is only noted in ``name``: the loop saves a checkpoint at the end of the step and exits.
    Otherwise, and for a second signal, the run stops at once with one line: the signal and ``note``
    (where the run was and what is saved)."""

    def __init__(self) -> None:
        self.name = ""  # the signal the loop is to stop for ("" = none)
        self.defer = False
        self.note = "during the set-up; nothing was written"

    def __call__(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if self.defer and not self.name:
            self.name = name
            return
        self.stop_now(name + (" again" if self.name else ""), 128 + signum)

    def stop_now(self, what: str, code: int) -> None:
        print(f"{what}: stopped {self.note}", flush=True)
        raise TrainingStopped(code)

    @contextlib.contextmanager
    def deferring(self, note: str) -> Iterator[None]:
        """While the block runs, the first signal is only noted (the loop saves and exits); a second
        one stops at once with ``note``."""
        self.defer, self.note = True, note
        try:
            yield
        finally:
            self.defer = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """This handler for SIGTERM and SIGINT while the block runs (the main thread only)."""
        old = {}
        try:
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, self)
        except ValueError:  # not the main thread
            pass
        try:
            yield
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
