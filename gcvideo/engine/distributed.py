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
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
import pickle
from typing import Any, Callable, Iterator, List

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import Sampler

from gcvideo.utils.errors import UserError

__all__ = ["BatchSizeError",
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


def init_distributed(device_type: str) -> bool:
    """Join the process group torchrun describes (if any); True when we created it.

    Uses nccl for CUDA and gloo for CPU. A single process (WORLD_SIZE unset or 1)
    stays out of torch.distributed entirely.
    """
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
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return True


@contextlib.contextmanager
def process_group(device_type: str):
    """``init_distributed`` on entry, ``cleanup_distributed`` on exit (``finished`` unless the
    body raised): what ``train`` and ``test`` run inside."""
    created, finished = init_distributed(device_type), False
    try:
        yield
        finished = True
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


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
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
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            out = CPUSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                   module.track_running_stats)
            out.load_state_dict(module.state_dict())
            out.process_group = group
            out.train(module.training)
        for name, child in module.named_children():
            out.add_module(name, convert(child))
        return out

    return convert(model)
