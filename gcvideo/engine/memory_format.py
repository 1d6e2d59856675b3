"""The model into channels_last_3d (batches: ``device_prep.DevicePrep``)."""
from __future__ import annotations

import torch

__all__ = ["model_channels_last"]


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
