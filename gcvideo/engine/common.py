"""Small pieces shared by training and testing: device, precision, seeding, class names."""
from __future__ import annotations

import contextlib
import functools
import os
import random
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from fvcore.common.config import CfgNode

from gcvideo.utils.io import path_manager

__all__ = ["select_device", "tune_cpu_memory", "autocast_dtype", "autocast", "seed_everything", "class_names",
           "set_determinism", "to_device", "model_channels_last", "resolve_precision"]


def select_device(cfg: CfgNode) -> torch.device:
    """cfg.DEVICE: "auto" -> cuda:LOCAL_RANK when CUDA is available, else cpu.

    A CUDA device also becomes the current one, so that its RNG state and nccl use it.
    """
    want = cfg.DEVICE
    if want == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("DEVICE = 'cuda' but CUDA is not available here; use DEVICE cpu or auto")
    if want == "cuda" or (want == "auto" and torch.cuda.is_available()):
        # torchrun: one process per GPU of the machine, GPU LOCAL_RANK; launchers that show each
        # process only its own GPU(s) (srun --gpus-per-task): the index wraps around
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


def tune_cpu_memory(cfg: CfgNode, device: torch.device) -> str:
    """TRAIN.CPU_KEEP_FREED_MEMORY on CPU runs (see gcvideo/utils/malloc.py); returns a log line or ""."""
    if device.type != "cpu" or not cfg.TRAIN.CPU_KEEP_FREED_MEMORY:
        return ""
    from gcvideo.utils.malloc import keep_freed_memory

    return keep_freed_memory()


def _cpu_flags() -> set:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def _bf16_measures_faster(device: torch.device, repeats: int = 3) -> bool:
    """A Conv3d forward + backward (128 channels, 3x1x1, 8x14x14) in bf16 autocast beats fp32 by >= 10%."""
    import time

    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(128, 128, (3, 1, 1), padding=(1, 0, 0), bias=False).to(device)
    x = torch.randn(2, 128, 8, 14, 14, generator=gen).to(device).contiguous(memory_format=torch.channels_last_3d)

    def best(dtype) -> float:
        times = []
        for _ in range(repeats + 1):  # the first one builds the kernels
            t0 = time.perf_counter()
            with autocast(device, dtype):
                conv(x).float().sum().backward()
            times.append(time.perf_counter() - t0)
        return min(times[1:])

    return best(torch.bfloat16) < 0.9 * best(None)


def resolve_precision(mode: str, device: torch.device, cpu_flags: Optional[set] = None,
                      bf16_faster: Optional[Callable[[torch.device], bool]] = None) -> str:
    """TRAIN.MIXED_PRECISION with "auto" resolved: on CUDA "bf16" where the GPU supports it; on a CPU
    "bf16" where it has bf16 matrix instructions (flags amx_bf16 or avx512_bf16) and
    ``bf16_faster(device)`` (default: a timed Conv3d step) measures bf16 autocast faster than fp32
    (on every process of a CPU process group); else "none" (fp32)."""
    if mode != "auto":
        return mode
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "none"
    if device.type != "cpu":
        return "none"
    flags = _cpu_flags() if cpu_flags is None else set(cpu_flags)
    faster = bool({"amx_bf16", "avx512_bf16"} & flags) and (bf16_faster or _bf16_measures_faster)(device)
    if torch.distributed.is_available() and torch.distributed.is_initialized():  # one choice for all processes
        vote = torch.tensor([int(faster)])
        torch.distributed.all_reduce(vote, op=torch.distributed.ReduceOp.MIN)
        faster = bool(vote.item())
    return "bf16" if faster else "none"


def autocast_dtype(cfg: CfgNode, device: torch.device) -> Optional[torch.dtype]:
    """TRAIN.MIXED_PRECISION -> autocast dtype (None = full fp32); "auto" see ``resolve_precision``."""
    mp = resolve_precision(cfg.TRAIN.MIXED_PRECISION, device)
    if mp == "none":
        return None
    if mp == "fp16" and device.type != "cuda":
        raise RuntimeError("TRAIN.MIXED_PRECISION = 'fp16' needs CUDA; on the CPU use 'bf16' (or 'none')")
    return torch.bfloat16 if mp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast context for ``dtype`` (a no-op context for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool, device: torch.device) -> None:
    """Deterministic kernels (exact resume checks) or the fastest ones."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def class_names(cfg: CfgNode) -> List[str]:
    """Names from DATA.LABEL_MAP (line i = class i), else "0", "1", ..."""
    k = cfg.MODEL.NUM_CLASSES
    if not cfg.DATA.LABEL_MAP:
        return [str(i) for i in range(k)]
    with path_manager.open(cfg.DATA.LABEL_MAP, "r") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != k:
        raise ValueError(f"DATA.LABEL_MAP = {cfg.DATA.LABEL_MAP!r} lists {len(names)} classes but "
                         f"MODEL.NUM_CLASSES = {k}")
    return names


def to_device(video: torch.Tensor, device: torch.device, channels_last: bool,
              mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Move a (N, 3, T, H, W) batch to ``device`` (channels_last_3d if asked).

    uint8 batches (DATA.EVAL_UINT8 test views) are normalised with ``mean``/``std`` there.
    """
    video = video.to(device, non_blocking=True)
    if video.dtype == torch.uint8:
        if mean is None or std is None:
            raise ValueError("a uint8 video batch needs DATA.MEAN and DATA.STD to be normalised")
        from gcvideo.data.transforms import normalize_views

        video = normalize_views(video, mean, std)  # float32 (N, 3, T, H, W)
    if channels_last:
        video = video.contiguous(memory_format=torch.channels_last_3d)
    return video


def model_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """channels_last_3d for every 5-D parameter/buffer (conv kernels); others are left as they are.

    ``model.to(memory_format=torch.channels_last_3d)`` refuses models with 4-D
    parameters (the GC block's LayerNorm), so convert tensor by tensor.
    """
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if p.dim() == 5:
                    p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    return model
