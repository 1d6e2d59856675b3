"""The shell that every ``tools/*.py`` (and its ``gcvideo-*`` console command) shares.

* ``ToolParser``: the argument parser. Config overrides are positional ``KEY VALUE`` pairs
  anywhere on the line (``DATA.NUM_FRAMES 4``, ``OUTPUT_DIR runs/x``), also after the options and
  the other positionals; ``--opts KEY VALUE ...`` is kept as an alias (everything after it).
  A parsing mistake is one ``error: ...`` line, exit status 2.
* ``tool``: the decorator of each tool's ``main``: a user's mistake (``gcvideo.utils.errors.UserError``
  and its subclasses, a missing or existing file) becomes one ``error: ...`` line on stderr and
  exit status 2, no traceback; Ctrl-C (outside a training run, which saves first: ``engine/signals.py``)
  is one ``interrupted`` line and exit status 130. A run stopped by a cause outside the code that its
  message explains (``RunStopped``: ``RankTimeout``, a process that stopped answering) is one ``error: ...``
  line and exit status 1. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import Callable, List, Optional, Sequence, Tuple

from gcvideo.config import get_cfg
from gcvideo.utils.errors import RunStopped, UserError

__all__ = ["ToolParser", "tool", "USER_ERRORS", "error_line", "split_overrides", "EXIT_USER_ERROR", "EXIT_INTERRUPTED",
           "EXIT_RUN_STOPPED"]

EXIT_RUN_STOPPED = 1
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 128 + 2  # 128 + SIGINT, as a shell reports a process that Ctrl-C ended
# what a tool answers with one line: the user's mistakes, and files that are missing or in the way
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
               PermissionError)
_DOTTED_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+$")  # DATA.NUM_FRAMES, also unknown ones


@functools.lru_cache(maxsize=1)
def _top_level_keys() -> frozenset:
    cfg = get_cfg()
    return frozenset(k for k in cfg.keys() if not isinstance(cfg[k], dict))  # OUTPUT_DIR, SEED, ...


def _is_key(token: str) -> bool:
    return bool(_DOTTED_KEY.match(token)) or token in _top_level_keys()


def error_line(e: BaseException) -> str:
    """The message of ``e`` on one line (an OS error as ``path: reason``)."""
    if isinstance(e, OSError) and not isinstance(e, UserError) and e.filename and e.strerror:
        text = f"{e.filename}: {e.strerror}"
    else:
        text = str(e) or type(e).__name__
        if isinstance(e, KeyError) and len(e.args) == 1:
            text = str(e.args[0])
    return " ".join(part.strip() for part in text.strip().splitlines() if part.strip())


def split_overrides(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Tuple[List[str], List[str]]:
    """(the arguments for argparse, the ``KEY VALUE`` overrides): a config key that is not the value of
    an option starts a pair and takes the next argument as its value (even "-1"); ``--opts`` takes
    everything after it."""
    argv = list(argv)
    after: List[str] = []
    if "--opts" in argv:
        i = argv.index("--opts")
        argv, after = argv[:i], argv[i + 1:]
    rest: List[str] = []
    opts: List[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--":  # argparse's end of options: the rest is positional as given
            rest += argv[i:]
            break
        action = parser._option_string_actions.get(rest[-1]) if rest else None
        is_value = action is not None and action.nargs in (None, 1, "?")  # the value of --config FILE
        if not is_value and _is_key(token):
            if i + 1 >= len(argv):
                parser.error(f"config override {token} has no value (overrides are KEY VALUE pairs)")
            opts += [token, argv[i + 1]]
            i += 2
            continue
        rest.append(token)
        i += 1
    return rest, opts + after


class ToolParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` of a tool: the module docstring as description; with ``overrides``
    (tools that read a config) the ``KEY VALUE`` overrides land in ``args.opts``."""

    def __init__(self, doc: Optional[str], overrides: bool = True, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(description=doc, **kwargs)
        self.overrides = overrides
        self._overrides_added = False

    def _add_overrides(self) -> None:
        """The overrides' arguments, after the tool's own (a positional list before the tool's
        positionals would take their values)."""
        if self.overrides and not self._overrides_added:
            self._overrides_added = True
            self.add_argument("opts", nargs="*", metavar="KEY VALUE",
                              help="config overrides, e.g. DATA.NUM_FRAMES 4 OUTPUT_DIR runs/x "
                                   "(anywhere on the line)")
            self.add_argument("--opts", dest="opts_alias", nargs="*", metavar="KEY VALUE", default=[],
                              help="the same overrides after a flag (an alias; takes the rest of the line)")

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace=None):
        self._add_overrides()
        argv = list(sys.argv[1:] if args is None else args)
        overrides: List[str] = []
        if self.overrides:
            argv, overrides = split_overrides(self, argv)
        ns = super().parse_args(argv, namespace)
        if self.overrides:
            # whatever argparse left as positional goes to load_cfg too, which names an unknown key
            ns.opts = overrides + list(ns.opts or [])
            del ns.opts_alias
        return ns

    def error(self, message: str):
        self.exit(EXIT_USER_ERROR, f"error: {message} (usage: {self.prog} --help)\n")


def tool(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate a tool's ``main(argv=None) -> int``: user errors become one line and exit status 2;
    a ``RunStopped`` one line and exit status 1; Ctrl-C one line and exit status 130."""

    @functools.wraps(main)
    def run(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except USER_ERRORS as e:
            print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR
        except RunStopped as e:
            print(f"error: {error_line(e)}", file=sys.stderr, flush=True)
            return EXIT_RUN_STOPPED
        except KeyboardInterrupt:
            print("interrupted (Ctrl-C): stopped before finishing", file=sys.stderr, flush=True)
            return EXIT_INTERRUPTED

    return run
