"""Under torchrun: ``run_on_main_process`` with a function that fails on rank 0 in two ways and one
that succeeds; every rank writes what it raised (one line each) to its own file, rank<r>.txt in the
folder given (the ranks share stdout, where their lines can interleave)."""
import os
import sys

from gcvideo.engine import distributed as du
from gcvideo.utils.folder_lock import FolderInUse


class TwoArgError(Exception):
    """Cannot be rebuilt from its pickled args (its __init__ takes two)."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def fail_in_use():
    raise FolderInUse("OUTPUT_DIR = 'x' is in use by another run")


def fail_two_args():
    raise TwoArgError("left", "right")


def write_once():
    with open(os.path.join(sys.argv[1], "calls.txt"), "a") as f:
        f.write(f"rank {du.get_rank()}\n")


created = du.init_distributed("cpu")
rank = du.get_rank()
with open(os.path.join(sys.argv[1], f"rank{rank}.txt"), "w") as out:
    for fn in (fail_in_use, fail_two_args, write_once):
        try:
            du.run_on_main_process(fn)
            out.write(f"rank{rank} {fn.__name__}: ok\n")
        except Exception as e:
            out.write(f"rank{rank} {fn.__name__}: {type(e).__name__}: {e}\n")
du.cleanup_distributed(created)
