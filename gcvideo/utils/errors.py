"""The one base class of the mistakes a user fixes (a wrong path, key, value or file).

Every error class that describes such a mistake derives from ``UserError`` as well as from its
usual built-in base (``ConfigError(UserError, ValueError)``, ``CheckpointError(UserError,
RuntimeError)``, ...), so library callers catch what they caught before and the command-line
tools catch one thing (``gcvideo.cli``: one ``error: ...`` line, exit status 2).
"""

__all__ = ["UserError", "UsageError", "RunStopped"]


class UserError(Exception):
    """A mistake the user fixes; its message names what is wrong and what to do."""


class UsageError(UserError, ValueError):
    """A value given by the user (an option, an argument of a library call) cannot be used."""


class RunStopped(Exception):
    """A run stopped for a cause outside its code (another process that stopped answering, ...) that the
    message names, with what to do; the tools print it as one ``error: ...`` line, exit status 1."""
