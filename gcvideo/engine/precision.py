"""Mixed precision: the autocast dtype of a TRAIN.MIXED_PRECISION setting and its context."""
from __future__ import annotations

import contextlib
import functools
import sys
import time
from typing import Callable, Optional

import torch

__all__ = ["autocast_dtype", "autocast", "resolve_precision", "slow_bf16_warning", "print_slow_bf16_warning"]

_BF16_UNITS = {"amx_bf16", "avx512_bf16"}  # CPU flags of bf16 matrix instructions


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


def _bf16_slowdown(device: torch.device, repeats: int = 3) -> float:
    """Time of a Conv3d forward + backward (128 channels, 3x1x1, 8x14x14) in bf16 autocast over its
    fp32 time (best of ``repeats``): > 1 where bf16 is slower."""
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

    return best(torch.bfloat16) / best(None)


@functools.lru_cache(maxsize=None)
def _bf16_measures_faster(device: torch.device) -> bool:
    """The timed Conv3d step (``_bf16_slowdown``) is >= 10% faster in bf16 autocast than in fp32."""
    return _bf16_slowdown(device) < 0.9


def slow_bf16_warning(mode: str, device: torch.device, cpu_flags: Optional[set] = None,
                      slowdown: Optional[Callable[[torch.device], float]] = None) -> str:
    """One warning line when TRAIN.MIXED_PRECISION is an explicit "bf16" on hardware where bf16 is
    emulated (a CPU without amx_bf16/avx512_bf16, a GPU without native bf16), with the timed
    Conv3d step's slowdown (``slowdown(device)``, default ``_bf16_slowdown``); "" elsewhere."""
    if mode != "bf16":
        return ""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return ""
        where = "this GPU has no native bf16"
    elif device.type == "cpu":
        flags = _cpu_flags() if cpu_flags is None else set(cpu_flags)
        if _BF16_UNITS & flags:
            return ""
        where = "this CPU has no bf16 matrix units (no amx_bf16/avx512_bf16 in /proc/cpuinfo), so bf16 is emulated"
    else:
        return ""
    ratio = (slowdown or _bf16_slowdown)(device)
    return (f"warning: TRAIN.MIXED_PRECISION = 'bf16' but {where}: a Conv3d step measured {ratio:.1f}x "
            "slower in bf16 than in fp32 here (Slow-R50 on an AVX2-only CPU: training 5x, the 30-view test "
            "25x slower); set TRAIN.MIXED_PRECISION auto (bf16 only where it is fast) or none")


def print_slow_bf16_warning(mode: str, device: torch.device) -> None:
    """``slow_bf16_warning`` on stderr, by the main process only (training and testing call it once)."""
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    warning = slow_bf16_warning(mode, device) if not dist or torch.distributed.get_rank() == 0 else ""
    if warning:
        print(warning, file=sys.stderr, flush=True)


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
    faster = bool(_BF16_UNITS & flags) and (bf16_faster or _bf16_measures_faster)(device)
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
