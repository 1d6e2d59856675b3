"""Training augmentation after crop and flip, as composable clip transforms (config section ``AUG``).

A clip transform is a callable ``transform(clip, rng) -> clip``: uint8 ``(T, 3, H, W)`` in and out,
its random draws from ``rng`` (a ``numpy.random.Generator``, the dataset's per-item stream), so that
the same (seed, epoch, index) gives the same clip in any process (exact resume). Every op draws its
parameters once per clip and applies them to every frame (a per-frame draw would make the clip
flicker). Labels are untouched.

* ``ClipRandAugment``: torchvision's ``transforms.v2.RandAugment`` on the clip as a batch of T
  frames (one draw of ops, magnitudes and signs for all of them), with torch's RNG seeded from
  ``rng`` inside ``torch.random.fork_rng`` (the global torch RNG is left as it was). Magnitude on
  timm's / PySlowFast's 0..10 scale ("rand-m9-n2": 11 magnitude bins); pixels that geometric ops
  shift in are the mean colour.
* ``ClipRandomErasing``: timm's ``RandomErasing`` in clip ("cube") mode: with probability ``prob``
  one box of area U(0.02, 1/3) x H x W and aspect ratio log-uniform in (0.3, 1/0.3), the same box on
  every frame, filled with the mean colour (round(255 * DATA.MEAN), about 0 after normalisation).
* ``ClipCompose``: transforms in order, one ``rng``.

``build_train_transform(cfg)`` builds the training transform from the config (None when every
augmentation is off: items are then bit for bit the ones without this module). To add an
augmentation: a class here, its line in ``build_train_transform``, its keys in gcvideo/config.py,
its test in tests/data/test_augment.py.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

__all__ = ["ClipCompose", "ClipRandAugment", "ClipRandomErasing", "build_train_transform", "mean_fill",
           "MAX_MAGNITUDE", "ERASE_SCALE", "ERASE_RATIO", "ERASE_ATTEMPTS"]

# RandAugment magnitudes run 0..MAX_MAGNITUDE (timm's _LEVEL_DENOM, PySlowFast's "m9" = 9 of 10)
MAX_MAGNITUDE = 10
# random erasing (timm's defaults): box area as a share of the frame, aspect ratio h / w, tries
ERASE_SCALE = (0.02, 1.0 / 3.0)
ERASE_RATIO = (0.3, 1.0 / 0.3)
ERASE_ATTEMPTS = 10

ClipTransform = Callable[[torch.Tensor, np.random.Generator], torch.Tensor]


def mean_fill(mean: Sequence[float]) -> Tuple[int, ...]:
    """The uint8 colour of DATA.MEAN (RGB in [0, 1]): round(255 * m) per channel."""
    return tuple(int(min(255, max(0, round(255.0 * float(m))))) for m in mean)


class ClipCompose:
    """Clip transforms applied in order, all drawing from the one ``rng``."""

    def __init__(self, transforms: Sequence[ClipTransform]):
        self.transforms = list(transforms)

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        for transform in self.transforms:
            clip = transform(clip, rng)  # (T, 3, H, W) uint8
        return clip

    def __repr__(self) -> str:
        return f"ClipCompose({self.transforms!r})"


class ClipRandAugment:
    """RandAugment with one draw per clip: ``num_ops`` ops at ``magnitude`` (0..10) on every frame."""

    def __init__(self, num_ops: int, magnitude: int, fill: Sequence[int] = (0, 0, 0)):
        from torchvision.transforms import v2

        if not 0 <= int(magnitude) <= MAX_MAGNITUDE:
            raise ValueError(f"magnitude = {magnitude}; expected 0..{MAX_MAGNITUDE}")
        self.num_ops, self.magnitude, self.fill = int(num_ops), int(magnitude), [int(v) for v in fill]
        self.op = v2.RandAugment(num_ops=self.num_ops, magnitude=self.magnitude, num_magnitude_bins=MAX_MAGNITUDE + 1,
                                 interpolation=v2.InterpolationMode.BILINEAR, fill=self.fill)

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        seed = int(rng.integers(2 ** 63))
        return self.apply(clip, seed)

    def apply(self, clip: torch.Tensor, seed: int) -> torch.Tensor:
        """uint8 ``(T, 3, H, W)`` -> the same, the ops torch's RNG seeded with ``seed`` draws (the CPU
        RNG only, restored afterwards: dropout and the training loop's draws are unchanged)."""
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            return self.op(clip)  # one draw for the T frames (a batch to torchvision)

    def __repr__(self) -> str:
        return f"ClipRandAugment(num_ops={self.num_ops}, magnitude={self.magnitude}, fill={self.fill})"


class ClipRandomErasing:
    """With probability ``prob``, one box of the clip erased on every frame with the colour ``fill``."""

    def __init__(self, prob: float, fill: Sequence[int] = (0, 0, 0)):
        if not 0.0 <= float(prob) <= 1.0:
            raise ValueError(f"prob = {prob}; expected a probability in [0, 1]")
        self.prob, self.fill = float(prob), [int(v) for v in fill]

    def draw_box(self, height: int, width: int, rng: np.random.Generator) -> Optional[Tuple[int, int, int, int]]:
        """(top, left, h, w) of the box, or None (not erased). Draws, in order: erase or not; per try
        area share, log aspect ratio; then top, left."""
        if not rng.random() < self.prob:
            return None
        log_ratio = (math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
        for _ in range(ERASE_ATTEMPTS):
            area = rng.uniform(*ERASE_SCALE) * height * width
            aspect = math.exp(rng.uniform(*log_ratio))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < h < height and 0 < w < width:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        return None  # no box fits (tiny frames): the clip as it is

    def __call__(self, clip: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        box = self.draw_box(clip.shape[-2], clip.shape[-1], rng)
        if box is None:
            return clip
        top, left, h, w = box
        out = clip.clone()  # the clip may be a view of frames other clips are cut from
        fill = torch.tensor(self.fill, dtype=clip.dtype, device=clip.device).view(3, 1, 1)
        out[..., top:top + h, left:left + w] = fill  # (T, 3, h, w): the same box on every frame
        return out

    def __repr__(self) -> str:
        return f"ClipRandomErasing(prob={self.prob}, fill={self.fill})"


def build_train_transform(cfg) -> Optional[ClipCompose]:
    """The training clip transform of ``cfg.AUG`` (applied after crop and flip), None when all are off."""
    a, fill = cfg.AUG, mean_fill(cfg.DATA.MEAN)
    transforms = []
    if a.RAND_AUGMENT:
        transforms.append(ClipRandAugment(a.RAND_AUGMENT_N, a.RAND_AUGMENT_M, fill))
    if a.RE_PROB > 0:
        transforms.append(ClipRandomErasing(a.RE_PROB, fill))
    return ClipCompose(transforms) if transforms else None
