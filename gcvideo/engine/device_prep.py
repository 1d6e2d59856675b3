"""Device-side preprocessing: a batch of clips onto the device, uint8 normalised there.

``DevicePrep`` is the one object the loops (``train_one_epoch``, ``precise_bn``, ``evaluate``,
``run_test``) hand every batch to (timm's ``PrefetchLoader`` does this job there); ``build_device_prep``
reads its settings (TRAIN.CHANNELS_LAST, DATA.MEAN, DATA.STD) from the config once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from fvcore.common.config import CfgNode

from gcvideo.data.transforms import normalize_views

__all__ = ["DevicePrep", "build_device_prep"]


@dataclass(frozen=True)
class DevicePrep:
    """``prep(video)``: a (N, 3, T, H, W) batch on ``device`` (channels_last_3d if ``channels_last``).

    uint8 batches (DATA.TRAIN_UINT8 / DATA.EVAL_UINT8 items) are normalised there with ``mean``/``std``
    (``normalize_views``: ``(x/255 - mean)/std`` in float32, bit for bit the float32 items); float
    batches are moved as they are. A uint8 batch without ``mean``/``std`` is refused.
    """
    device: torch.device
    channels_last: bool = False
    mean: Optional[Tuple[float, ...]] = None
    std: Optional[Tuple[float, ...]] = None

    def __post_init__(self) -> None:
        # (tuples: a frozen, hashable object; the values are those given, so the same bits)
        object.__setattr__(self, "device", torch.device(self.device))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        video = video.to(self.device, non_blocking=True)
        if video.dtype == torch.uint8:
            if self.mean is None or self.std is None:
                raise ValueError("a uint8 video batch needs DATA.MEAN and DATA.STD to be normalised")
            video = normalize_views(video, self.mean, self.std)  # float32 (N, 3, T, H, W)
        if self.channels_last:
            video = video.contiguous(memory_format=torch.channels_last_3d)
        return video


def build_device_prep(cfg: CfgNode, device: torch.device) -> DevicePrep:
    """The run's ``DevicePrep``: TRAIN.CHANNELS_LAST, DATA.MEAN, DATA.STD on ``device``."""
    return DevicePrep(device, cfg.TRAIN.CHANNELS_LAST, tuple(cfg.DATA.MEAN), tuple(cfg.DATA.STD))
