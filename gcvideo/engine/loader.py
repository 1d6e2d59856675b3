"""The engine's DataLoaders: workers forked with a frozen garbage collector, and the training
loader built once per run.

``ForkingLoader`` is the one place where the engine's DataLoader workers are created (training,
precise BN, validation, test). Right before it forks them it collects garbage and calls
``gc.freeze()``: the objects alive then (torch, numpy, the dataset, ...) move to the collector's
permanent generation, so a full collection inside a worker does not write their gc headers and
copy their pages -- about 80 MB per worker otherwise (bench/results/records.md, "USS growth, then a
full gc": 84.7 MB per worker without, 0.2 MB with the freeze). The parent unfreezes them right
after the fork (the workers keep their frozen copy), so its own collections are unchanged.

It also sizes the workers to the machine: DATA.NUM_WORKERS, at most this process's share of the
usable cores (``gcvideo.utils.threads.loader_workers``; a note says so once), for training and
test loaders alike; items do not depend on the number of workers.

``TrainLoader`` builds the training DataLoader once, with persistent workers (DataLoader
workers > 0) and ``prefetch_factor`` batches in flight per worker: each epoch only sets the
sampler's (epoch, start iteration) and the dataset's epoch before ``iter`` re-primes the same
workers. Items stay those of a fresh loader because item randomness depends only on
(SEED, epoch, index, attempt) and the dataset's epoch lives in shared memory (a dataset says so
with ``epoch_is_shared = True``, as ``VideoDataset`` does; one with a ``set_epoch`` that does not
gets a new loader, new workers, each epoch, as before).
"""
from __future__ import annotations

import functools
import gc
import os
import signal
import threading
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from gcvideo.engine import distributed as du
from gcvideo.utils.threads import loader_workers, usable_cores
from gcvideo.utils.torch_private import end_loader_workers

__all__ = ["ForkingLoader", "LoaderSettings", "TrainLoader", "epoch_reaches_workers"]


@dataclass(frozen=True)
class LoaderSettings:
    """The engine's DataLoaders (training, validation, test): DATA.NUM_WORKERS, DATA.PIN_MEMORY (used on
    CUDA only), DATA.PREFETCH_FACTOR (training batches in flight per worker)."""
    num_workers: int
    pin_memory: bool
    prefetch_factor: int

    def for_device(self, device: torch.device) -> "LoaderSettings":
        """These settings for batches bound for ``device``: pinned memory on CUDA only."""
        return replace(self, pin_memory=self.pin_memory and device.type == "cuda")


_NOTED = set()  # the requested worker counts this process has printed a note for


def _ignore_sigint(worker_init_fn: Optional[Callable[[int], None]], worker_id: int) -> None:
    """Worker start: Ctrl-C reaches the terminal's whole process group, workers included; the main
    process decides what it means (the trainer saves a checkpoint at the end of the step), so a worker
    ignores it instead of dying under the batches the step still needs."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if worker_init_fn is not None:
        worker_init_fn(worker_id)


class ForkingLoader(DataLoader):
    """A ``DataLoader`` whose worker processes fork from a parent with a frozen garbage collector,
    ``num_workers`` of them at most this process's share of the cores (``loader_workers``), and
    ignore SIGINT (``_ignore_sigint``)."""

    def __init__(self, dataset: Dataset, *args: Any, num_workers: int = 0,
                 worker_init_fn: Optional[Callable[[int], None]] = None, **kwargs: Any):
        used = loader_workers(num_workers)
        if used < num_workers and num_workers not in _NOTED and du.is_main_process():
            _NOTED.add(num_workers)
            print(f"note: DATA.NUM_WORKERS {num_workers} is more than this process's share of the "
                  f"{usable_cores()} usable cores: {used} loader workers", flush=True)
        super().__init__(dataset, *args, num_workers=used,
                         worker_init_fn=functools.partial(_ignore_sigint, worker_init_fn), **kwargs)

    def __iter__(self):
        # a multi-process iterator forks its workers in its constructor (a persistent loader: on the
        # first iter only); _freeze_before_fork freezes the collector at the first of those forks
        if self.num_workers == 0:
            return super().__iter__()
        state = _FORKING.state = {"frozen": False, "already": False}
        try:
            return super().__iter__()
        finally:
            _FORKING.state = None
            if state["frozen"] and not state["already"]:
                gc.unfreeze()


def _freeze_before_fork() -> None:
    """``os.register_at_fork(before=...)``: in a ``ForkingLoader.__iter__`` (this thread), before its
    first worker forks, collect garbage (it would be frozen, and kept, too) and freeze the rest; a
    collector the application froze itself stays frozen afterwards. Any other fork: nothing."""
    state = getattr(_FORKING, "state", None)
    if state is None or state["frozen"]:
        return
    state["frozen"], state["already"] = True, gc.get_freeze_count() > 0
    gc.collect()
    gc.freeze()


_FORKING = threading.local()  # .state: the ForkingLoader.__iter__ running in this thread, if any
os.register_at_fork(before=_freeze_before_fork)


def epoch_reaches_workers(dataset: Dataset) -> bool:
    """True when persistent workers see ``dataset.set_epoch`` (no ``set_epoch``: no epoch to see)."""
    return not hasattr(dataset, "set_epoch") or bool(getattr(dataset, "epoch_is_shared", False))


class TrainLoader:
    """The training batches of one process, epoch after epoch, from one DataLoader.

    ``epoch(e, start_iter)`` returns the loader to iterate for iterations ``start_iter..`` of epoch
    ``e``; iterating it before the previous iteration ended (precise BN takes a few batches) is
    fine: the workers drop what they had prefetched. ``settings`` (``LoaderSettings``, already
    ``for_device``) gives the workers, pinned memory and prefetch. The workers' torch seeds come from
    ``seed``, ``rank`` and the first epoch asked for (items do not use them). ``close()`` ends the
    workers.
    """

    def __init__(self, dataset: Dataset, sampler: Sampler, batch_size: int, settings: LoaderSettings, *,
                 seed: int, rank: int, collate_fn: Optional[Callable[[list], Any]] = None):
        self.dataset, self.sampler = dataset, sampler
        workers = settings.num_workers
        self.persistent = workers > 0 and epoch_reaches_workers(dataset)
        self._kw = dict(batch_size=batch_size, sampler=sampler, num_workers=workers, drop_last=True,
                        pin_memory=settings.pin_memory, collate_fn=collate_fn, persistent_workers=self.persistent,
                        prefetch_factor=settings.prefetch_factor if workers > 0 else None)
        self.seed, self.rank = seed, rank
        self._loader: Optional[DataLoader] = None

    def epoch(self, epoch: int, start_iter: int = 0) -> DataLoader:
        # the sampler's order and the dataset's epoch are read when iter() (re)primes the workers
        self.sampler.set_epoch(epoch, start_iter)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        if self._loader is None or not self.persistent:
            gen = torch.Generator().manual_seed(self.seed * 7919 + epoch * 104729 + self.rank)
            self._loader = ForkingLoader(self.dataset, generator=gen, **self._kw)
        return self._loader

    def close(self) -> None:
        """End the persistent workers now (a new ``epoch`` call starts new ones)."""
        loader, self._loader = self._loader, None
        if loader is not None:
            end_loader_workers(loader)
