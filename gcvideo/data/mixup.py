"""Mixup and CutMix of a batch of training clips (N, C, T, H, W), on the device, with soft targets.

PySlowFast's ``MIXUP.*`` semantics (after timm): row i of the batch is mixed with row N-1-i (the batch
flipped); one draw per batch and process:

- with probability ``prob`` the batch is mixed at all (else lam = 1: clips as they are);
- mixup (``mixup_alpha`` > 0): lam ~ Beta(a, a), clips ``lam * x + (1 - lam) * x.flip(0)``;
- CutMix (``cutmix_alpha`` > 0; with both on, chosen with ``switch_prob``): lam ~ Beta(a, a), a box of
  side ``int(side * sqrt(1 - lam))`` around a uniform centre, clipped to the frame, is cut from the
  partner into the same place of every frame; lam becomes the area fraction left outside the box;
- targets (N, K): ``lam * q(y) + (1 - lam) * q(y.flip(0))``, q the one-hot smoothed by
  ``label_smoothing`` (gcvideo.layers.losses.smooth_one_hot); each row sums to 1.

The draws come from a generator seeded by (seed, rank, epoch, iteration), not from a stream that runs
through the run: a resumed run draws for each step what the uninterrupted run drew, and nothing has
to be saved in checkpoints beyond the position they already hold.

Pairs of DATA.PAIR_REVERSED (rows 2i and 2i+1 a clip and its time reversal, N even) stay pairs: row 2i
is mixed with the odd row N-1-2i and row 2i+1 with its reversal N-2-2i, with the same lam and box, so
mixed row 2i+1 is still mixed row 2i reversed in time, and its target the reverse-mapped one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import torch

from gcvideo.layers.losses import smooth_one_hot

__all__ = ["ClipMixup", "MixDraw", "build_mixup", "mix_batch"]

Box = Tuple[int, int, int, int]  # (y0, y1, x0, x1): rows y0..y1-1, columns x0..x1-1


@dataclass(frozen=True)
class MixDraw:
    """One batch's draw: ``lam`` the weight of each clip itself (1.0 = not mixed); ``box`` the CutMix
    box (None = mixup), with lam = 1 - its area fraction."""
    lam: float = 1.0
    box: Optional[Box] = None

    @classmethod
    def cutmix(cls, box: Box, height: int, width: int) -> "MixDraw":
        """The draw of ``box`` in frames of ``height`` x ``width``: lam is the share of the frame outside it."""
        y0, y1, x0, x1 = box
        return cls(lam=1.0 - (y1 - y0) * (x1 - x0) / float(height * width), box=box)


def mix_batch(x: torch.Tensor, labels: torch.Tensor, draw: MixDraw, num_classes: int,
              smoothing: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Clips (N, C, T, H, W) and class indices (N,) -> mixed clips (a new tensor; ``x`` itself when lam
    is 1) and targets (N, K)."""
    q = smooth_one_hot(labels, num_classes, smoothing)  # (N, K)
    targets = q * draw.lam + q.flip(0) * (1.0 - draw.lam)
    if draw.lam == 1.0:
        return x, targets
    if draw.box is None:
        return x * draw.lam + x.flip(0) * (1.0 - draw.lam), targets
    y0, y1, x0, x1 = draw.box
    out = x.clone()
    out[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]  # the same box in every frame (and channel)
    return out, targets


class ClipMixup:
    """The training loop's batch transform: ``mixup(x, labels, epoch=, it=)`` -> (clips, targets)."""

    def __init__(self, num_classes: int, *, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 prob: float = 1.0, switch_prob: float = 0.5, label_smoothing: float = 0.1, seed: int = 0,
                 rank: int = 0) -> None:
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError("mixup_alpha or cutmix_alpha must be > 0")
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        self.mixup_alpha, self.cutmix_alpha, self.prob, self.switch_prob = mixup_alpha, cutmix_alpha, prob, switch_prob
        self.seed, self.rank = seed, rank

    def draw(self, height: int, width: int, epoch: int, it: int) -> MixDraw:
        """The draw of iteration ``it`` of ``epoch`` (0-based) on this process, for frames ``height`` x ``width``."""
        rng = np.random.default_rng([self.seed % 2 ** 64, self.rank, epoch, it])
        if rng.random() >= self.prob:
            return MixDraw()
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(rng.beta(alpha, alpha))
        if not cutmix:
            return MixDraw(lam=lam)
        ratio = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * ratio), int(width * ratio)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        box = (min(max(cy - cut_h // 2, 0), height), min(max(cy + cut_h // 2, 0), height),
               min(max(cx - cut_w // 2, 0), width), min(max(cx + cut_w // 2, 0), width))
        return MixDraw.cutmix(box, height, width)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor, *, epoch: int, it: int) -> Tuple[torch.Tensor, torch.Tensor]:
        draw = self.draw(x.shape[-2], x.shape[-1], epoch, it)
        return mix_batch(x, labels, draw, self.num_classes, self.label_smoothing)


def build_mixup(cfg, rank: int = 0) -> Optional[ClipMixup]:
    """The MIXUP.* batch transform of process ``rank`` (None with MIXUP.ENABLE off)."""
    mx = cfg.MIXUP
    if not mx.ENABLE:
        return None
    return ClipMixup(cfg.MODEL.NUM_CLASSES, mixup_alpha=mx.ALPHA, cutmix_alpha=mx.CUTMIX_ALPHA, prob=mx.PROB,
                     switch_prob=mx.SWITCH_PROB, label_smoothing=mx.LABEL_SMOOTHING, seed=cfg.SEED, rank=rank)
