"""Which frames make a clip: training windows and evenly spread test clips.

All strides are measured at the target frame rate F (DATA.TARGET_FPS, 30 like
PySlowFast), so an 8x8 clip spans the same seconds on a 25 fps and a 30 fps video.
For a video of N decodable frames at f frames per second, a clip of T frames
(DATA.NUM_FRAMES) at sampling rate R (DATA.SAMPLING_RATE):

* step  s = R * f / F              source frames between two sampled frames
* window L = T * s                  source frames a clip covers
* last start M = max(0, floor(N - L))
* clip starting at frame a:  index_k = min(a + floor(k * s), N - 1), k = 0..T-1
  (a video shorter than the window repeats its last frame)
* training: a drawn uniformly from the integers 0..M
* testing, V clips: a_i = floor(i * M / (V - 1) + 1/2) for i = 0..V-1 (first clip at
  the start, last clip ending at the end); V = 1: a_0 = floor(M / 2 + 1/2) (centre).

``floor`` is taken with a 1e-6 tolerance so that 3 * (20/3) is 20, not 19.
An unknown frame rate (NaN) counts as F.
"""
from __future__ import annotations

import math
from typing import List

import numpy as np

__all__ = ["sample_step", "last_start", "clip_indices", "train_clip_indices", "view_clip_starts",
           "view_clip_indices"]

_EPS = 1e-6


def _floor(x: float) -> int:
    return int(math.floor(x + _EPS))


def sample_step(fps: float, sampling_rate: int, target_fps: float) -> float:
    """Source frames between two sampled frames: R * f / F (f unknown -> F)."""
    if fps is None or not math.isfinite(fps) or fps <= 0:
        fps = target_fps
    return sampling_rate * float(fps) / float(target_fps)


def last_start(num_video_frames: int, num_frames: int, step: float) -> int:
    """M = max(0, floor(N - T * s)): the last first-frame a whole window allows."""
    return max(0, _floor(num_video_frames - num_frames * step))


def clip_indices(start: int, num_frames: int, step: float, num_video_frames: int) -> List[int]:
    """min(start + floor(k * s), N - 1) for k = 0..T-1."""
    last = num_video_frames - 1
    return [min(start + _floor(k * step), last) for k in range(num_frames)]


def train_clip_indices(num_video_frames: int, fps: float, num_frames: int, sampling_rate: int,
                       target_fps: float, rng: np.random.Generator) -> List[int]:
    """A random training clip (start drawn from ``rng``)."""
    step = sample_step(fps, sampling_rate, target_fps)
    start = int(rng.integers(0, last_start(num_video_frames, num_frames, step) + 1))
    return clip_indices(start, num_frames, step, num_video_frames)


def view_clip_starts(num_video_frames: int, num_frames: int, step: float, num_clips: int) -> List[int]:
    """First frames of ``num_clips`` clips spread evenly from the start to the end."""
    m = last_start(num_video_frames, num_frames, step)
    if num_clips == 1:
        return [_floor(m / 2 + 0.5)]
    return [_floor(i * m / (num_clips - 1) + 0.5) for i in range(num_clips)]


def view_clip_indices(num_video_frames: int, fps: float, num_frames: int, sampling_rate: int,
                      target_fps: float, num_clips: int) -> List[List[int]]:
    """Frame indices of each test clip (clip-major list of lists)."""
    step = sample_step(fps, sampling_rate, target_fps)
    return [clip_indices(a, num_frames, step, num_video_frames)
            for a in view_clip_starts(num_video_frames, num_frames, step, num_clips)]
