"""Training losses: the criterion the training loop calls as ``criterion(logits, target)``.

``LOSSES`` is the one registry of ``MODEL.LOSS`` values (the config check imports it); to add a
loss, add its class here (``soft_targets``: whether it takes distributions (N, K), as Mixup/CutMix
targets need) and its name to ``LOSSES``, with a float64 test in tests/layers/test_losses.py.

- ``cross_entropy``: ``F.cross_entropy`` on class indices (N,), with ``TRAIN.LABEL_SMOOTHING`` e as
  torch computes it; e = 0 is the exact call the loop made before (bit for bit).
- ``soft_cross_entropy``: -sum_k q_k log softmax(z)_k, averaged over the batch, for targets q that
  are distributions (N, K): Mixup/CutMix targets (gcvideo/data/mixup.py), or class indices turned into
  the smoothed one-hot q = (1 - e) one_hot + e / K.

(Lives in ``layers``, below the config, so that ``gcvideo/config.py`` can import ``LOSSES``.)
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LOSSES", "CrossEntropy", "SoftTargetCrossEntropy", "smooth_one_hot", "build_criterion"]


def smooth_one_hot(labels: torch.Tensor, num_classes: int, smoothing: float = 0.0,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Class indices (N,) -> targets (N, K): 1 - e + e/K at the label, e/K elsewhere (rows sum to 1)."""
    off = smoothing / num_classes
    out = torch.full((labels.shape[0], num_classes), off, dtype=dtype, device=labels.device)
    return out.scatter_(1, labels.long().view(-1, 1), 1.0 - smoothing + off)


class CrossEntropy(nn.Module):
    """``F.cross_entropy(logits, labels, label_smoothing=e)``: logits (N, K), labels (N,) int64."""

    soft_targets = False  # class indices only

    def __init__(self, num_classes: int, smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.smoothing = num_classes, smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target, label_smoothing=self.smoothing)


class SoftTargetCrossEntropy(nn.Module):
    """Mean over the batch of -sum_k q_k log softmax(z)_k; ``target`` is q (N, K), or class indices
    (N,) made into smoothed one-hot targets with ``smoothing``."""

    soft_targets = True  # MIXUP.ENABLE's mixed targets

    def __init__(self, num_classes: int, smoothing: float = 0.0) -> None:
        super().__init__()
        self.num_classes, self.smoothing = num_classes, smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.dim() == 1:
            target = smooth_one_hot(target, self.num_classes, self.smoothing, logits.dtype)
        return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


# MODEL.LOSS -> the class; each takes (num_classes, smoothing) and says whether it takes soft_targets
LOSSES = {"cross_entropy": CrossEntropy, "soft_cross_entropy": SoftTargetCrossEntropy}


def build_criterion(cfg) -> nn.Module:
    """The training criterion of ``cfg``: ``MODEL.LOSS`` with ``TRAIN.LABEL_SMOOTHING``."""
    return LOSSES[cfg.MODEL.LOSS](cfg.MODEL.NUM_CLASSES, cfg.TRAIN.LABEL_SMOOTHING)
