"""Training checkpoints (the run's resumable state; model weight files of other packages:
``gcvideo.models``): atomic, iopath-backed, readable with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors and plain containers only, built by ``training_state`` and read
back by ``restore_training_state``:
``format``, the ``model``, ``optimizer``, ``scheduler``, ``grad_scaler`` state dicts, the position
``next_epoch`` / ``next_iter`` (0-based epoch to continue and iterations of it
already done), ``global_iter`` and ``iters_per_epoch``, ``world_size``, the epoch's sums so far
(``epoch_meters``) and the best validation (``best``), the resolved ``config`` as YAML text, and
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
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from gcvideo.utils.io import (CheckpointError, CorruptCheckpointError, atomic_save, load_checkpoint_file, move_aside,
                              path_manager)

__all__ = ["FORMAT", "checkpoint_dir", "checkpoint_name", "list_checkpoints", "save_checkpoint",
           "load_latest_checkpoint", "get_rng_state", "set_rng_state", "best_checkpoint_path", "TrainingObjects",
           "RunPosition", "training_state", "restore_training_state", "rng_state_of"]

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
# What a training checkpoint holds (written by ``training_state``, read by ``restore_training_state``)
# ---------------------------------------------------------------------------
@dataclass
class TrainingObjects:
    """What a training checkpoint saves the state of: the plain model (not its DDP / torch.compile
    wrapper), the optimizer, the LR schedule and the grad scaler."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: Any  # gcvideo.engine.optim.WarmupCosineSchedule (state_dict / load_state_dict)
    scaler: torch.amp.GradScaler


@dataclass
class RunPosition:
    """Where a checkpoint's run continues: 0-based ``next_epoch``, ``next_iter`` iterations of it done,
    ``global_iter``; the epoch's meters so far (a mid-epoch checkpoint; {} otherwise), the best validation
    so far ({"top1", "epoch"} or {}) and ``iters_per_epoch`` of the run that wrote it."""
    next_epoch: int
    next_iter: int
    global_iter: int
    iters_per_epoch: int
    meters: Dict[str, float] = field(default_factory=dict)
    best: Dict[str, float] = field(default_factory=dict)


def training_state(parts: TrainingObjects, position: RunPosition, *, world_size: int, config_text: str,
                   rngs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The checkpoint dict (the module's text lists its keys): state dicts of ``parts``, ``position``,
    the resolved config's YAML and every process's RNG states (``rngs``, by rank)."""
    return {"format": FORMAT, "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.schedule.state_dict(),
            "grad_scaler": parts.scaler.state_dict() if parts.scaler.is_enabled() else {},
            "next_epoch": position.next_epoch, "next_iter": position.next_iter, "global_iter": position.global_iter,
            "iters_per_epoch": position.iters_per_epoch, "world_size": world_size, "config": config_text,
            "rng": rngs, "epoch_meters": dict(position.meters), "best": dict(position.best)}


def restore_training_state(parts: TrainingObjects, path: str, ck: Dict[str, Any],
                           iters_per_epoch: int) -> RunPosition:
    """Load checkpoint ``ck`` (read from ``path``) into ``parts``; returns its position. A model of
    another config, or a mid-epoch checkpoint of a run with another ``iters_per_epoch``, is a
    ``RuntimeError`` naming ``path``."""
    try:
        parts.model.load_state_dict(ck["model"])
    except RuntimeError as e:
        raise RuntimeError(f"checkpoint {path} does not fit the model of this config; use a new "
                           f"OUTPUT_DIR for a different model: {str(e).splitlines()[0]}") from e
    parts.optimizer.load_state_dict(ck["optimizer"])
    parts.schedule.load_state_dict(ck["scheduler"])
    if ck.get("grad_scaler"):
        parts.scaler.load_state_dict(ck["grad_scaler"])
    pos = RunPosition(ck["next_epoch"], ck["next_iter"], ck["global_iter"], iters_per_epoch)
    if ck.get("iters_per_epoch") not in (None, iters_per_epoch) and pos.next_iter:
        raise RuntimeError(f"checkpoint {path} was written mid-epoch with {ck['iters_per_epoch']} iterations "
                           f"per epoch but this run has {iters_per_epoch} (dataset or TRAIN.BATCH_SIZE changed)")
    if pos.next_iter and ck.get("epoch_meters"):
        pos.meters = dict(ck["epoch_meters"])
    pos.best = dict(ck.get("best") or {})
    return pos


def rng_state_of(ck: Dict[str, Any], rank: int) -> Dict[str, Any]:
    """Process ``rank``'s RNG states in checkpoint ``ck`` (rank 0's for a rank the writing run did not have)."""
    return ck["rng"][rank] if rank < len(ck["rng"]) else ck["rng"][0]


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
