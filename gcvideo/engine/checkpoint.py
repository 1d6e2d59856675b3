"""Training checkpoints: atomic, iopath-backed, readable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain containers only:
``model``, ``optimizer``, ``scheduler``, ``grad_scaler`` state dicts, the position
``next_epoch`` / ``next_iter`` (0-based epoch to continue and iterations of it
already done) and ``global_iter``, the resolved ``config`` as YAML text, and
``rng``: the python/numpy/torch/cuda RNG states of every process, as tensors.

Files live in ``OUTPUT_DIR/checkpoints``:
``checkpoint_epoch0004.pth`` (epoch 4 finished, 1-based) and
``checkpoint_epoch0005_iter000040.pth`` (40 iterations of epoch 5 done).
Each is written to a temporary name and renamed, so a kill during the write
leaves the previous checkpoints as they were; the newest ``keep_last`` are kept.
Every read verifies the zip records' CRC-32s (``gcvideo.utils.io.verify_checkpoint_bytes``); resume
renames a damaged file to ``NAME.corrupt`` (kept, never listed again) and falls back to the previous one.
"""
from __future__ import annotations

import math
import os
import random
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from gcvideo.utils.io import (CheckpointError, CorruptCheckpointError, atomic_save, load_checkpoint_file, move_aside,
                              path_manager)

__all__ = ["FORMAT", "checkpoint_dir", "checkpoint_name", "list_checkpoints", "save_checkpoint",
           "load_latest_checkpoint", "get_rng_state", "set_rng_state", "best_checkpoint_path"]

FORMAT = "gcvideo-checkpoint-v1"
_NAME = re.compile(r"checkpoint_epoch(\d{4,})(?:_iter(\d{6,}))?\.pth$")


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def checkpoint_name(next_epoch: int, next_iter: int) -> str:
    """File name for the position (0-based epoch to continue, iterations of it done)."""
    if next_iter == 0:
        return f"checkpoint_epoch{next_epoch:04d}.pth"  # epoch ``next_epoch`` (1-based) finished
    return f"checkpoint_epoch{next_epoch + 1:04d}_iter{next_iter:06d}.pth"


def best_checkpoint_path(output_dir: str) -> str:
    """``checkpoints/checkpoint_best.pth``: the best validation top-1 so far (TRAIN.KEEP_BEST); not one
    of the ``list_checkpoints`` (never resumed from, never pruned)."""
    return os.path.join(checkpoint_dir(output_dir), "checkpoint_best.pth")


def _sort_key(name: str) -> Optional[Tuple[int, float]]:
    m = _NAME.fullmatch(name)
    if not m:
        return None
    epoch = int(m.group(1))
    return (epoch, int(m.group(2)) if m.group(2) else math.inf)


def list_checkpoints(output_dir: str) -> List[str]:
    """Complete checkpoint files in ``output_dir``, oldest first (temporary files ignored)."""
    d = checkpoint_dir(output_dir)
    if not path_manager.exists(d):
        return []
    names = [n for n in path_manager.ls(d) if _sort_key(n) is not None]
    return [os.path.join(d, n) for n in sorted(names, key=_sort_key)]


def save_checkpoint(output_dir: str, state: Dict[str, Any], keep_last: int) -> str:
    """Write ``state`` atomically under its position's name; prune to the newest ``keep_last``."""
    path = os.path.join(checkpoint_dir(output_dir), checkpoint_name(state["next_epoch"], state["next_iter"]))
    atomic_save(state, path)
    for old in list_checkpoints(output_dir)[:-keep_last]:
        if old != path:
            path_manager.rm(old)
    return path


def load_latest_checkpoint(output_dir: str, log=print) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(path, state) of the newest checkpoint that loads; older ones are tried if the newest fails.
    A damaged one (CRC mismatch, truncated zip) is renamed to ``NAME.corrupt`` with a warning, so
    that no later resume or pruning picks it; the file itself is kept."""
    for path in reversed(list_checkpoints(output_dir)):
        try:
            state = load_checkpoint_file(path)
        except CorruptCheckpointError as e:
            try:
                aside = move_aside(path)
            except (OSError, NotImplementedError) as moved:  # skipped again next time, with this warning
                log(f"warning: skipping damaged checkpoint {path}: {e} (could not rename it: {moved})")
                continue
            log(f"warning: skipping damaged checkpoint {path}: {e}; renamed it to {aside} (kept for inspection, "
                "never resumed from)")
            continue
        except CheckpointError as e:
            log(f"warning: skipping unreadable checkpoint {path}: {e}")
            continue
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            log(f"warning: skipping {path}: not a gcvideo training checkpoint")
            continue
        return path, state
    return None


# ---------------------------------------------------------------------------
# RNG states as tensors (so weights_only loading works)
# ---------------------------------------------------------------------------
def get_rng_state() -> Dict[str, Any]:
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python_version": version,
        "python_state": torch.tensor(mt, dtype=torch.int64),  # 625 ints
        "python_gauss": [] if gauss is None else [gauss],
        "numpy_keys": torch.from_numpy(np_keys.astype(np.int64)),  # 624 uint32 as int64
        "numpy_pos": int(np_pos), "numpy_has_gauss": int(np_has_gauss), "numpy_gauss": float(np_gauss),
        "torch": torch.get_rng_state(),
        # this process's GPU only: get_rng_state_all() would open a CUDA context on every GPU
        # of the machine in every torchrun process
        "cuda": [torch.cuda.get_rng_state()] if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    mt = tuple(int(x) for x in state["python_state"].tolist())
    gauss = state["python_gauss"][0] if state["python_gauss"] else None
    random.setstate((int(state["python_version"]), mt, gauss))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(state["numpy_pos"]),
                         int(state["numpy_has_gauss"]), float(state["numpy_gauss"])))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"][0])  # the current device (cuda:LOCAL_RANK)
