"""The one hook between a residual unit and the context block before its add."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ResidualContext", "CONTEXT_POSITIONS"]

# where a context block sits in a residual unit: after the branch, before the add (gc/snl/se), or after
# the unit's output ReLU (nl)
CONTEXT_POSITIONS = ("pre_add", "post_relu")


class ResidualContext(nn.Module):
    """A context block that can sit after a residual branch, before the add (the pre_add position).

    The backbone calls ``residual(y, shortcut)`` = relu(shortcut + self(y)) and nothing else of the
    block; a block may compute it in one go (``ContextBlock`` through its fused path).
    y, shortcut: (N, C, T, H, W).
    """

    def residual(self, y: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        return torch.relu(self(y) + shortcut)
