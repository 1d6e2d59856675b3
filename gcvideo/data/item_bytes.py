"""Bytes of one dataset item and of one batch, from the sizes a config gives, before any video is read.

The estimates follow what ``dataset.py`` / ``transforms.py`` allocate for an item and what the
engine makes of a batch, at the largest frame shape the per-video bounds let through (short side
scaled to the crop or jitter scale, long side up to ``max_aspect`` times it; the decoded source
frames themselves are bounded per frame by DATA.MAX_FRAME_PIXELS). ``gcvideo.config`` refuses a
config whose estimate passes DATA.MAX_ITEM_BYTES or DATA.MAX_BATCH_BYTES, so that a test crop of
4000 pixels or 100000 views is one error line instead of the kernel's OOM killer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Tuple

__all__ = ["ByteEstimate", "eval_item_bytes", "train_item_bytes", "batch_bytes", "format_bytes", "over_bound"]


@dataclass
class ByteEstimate:
    """``parts``: (what, bytes) pairs that are alive together; ``total`` their sum."""
    parts: List[Tuple[str, int]] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(n for _, n in self.parts)

    def describe(self) -> str:
        return "; ".join(f"{what}: {format_bytes(n)}" for what, n in self.parts)


def format_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _frames_at(short: int, count: int, max_aspect: float) -> int:
    """uint8 bytes of ``count`` RGB frames with short side ``short`` and long side up to ``max_aspect`` x it."""
    return count * 3 * short * math.ceil(short * max_aspect)


def eval_item_bytes(num_frames: int, num_clips: int, num_crops: int, crop: int, max_aspect: float,
                    uint8: bool) -> ByteEstimate:
    """A validation/test item (``make_views``): every needed frame resized to short side ``crop``
    (at most ``num_clips x num_frames`` frames), the clip being cut (float32 unless ``uint8``) and
    the ``(V, 3, T, crop, crop)`` views, V = clips x crops."""
    size = 1 if uint8 else 4
    frames = num_clips * num_frames
    est = ByteEstimate([(f"{frames} frames resized to a {crop}-pixel short side (up to {max_aspect:g}:1)",
                         _frames_at(crop, frames, max_aspect))])
    if not uint8:
        est.parts.append(("one normalised float32 clip", 4 * _frames_at(crop, num_frames, max_aspect)))
    views = num_clips * num_crops
    est.parts.append((f"{views} views of 3x{num_frames}x{crop}x{crop} {'uint8' if uint8 else 'float32'}",
                      views * 3 * num_frames * crop * crop * size))
    return est


def train_item_bytes(num_frames: int, num_samples: int, max_scale: int, crop: int, max_aspect: float,
                     uint8: bool) -> ByteEstimate:
    """A training item (``VideoDataset._train_item``): the clip's frames at the largest jitter
    scale ``max_scale`` and the ``(K, 3, T, crop, crop)`` clips (float32 unless ``uint8``: each
    clip normalised, then stacked)."""
    size = 1 if uint8 else 4
    clips = num_samples * 3 * num_frames * crop * crop * size
    return ByteEstimate([
        (f"{num_frames} frames at a {max_scale}-pixel short side (up to {max_aspect:g}:1)",
         _frames_at(max_scale, num_frames, max_aspect)),
        (f"{num_samples} clip{'s' if num_samples > 1 else ''} of 3x{num_frames}x{crop}x{crop} "
         f"{'uint8' if uint8 else 'float32'}", clips if uint8 or num_samples == 1 else 2 * clips)])


def batch_bytes(videos: int, views: int, num_frames: int, crop: int, uint8: bool) -> ByteEstimate:
    """One batch of ``videos`` items of ``views`` clips each: the collated ``(videos x views, 3, T,
    crop, crop)`` tensor and the float32 copy the model gets (``DevicePrep``: normalised uint8, or a
    copy to the device)."""
    rows = videos * views
    clip = 3 * num_frames * crop * crop
    return ByteEstimate([(f"{rows} clips collated ({videos} videos x {views})", rows * clip * (1 if uint8 else 4)),
                         ("their float32 model input", rows * clip * 4)])


def over_bound(what: str, est: ByteEstimate, bound_key: str, bound: int, lower: str) -> str:
    """"" when ``est`` fits in ``bound`` (the config key ``bound_key``), else the one-line refusal naming
    ``what`` (e.g. "a test item"), the estimate and its parts, and the settings to ``lower``."""
    if est.total <= bound:
        return ""
    return (f"{what} would need up to {format_bytes(est.total)} ({est.describe()}), more than {bound_key} = "
            f"{bound} ({format_bytes(bound)}): lower {lower}, or raise {bound_key} where the machine has the memory")
