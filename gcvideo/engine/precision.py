"""Mixed precision: the autocast dtype of a TRAIN.MIXED_PRECISION setting and its context."""
from __future__ import annotations

import contextlib
import functools
import time
from typing import Callable, Optional

import torch

__all__ = ["autocast_dtype", "autocast", "resolve_precision"]


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


def autocast_dtype(mixed_precision: str, device: torch.device) -> Optional[torch.dtype]:
    """``"none"`` | ``"bf16"`` | ``"fp16"`` | ``"auto"`` (see ``resolve_precision``) -> autocast dtype
    (None = full fp32); fp16 needs CUDA."""
    mixed_precision = resolve_precision(mixed_precision, device)
    if mixed_precision == "none":
        return None
    if mixed_precision == "fp16" and device.type != "cuda":
        raise RuntimeError("TRAIN.MIXED_PRECISION = 'fp16' needs CUDA; on the CPU use 'bf16' (or 'none')")
    return torch.bfloat16 if mixed_precision == "bf16" else torch.float16


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Autocast context for ``dtype`` (a no-op context for None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
