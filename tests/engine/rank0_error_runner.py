"""Under torchrun: ``run_on_main_process`` with a function that fails on rank 0 in two ways and one
that succeeds; every rank prints what it raised (one line each)."""
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
for fn in (fail_in_use, fail_two_args, write_once):
    try:
        du.run_on_main_process(fn)
        print(f"rank{rank} {fn.__name__}: ok", flush=True)
    except Exception as e:
        print(f"rank{rank} {fn.__name__}: {type(e).__name__}: {e}", flush=True)
du.cleanup_distributed(created)
