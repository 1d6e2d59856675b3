"""Batches onto the device and the model into channels_last_3d."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from gcvideo.data.transforms import normalize_views

__all__ = ["to_device", "model_channels_last"]


def to_device(video: torch.Tensor, device: torch.device, channels_last: bool,
              mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Move a (N, 3, T, H, W) batch to ``device`` (channels_last_3d if asked).

    uint8 batches (DATA.EVAL_UINT8 test views) are normalised with ``mean``/``std`` there.
    """
    video = video.to(device, non_blocking=True)
    if video.dtype == torch.uint8:
        if mean is None or std is None:
            raise ValueError("a uint8 video batch needs DATA.MEAN and DATA.STD to be normalised")
        video = normalize_views(video, mean, std)  # float32 (N, 3, T, H, W)
    if channels_last:
        video = video.contiguous(memory_format=torch.channels_last_3d)
    return video


def model_channels_last(model: torch.nn.Module) -> torch.nn.Module:
    """channels_last_3d for every 5-D parameter (conv kernels); others are left as they are.

    ``model.to(memory_format=torch.channels_last_3d)`` refuses models with 4-D
    parameters (the GC block's LayerNorm), so convert tensor by tensor.
    """
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if p.dim() == 5:
                    p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    return model
