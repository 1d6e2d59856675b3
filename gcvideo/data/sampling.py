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

The peers' test clips (TEST.VIEW_PROTOCOL, ``protocol_clip_indices``), as absolute frame
indices (frame i = the i-th smallest timestamp), computed as each peer's own code does
(docs/data.md#the-peers-test-views):

* ``pyslowfast`` (slowfast/datasets/decoder.py, PyAV path): clip i of V decodes the frames whose
  timestamps lie in [int(a * d / n), int((a + W - 1) * d / n)] plus the next one, with
  W = max(1, ceil(R * (T - 1) * f / F)), a = max(n - W, 0) * i / V, n and d the header's frame
  count and duration; then frames int(linspace(0, L - 1, T)) of that window, L = max(1, R * T * f / F)
  (clamped to the window). Without a header duration: the same on all N frames with L for W.
* ``pytorchvideo`` (ConstantClipsPerVideoSampler + EncodedVideoPyAV + UniformTemporalSubsample):
  clip i covers [s_i, s_i + c) seconds, s_i = max(D - c, 0) * i / V, D = the longest stream
  duration, c = T * R / F rounded to 0.01 s (2.13 s for 8x8, as pytorchvideo_trainer's Kinetics
  config); the frames with timestamps in it, then int(linspace(0, k - 1, T)) of those k.
* ``mmaction2`` (SampleFrames, test_mode): offsets round(i * max(N - (T - 1) R - 1, 0) / (V - 1))
  (V = 1: the half of it, floored), frames offset + k R modulo N; no frame-rate conversion.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import List

import numpy as np
import torch

__all__ = ["ClipSampling", "sample_step", "last_start", "clip_indices", "train_clip_indices", "view_clip_starts",
           "view_clip_indices", "VIEW_PROTOCOLS", "protocol_clip_indices", "pyslowfast_clip_indices",
           "pytorchvideo_clip_indices", "pytorchvideo_clip_duration", "mmaction2_clip_indices"]

# TEST.VIEW_PROTOCOL: whose test views (frame indices, resize, crops) a test reproduces.
VIEW_PROTOCOLS = ("gcvideo", "pyslowfast", "pytorchvideo", "mmaction2")

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


@dataclass(frozen=True)
class ClipSampling:
    """Which frames make a clip (DATA.NUM_FRAMES, DATA.SAMPLING_RATE, DATA.TARGET_FPS): ``num_frames``
    frames ``sampling_rate`` apart at ``target_fps`` frames per second (module docstring)."""
    num_frames: int = 8
    sampling_rate: int = 8
    target_fps: float = 30.0

    def __post_init__(self):
        for name, kind in (("num_frames", int), ("sampling_rate", int), ("target_fps", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))

    def train_indices(self, reader, rng: np.random.Generator) -> List[int]:
        """A random training clip of the opened video ``reader`` (its start drawn from ``rng``)."""
        return train_clip_indices(reader.num_frames, reader.fps, self.num_frames, self.sampling_rate,
                                  self.target_fps, rng)


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


def _linspace_positions(start: float, end: float, num: int, length: int) -> List[int]:
    """int(linspace(start, end, num)) clamped to 0..length-1, in float32 as the peers' torch code."""
    index = torch.linspace(float(start), float(end), num).clamp(0, length - 1).long()
    return [int(i) for i in index]


def _pyslowfast_start_end(video_size: float, clip_size: float, clip_idx: int, num_clips: int):
    """PySlowFast's ``get_start_end_idx`` for test clip ``clip_idx`` (no offset sampling)."""
    start = max(video_size - clip_size, 0) * clip_idx / num_clips
    return start, start + clip_size - 1


def pyslowfast_clip_indices(info, num_video_frames: int, num_frames: int, sampling_rate: int,
                            target_fps: float, num_clips: int) -> List[List[int]]:
    """PySlowFast's test clips (PyAV path) from the header in ``info`` (a ``StreamInfo``)."""
    if info.average_rate is None:
        raise ValueError("pyslowfast: the video stream has no average frame rate")
    fps = float(info.average_rate)
    size = max(1.0, sampling_rate * num_frames / target_fps * fps)  # frames a clip spans
    if info.duration is None:  # no header duration: PySlowFast decodes every frame
        return [_linspace_positions(*_pyslowfast_start_end(num_video_frames, size, i, num_clips), num_frames,
                                    num_video_frames) for i in range(num_clips)]
    if info.header_frames <= 0:
        raise ValueError("pyslowfast: the container stores no frame count (PySlowFast divides by it)")
    if info.frame_pts is None:
        raise ValueError("pyslowfast: the frames' timestamps are not known without decoding (a container "
                         "without a packet index, e.g. AVI); PySlowFast selects frames by timestamp")
    pts = info.frame_pts[:num_video_frames]
    window = max(1.0, float(math.ceil(sampling_rate * (num_frames - 1) / target_fps * fps)))
    ticks = info.duration / info.header_frames  # time_base units per frame
    clips = []
    for i in range(num_clips):
        start, end = _pyslowfast_start_end(info.header_frames, window, i, num_clips)
        lo = bisect.bisect_left(pts, int(start * ticks))
        # frames up to the end timestamp and the first one after it (its decode loop keeps that one)
        hi = min(bisect.bisect_right(pts, int(end * ticks)) + 1, len(pts))
        if hi <= lo:
            raise ValueError(f"pyslowfast: clip {i} has no frame in its decoded window")
        clips.append([lo + k for k in _linspace_positions(0, size - 1, num_frames, hi - lo)])
    return clips


def pytorchvideo_clip_duration(num_frames: int, sampling_rate: int, target_fps: float) -> Fraction:
    """T * R / F seconds rounded to 0.01 s, as pytorchvideo_trainer writes it (2.13 for 8x8 at 30)."""
    return Fraction(round(num_frames * sampling_rate / target_fps, 2))


def _seconds(ticks, time_base, start) -> Fraction:
    """pytorchvideo's ``pts_to_secs``: int(ticks - start) * time_base (start None -> 0)."""
    return int(ticks - (start or 0)) * time_base


def pytorchvideo_clip_indices(info, num_video_frames: int, num_frames: int, clip_duration: Fraction,
                              num_clips: int) -> List[List[int]]:
    """pytorchvideo's test clips: ConstantClipsPerVideoSampler over EncodedVideoPyAV (audio decoded)."""
    if info.frame_pts is None:
        raise ValueError("pytorchvideo: the frames' timestamps are not known without decoding (a container "
                         "without a packet index, e.g. AVI); pytorchvideo selects frames by timestamp")
    pts = info.frame_pts[:num_video_frames]
    tb, start_pts = info.time_base, info.start_time or 0
    durations = [_seconds(d, b, s) for d, b, s in ((info.duration, tb, info.start_time),
                 (info.audio_duration, info.audio_time_base, info.audio_start_time)) if d is not None]
    duration = max(durations) if durations else _seconds(pts[-1], tb, info.start_time)
    step = Fraction(max(duration - clip_duration, 0)) / num_clips
    clips = []
    for i in range(num_clips):
        begin = step * i
        lo = bisect.bisect_left(pts, math.ceil(begin / tb) + start_pts)
        hi = bisect.bisect_left(pts, math.ceil((begin + clip_duration) / tb) + start_pts)
        if hi <= lo:
            raise ValueError(f"pytorchvideo: clip {i} ({float(begin):.3f} s) holds no frame")
        clips.append([lo + k for k in _linspace_positions(0, hi - lo - 1, num_frames, hi - lo)])
    return clips


def mmaction2_clip_indices(num_video_frames: int, num_frames: int, sampling_rate: int,
                           num_clips: int) -> List[List[int]]:
    """mmaction2's ``SampleFrames(clip_len=T, frame_interval=R, num_clips=V, test_mode=True)``."""
    max_offset = max(num_video_frames - ((num_frames - 1) * sampling_rate + 1), 0)
    if num_clips > 1:
        offsets = np.round(np.arange(num_clips) * (max_offset / float(num_clips - 1)))
    else:
        offsets = np.array([max_offset // 2])
    inds = offsets[:, None] + np.arange(num_frames)[None, :] * sampling_rate  # (V, T)
    return np.mod(inds, num_video_frames).astype(np.int64).tolist()  # out_of_bound_opt 'loop'


def protocol_clip_indices(protocol: str, info, num_video_frames: int, fps: float, num_frames: int,
                          sampling_rate: int, target_fps: float, num_clips: int) -> List[List[int]]:
    """Frame indices of each test clip as ``protocol`` (one of VIEW_PROTOCOLS) computes them;
    ``info``: the video's ``StreamInfo`` (unused by gcvideo and mmaction2). ValueError where the
    peer's code could not sample the video."""
    if protocol == "gcvideo":
        return view_clip_indices(num_video_frames, fps, num_frames, sampling_rate, target_fps, num_clips)
    if protocol == "pyslowfast":
        return pyslowfast_clip_indices(info, num_video_frames, num_frames, sampling_rate, target_fps, num_clips)
    if protocol == "pytorchvideo":
        return pytorchvideo_clip_indices(info, num_video_frames, num_frames,
                                         pytorchvideo_clip_duration(num_frames, sampling_rate, target_fps), num_clips)
    if protocol == "mmaction2":
        return mmaction2_clip_indices(num_video_frames, num_frames, sampling_rate, num_clips)
    raise ValueError(f"view protocol {protocol!r} is not one of {VIEW_PROTOCOLS}")
