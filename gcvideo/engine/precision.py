"""Mixed precision: the autocast dtype of a TRAIN.MIXED_PRECISION setting and its context."""
from __future__ import annotations

import contextlib
from typing import Optional

import torch

__all__ = ["autocast_dtype", "autocast"]


def autocast_dtype(mixed_precision: str, device: torch.device) -> Optional[torch.dtype]:
    """``"none"`` | ``"bf16"`` | ``"fp16"`` -> autocast dtype (None = full fp32); fp16 needs CUDA."""
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
