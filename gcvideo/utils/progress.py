"""tqdm progress bars that stay readable in log files.

On a terminal a bar redraws in place about once a second. When stderr is a file or a pipe
(a cluster job's log), every redraw becomes another line of text, so there the bar updates at
most every ``LOG_INTERVAL_S`` seconds.
"""
from __future__ import annotations

import sys

__all__ = ["progress_bar", "progress_write", "LOG_INTERVAL_S"]

LOG_INTERVAL_S = 60.0  # seconds between bar updates when stderr is not a terminal


def progress_bar(total: int, desc: str, initial: int = 0, unit: str = "it", leave: bool = True, file=None):
    """A ``tqdm`` bar on ``file`` (stderr): 1 s between redraws on a terminal, 60 s otherwise."""
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    tty = bool(getattr(file, "isatty", lambda: False)())
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave, file=file, dynamic_ncols=tty,
                mininterval=1.0 if tty else LOG_INTERVAL_S)


def progress_write(msg: str, file=None) -> None:
    """``msg`` as one line of its own on ``file`` (stderr) while bars are drawn there: open bars are
    cleared first and redrawn below it (``tqdm.write``), so the line never glues onto a bar's text."""
    from tqdm import tqdm

    file = sys.stderr if file is None else file
    tqdm.write(msg, file=file)
    file.flush()
