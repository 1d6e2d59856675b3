"""Process groups, samplers and cross-process helpers for training and testing.

One code path for a single process (``python tools/train_net.py``) and for
``torchrun`` on one or many machines: ``init_distributed`` reads the variables
torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and joins
the group with nccl on CUDA and gloo on CPU.

The samplers here replace ``DistributedSampler``:
- ``TrainSampler`` shuffles with a per-epoch seed, drops the last incomplete
  *global* batch (every step sees the full global batch on every process) and
  can start in the middle of an epoch, so a resumed run sees exactly the clips
  an uninterrupted one would.
- ``ShardSampler`` (evaluation) gives rank r the indices r, r+W, r+2W, ...
  without padding, so every video is evaluated exactly once; results are
  gathered by dataset index.

``SyncBatchNorm`` in PyTorch runs on GPUs only; ``convert_sync_batchnorm`` uses
it on CUDA and our ``CPUSyncBatchNorm`` (same maths, all_reduce over gloo) on CPU.

A process that stops answering (stopped, swapping, stuck in I/O) makes the others wait in their
next collective. ``StepWatch`` names it: the training loop calls ``step_started`` once per step,
which records the step in the process group's store; a thread of every process warns, naming
the ranks that have not reached the step, when a step takes far longer than the last ones
(``STALL_FACTOR`` x their median, at least ``STALL_MIN_S``, at most half of DIST.TIMEOUT). After
DIST.TIMEOUT the waiting collective fails, and ``process_group`` raises ``RankTimeout`` naming
those ranks and the setting.
"""
from __future__ import annotations

import collections
import contextlib
import datetime
import gc
import logging
import os
import pickle
import threading
import time
from typing import Any, Callable, Iterator, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

from gcvideo.utils.errors import RunStopped, UserError
from gcvideo.utils.torch_private import BatchNormBase

__all__ = ["BatchSizeError", "RankTimeout", "StepWatch", "step_started",
           "init_distributed", "cleanup_distributed", "process_group", "is_distributed", "get_rank", "get_world_size",
           "is_main_process", "barrier", "all_gather_object", "all_reduce_sum", "broadcast_object", "run_on_main_process",
           "broadcast_buffers", "TrainSampler",
           "ShardSampler", "convert_sync_batchnorm", "CPUSyncBatchNorm"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


logger = logging.getLogger(__name__)
# A step that takes STALL_FACTOR x the median of the last STALL_WINDOW steps (and at least
# STALL_MIN_S seconds; at most half of DIST.TIMEOUT, so that the warning comes before the
# timeout's error) makes StepWatch name the ranks that have not reached it.
STALL_FACTOR = 10.0
STALL_MIN_S = 60.0
STALL_WINDOW = 50
_STEP_KEY = "gcvideo/step/{}"  # store key: the last step rank {} started


class RankTimeout(RunStopped, RuntimeError):
    """A collective waited DIST.TIMEOUT seconds for processes that did not come (the tools: one line)."""


class StepWatch:
    """The training steps' heartbeat through the process group's ``store`` (see module docstring).

    ``beat(step)`` (main thread, once per step) sets ``gcvideo/step/<rank>``; a daemon thread
    checks about every second how long the current step has taken, and past ``limit()`` reads
    every rank's step from the store and warns, naming the ranks behind. Only the lowest rank
    that reached the step warns (every process sees the same ranks behind), once per step.
    """

    def __init__(self, store, rank: int, world: int, timeout_s: float, factor: float = STALL_FACTOR,
                 min_s: float = STALL_MIN_S):
        self.store, self.rank, self.world = store, rank, world
        self.timeout_s, self.factor, self.min_s = float(timeout_s), float(factor), float(min_s)
        self._times: collections.deque = collections.deque(maxlen=STALL_WINDOW)  # seconds per step
        self._step: Optional[int] = None
        self._since = 0.0
        self._warned: Optional[int] = None
        self._store_failed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.store.set(_STEP_KEY.format(rank), "-1")
        self._thread = threading.Thread(target=self._watch, name="gcvideo-step-watch", daemon=True)
        self._thread.start()

    def beat(self, step: int) -> None:
        now = time.monotonic()
        with self._lock:
            if self._step is not None and step > self._step:
                self._times.append(now - self._since)
            self._step, self._since = step, now
        try:
            self.store.set(_STEP_KEY.format(self.rank), str(step))
        except Exception as e:  # the heartbeat only informs; the collectives decide whether the run goes on
            if not self._store_failed:
                self._store_failed = True
                logger.warning("rank %d: cannot record the step in the process group's store (%s); stalled "
                               "ranks will not be named", self.rank, str(e).strip().splitlines()[0][:200])

    def median(self) -> float:
        """Median seconds of the last steps (0 before the second step)."""
        with self._lock:
            times = sorted(self._times)
        return times[len(times) // 2] if times else 0.0

    def limit(self) -> float:
        """Seconds after which the current step counts as stalled."""
        return min(max(self.factor * self.median(), self.min_s), self.timeout_s / 2)

    def ranks_behind(self) -> Optional[List[int]]:
        """The ranks whose last started step is before this process's (None: no step yet, or the
        store does not answer)."""
        with self._lock:
            step = self._step
        if step is None:
            return None
        try:
            keys = [_STEP_KEY.format(r) for r in range(self.world)]
            steps = [int(self.store.get(k)) if self.store.check([k]) else -1 for k in keys]
        except Exception:  # the store went away with its host
            return None
        return [r for r, s in enumerate(steps) if s < step]

    def _watch(self) -> None:
        poll_s = min(1.0, self.timeout_s / 40)
        next_check = 0.0
        while not self._stop.wait(poll_s):
            with self._lock:
                step, since = self._step, self._since
            now = time.monotonic()
            if step is None or step == self._warned or now < max(next_check, since + self.limit()):
                continue
            next_check = now + self.limit()
            behind = self.ranks_behind()
            if not behind or min(set(range(self.world)) - set(behind)) != self.rank:
                continue
            self._warned = step
            logger.warning("rank %d: iteration %d has waited %.0f s (%.2f s a step before) for rank(s) %s, "
                           "which have not reached it (stopped, swapping or stuck?); DIST.TIMEOUT = %g s ends "
                           "the run if they do not come", self.rank, step + 1, now - since,
                           self.median(), ", ".join(map(str, behind)),
                           self.timeout_s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


_watch: Optional[StepWatch] = None


def _is_collective_timeout(e: BaseException) -> bool:
    """A collective that waited out the process group's timeout (gloo: "Timed out waiting Nms for
    recv/send"; the NCCL watchdog: "collective operation timeout"), not e.g. a DataLoader's."""
    msg = str(e).lower()
    return ("timed out waiting" in msg or "collective operation timeout" in msg
            or (isinstance(e, dist.DistError) and ("timed out" in msg or "timeout" in msg)))


def step_started(step: int) -> None:
    """The training loop's one call per step (its batch is here): this process's heartbeat."""
    if _watch is not None:
        _watch.beat(step)


def init_distributed(device_type: str, timeout_s: float = 1800.0) -> bool:
    """Join the process group torchrun describes (if any); True when we created it.

    Uses nccl for CUDA and gloo for CPU. A single process (WORLD_SIZE unset or 1)
    stays out of torch.distributed entirely. ``timeout_s`` (DIST.TIMEOUT): how long a
    collective waits for the other processes; a ``StepWatch`` starts with the group.
    """
    global _watch
    if is_distributed():
        return False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return False
    for var in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(f"WORLD_SIZE={world} but {var} is not set; launch with torchrun "
                               "(see docs/training.md)")
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    _watch = StepWatch(dist.distributed_c10d._get_default_store(), dist.get_rank(), dist.get_world_size(),
                       timeout_s)
    return True


@contextlib.contextmanager
def process_group(device_type: str, timeout_s: float = 1800.0):
    """``init_distributed`` on entry, ``cleanup_distributed`` on exit (``finished`` unless the
    body raised): what ``train`` and ``test`` run inside. A collective's timeout in the body is
    raised as ``RankTimeout`` naming the ranks that had not reached the step and DIST.TIMEOUT."""
    created, finished = init_distributed(device_type, timeout_s), False
    try:
        yield
        finished = True
    except Exception as e:
        watch = _watch
        if not (created and watch is not None and _is_collective_timeout(e)):
            raise
        behind = watch.ranks_behind()
        who = (f"rank(s) {', '.join(map(str, behind))} did not reach iteration {watch._step + 1}" if behind
               else "the other processes did not come")
        raise RankTimeout(f"rank {watch.rank}: waited DIST.TIMEOUT = {timeout_s:g} s and {who} (stopped, "
                          f"crashed or stuck?); rerun the same command to resume from the last checkpoint "
                          f"({str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__})") from e
    finally:
        cleanup_distributed(created, finished)


def cleanup_distributed(created: bool, finished: bool = True) -> None:
    """Leave the process group we created (``init_distributed`` returned True).

    ``finished``: this process ended normally, so every process meets at a barrier first and
    none closes its gloo/nccl connections while another still talks over them. (After an
    error the others may never arrive: no barrier then.) Garbage is collected before the
    groups go, so that DDP's reducer and the SyncBN modules let go of them while they and
    the interpreter are alive, not at interpreter exit.
    """
    global _watch
    if created and _watch is not None:
        _watch.close()
        _watch = None
    if created and is_distributed():
        if finished:
            dist.barrier()
        gc.collect()
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_gather_object(obj: Any) -> List[Any]:
    """Every process's ``obj``, in rank order (a one-element list without distribution)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of process ``src`` on every process (itself without distribution)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def run_on_main_process(fn: Callable[[], Any]) -> None:
    """``fn()`` on the main process only; an exception there is raised on every process (the
    others raise a copy of it, or a ``RuntimeError`` naming it where it cannot be copied), so no
    process goes on alone after the main one has failed (a folder lock, a config written once)."""
    error = None
    if is_main_process():
        try:
            fn()
        except BaseException as e:
            error = e
    sent = error
    if is_distributed() and error is not None:
        try:
            pickle.loads(pickle.dumps(error))  # what the others will unpickle
        except Exception:
            sent = RuntimeError(f"rank 0 failed: {type(error).__name__}: {error}")
    sent = broadcast_object(sent)
    if error is not None:
        raise error
    if sent is not None:
        raise sent


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Every process takes process ``src``'s buffers (BN running statistics): after the last
    training step each process holds its own, while the checkpoint holds rank 0's."""
    if is_distributed():
        for b in model.buffers():
            dist.broadcast(b, src)


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over processes (no-op for one process)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ---------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------
class BatchSizeError(UserError, ValueError):
    """TRAIN.BATCH_SIZE does not fit the training set or the number of processes."""


class TrainSampler(Sampler[int]):
    """Shuffled indices of this process's share of one epoch, resumable mid-epoch.

    The epoch's permutation comes from ``seed + epoch``; it is cut to whole
    global batches (``iters_per_epoch * global_batch``). Global batch k is
    ``perm[k*B:(k+1)*B]``; process r takes every W-th clip of it, so the union
    over processes of their k-th local batches is the same set for any W.
    ``set_epoch(epoch, start_iter)`` skips the first ``start_iter`` batches.
    """

    def __init__(self, dataset_len: int, global_batch: int, rank: int, world_size: int, seed: int,
                 shuffle: bool = True):
        if global_batch % world_size:
            raise BatchSizeError(f"TRAIN.BATCH_SIZE = {global_batch} must be divisible by the number of "
                             f"processes ({world_size})")
        self.n = dataset_len
        self.global_batch = global_batch
        self.local_batch = global_batch // world_size
        self.rank, self.world = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.iters_per_epoch = dataset_len // global_batch
        if self.iters_per_epoch == 0:
            raise BatchSizeError(f"the training set has {dataset_len} clips, fewer than one global batch "
                             f"(TRAIN.BATCH_SIZE = {global_batch}); lower TRAIN.BATCH_SIZE")
        self.epoch, self.start_iter = 0, 0

    def set_epoch(self, epoch: int, start_iter: int = 0) -> None:
        self.epoch, self.start_iter = epoch, start_iter

    def _global_order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator()
        g.manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def __iter__(self) -> Iterator[int]:
        b, w = self.global_batch, self.world
        perm = self._global_order()[: self.iters_per_epoch * b]  # (iters*B,)
        # (iters, B) -> this rank's columns r, r+W, ... -> (iters, B/W)
        local = perm.view(self.iters_per_epoch, b)[:, self.rank::w]
        return iter(local[self.start_iter:].reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.iters_per_epoch - self.start_iter) * self.local_batch


class ShardSampler(Sampler[int]):
    """Indices rank, rank+W, ... of a dataset: no padding, no duplicates (evaluation)."""

    def __init__(self, dataset_len: int, rank: int, world_size: int):
        self.indices = list(range(rank, dataset_len, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


# ---------------------------------------------------------------------------
# SyncBatchNorm on CPU (gloo)
# ---------------------------------------------------------------------------
class _SyncBNFunction(torch.autograd.Function):
    """Batch norm with statistics over all processes (training mode)."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps, group):
        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        xf = x.float()
        count = torch.tensor([x.numel() / c], dtype=torch.float64)
        # Per-channel sums over this process, then over all: (2C + 1,)
        stats = torch.cat([xf.sum(dims).double(), (xf * xf).sum(dims).double(), count])
        dist.all_reduce(stats, group=group)
        n = stats[-1]
        mean = (stats[:c] / n)
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        shape = [1, c] + [1] * (x.dim() - 2)
        invstd = (var + eps).rsqrt().float()
        mean = mean.float()
        xhat = (xf - mean.view(shape)) * invstd.view(shape)  # (N, C, ...)
        ctx.save_for_backward(xhat, weight, invstd)
        ctx.n, ctx.group, ctx.dims, ctx.shape, ctx.in_dtype = n.item(), group, dims, shape, x.dtype
        y = xhat * weight.view(shape) + bias.view(shape)
        var_unbiased = (var * (n / (n - 1).clamp_min(1))).float()
        ctx.mark_non_differentiable(mean, var_unbiased)
        return y.to(x.dtype), mean, var_unbiased

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        xhat, weight, invstd = ctx.saved_tensors
        dims, shape = ctx.dims, ctx.shape
        gy = gy.float()
        c = xhat.shape[1]
        # Local per-channel sums of dy and dy*xhat; summed over processes for the input gradient.
        local = torch.cat([gy.sum(dims), (gy * xhat).sum(dims)])  # (2C,)
        glob = local.clone()
        dist.all_reduce(glob, group=ctx.group)
        sum_dy, sum_dy_xhat = glob[:c] / ctx.n, glob[c:] / ctx.n
        gx = (gy - sum_dy.view(shape) - xhat * sum_dy_xhat.view(shape)) * (invstd * weight).view(shape)
        return gx.to(ctx.in_dtype), local[c:], local[:c], None, None


class CPUSyncBatchNorm(BatchNormBase):
    """BatchNorm whose training statistics span all processes (works with gloo on CPU)."""

    process_group = None

    def _check_input_dim(self, x):
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        y, mean, var_unbiased = _SyncBNFunction.apply(x, self.weight, self.bias, self.eps,
                                                      self.process_group)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var_unbiased.detach(), alpha=m)
        return y


def convert_sync_batchnorm(model: nn.Module, device_type: str) -> nn.Module:
    """Replace every BatchNorm with a synchronised one (torch's on CUDA, ours on CPU)."""
    if device_type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    group = dist.new_group(backend="gloo") if is_distributed() else None

    def convert(module: nn.Module) -> nn.Module:
        out = module
        if isinstance(module, BatchNormBase) and module.affine:
            out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
            out.load_state_dict(module.state_dict())
            out.process_group = group
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, convert(child))
        return out

    return convert(model)
