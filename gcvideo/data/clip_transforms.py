"""What a dataset does with decoded frames: ``TrainClips`` (training) and ``EvalViews`` (val/test).

``VideoDataset`` decodes, then hands the frames to its transform object (pytorchvideo's
``LabeledVideoDataset(..., transform=)``); ``build_train_clips(cfg)`` and ``build_eval_views(cfg, ...)``
read the config once into them.

* ``TrainClips``: K = ``num_samples`` clips of one decoded window. Per clip, draws from the item's
  stream 0 in this order: short-side scale (drawn before the read when K = 1, so that the decoder
  converts the frames straight to it: ``frame_size``), crop top, crop left, flip, reversal; then
  ``augment(clip, aug_rng)`` (gcvideo.data.augment, its own stream 2, so crops and flips stay as
  without it). A flip or a reversal maps the label through its pairs. ``pair_reversed``: clip 2i+1 is
  clip 2i reversed in time (no draws). Out: uint8 ``(K, 3, T, C, C)`` (``uint8``: normalised on the
  device) or normalised float32; ``(3, T, C, C)`` and an int label with K = 1.
* ``EvalViews``: the views of ``protocol`` (gcvideo | pyslowfast | pytorchvideo | mmaction2: frame
  indices, resize, crops; sampling.py and transforms.py), ``num_clips`` x ``num_crops`` of ``crop``,
  clip-major; uint8 (``eval_uint8``, gcvideo and mmaction2 only) or normalised float32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from gcvideo.data.augment import ClipTransform, build_train_transform
from gcvideo.data.sampling import VIEW_PROTOCOLS, ClipSampling, protocol_clip_indices
from gcvideo.data.transforms import (PeerViewSpec, draw_scale, make_peer_views, make_views, normalize,
                                     short_side_size, to_tchw, train_clip)

__all__ = ["TrainClips", "EvalViews", "FrameSize", "build_train_clips", "build_eval_views"]


def _pair_map(pairs: Sequence[Sequence[int]], key: str) -> Dict[int, int]:
    out: Dict[int, int] = {}
    for p in pairs:
        a, b = int(p[0]), int(p[1])
        if a in out and out[a] != b:
            raise ValueError(f"{key}: class {a} is mapped twice ({out[a]} and {b})")
        out[a] = b
    return out


class FrameSize:
    """The decoder's frame size for one training item, ``size(height, width)``: with one clip per
    video the clip's scale is drawn from ``rng`` here, before the read, and the frames come converted
    straight to it; with K clips (or an unknown size) None: full-size frames. Remembers the source
    size and the scale drawn (the last call's, when the decoder samples again)."""

    def __init__(self, jitter_scales: Sequence[int], num_samples: int, rng: np.random.Generator):
        self.jitter_scales, self.num_samples, self.rng = jitter_scales, num_samples, rng
        self.source: Optional[Tuple[int, int]] = None
        self.scale: Optional[int] = None

    def __call__(self, height: int, width: int) -> Optional[Tuple[int, int]]:
        self.source = (height, width)
        if self.num_samples > 1 or height <= 0 or width <= 0:
            return None
        self.scale = draw_scale(self.rng, self.jitter_scales)
        return short_side_size(height, width, self.scale)


@dataclass
class TrainClips:
    """Training clips from decoded frames (module docstring): scale jitter, crop, flip, reversal, the
    ``augment`` clip transform, K clips per video, uint8 or normalised output."""
    jitter_scales: Sequence[int] = (256, 320)
    crop: int = 224
    random_flip: bool = True
    flip_pairs: Sequence[Sequence[int]] = ()
    reverse_prob: float = 0.0
    reverse_pairs: Sequence[Sequence[int]] = ()
    num_samples: int = 1  # clips per training item, from one decode
    pair_reversed: bool = False  # clip 2i+1 = clip 2i reversed in time
    augment: Optional[ClipTransform] = None  # uint8 (T, 3, C, C) in and out, drawing from stream 2
    uint8: bool = False  # uint8 clips, normalised later (normalize_views)
    mean: Sequence[float] = (0.45, 0.45, 0.45)
    std: Sequence[float] = (0.225, 0.225, 0.225)
    flip_map: Dict[int, int] = field(init=False, repr=False)
    reverse_map: Dict[int, int] = field(init=False, repr=False)
    train: ClassVar[bool] = True

    def __post_init__(self):
        self.jitter_scales = [int(x) for x in self.jitter_scales]
        self.crop, self.num_samples = int(self.crop), int(self.num_samples)
        self.random_flip, self.pair_reversed, self.uint8 = bool(self.random_flip), bool(self.pair_reversed), \
            bool(self.uint8)
        self.reverse_prob = float(self.reverse_prob)
        self.mean, self.std = [float(x) for x in self.mean], [float(x) for x in self.std]
        self.flip_map = _pair_map(self.flip_pairs, "DATA.FLIP_LABEL_PAIRS")
        self.reverse_map = _pair_map(self.reverse_pairs, "DATA.REVERSE_LABEL_PAIRS")
        if self.num_samples < 1:
            raise ValueError(f"num_samples = {self.num_samples}; expected a positive number of clips per video")
        if self.pair_reversed and self.num_samples % 2:
            raise ValueError(f"pair_reversed with num_samples = {self.num_samples}; expected an even number of clips")

    def video_shape(self, num_frames: int) -> tuple:
        """Shape of an item's ``video``."""
        shape = (3, num_frames, self.crop, self.crop)
        return shape if self.num_samples == 1 else (self.num_samples,) + shape

    def frame_size(self, rng: np.random.Generator) -> FrameSize:
        """The decoder's ``size(height, width)`` for one item (draws the scale of one clip per video)."""
        return FrameSize(self.jitter_scales, self.num_samples, rng)

    def __call__(self, frames, label: int, rng: np.random.Generator, aug_rng: Optional[np.random.Generator],
                 size: FrameSize) -> Tuple[torch.Tensor, object]:
        """uint8 frames ``(T, h, w, 3)`` decoded at ``size`` -> (video, label) of the item."""
        x = to_tchw(frames)  # (T, 3, h, w) uint8
        hw = size.source if size.scale is not None else tuple(x.shape[-2:])  # the frame size crops are drawn for
        c, t, kk = self.crop, x.shape[0], self.num_samples
        # the clips, written straight into the item (uint8) or normalised one by one (float32)
        # (on the frames' device: DATA.DECODE_DEVICE cuda keeps the item on the GPU)
        video = torch.empty((kk, 3, t, c, c), dtype=torch.uint8, device=x.device) if self.uint8 else None
        clips: List[torch.Tensor] = []
        labels: List[int] = []
        for k in range(kk):
            if self.pair_reversed and k % 2:  # the previous clip reversed in time: no draws
                clip, lab = clip.flip(0), self.reverse_map.get(lab, lab)
            else:
                clip, lab = self._clip(x, hw, size.scale, label, rng, aug_rng)  # (T, 3, C, C)
            if video is not None:
                video[k].copy_(clip.permute(1, 0, 2, 3))  # uint8 (3, T, C, C), normalised on the device
            else:
                clips.append(normalize(clip, self.mean, self.std))  # float32 (3, T, C, C)
            labels.append(lab)
        if video is None:
            video = torch.stack(clips) if kk > 1 else clips[0][None]  # (K, 3, T, C, C)
        if kk == 1:
            return video[0], labels[0]  # (3, T, C, C), int
        return video, torch.tensor(labels, dtype=torch.int64)  # (K, 3, T, C, C), (K,)

    def _clip(self, x: torch.Tensor, hw: Tuple[int, int], scale: Optional[int], label: int,
              rng: np.random.Generator, aug_rng: Optional[np.random.Generator]) -> Tuple[torch.Tensor, int]:
        """One clip of ``x`` (T, 3, h, w) and its label. Draws, in order: scale (unless drawn before the
        read), crop top, crop left, flip, reversal; then the augmentation's from ``aug_rng``."""
        scale = scale if scale is not None else draw_scale(rng, self.jitter_scales)
        clip, flipped = train_clip(x, hw, scale, self.crop, self.random_flip, rng)  # (T, 3, C, C)
        label = self.flip_map.get(label, label) if flipped else label
        if self.reverse_prob > 0 and rng.random() < self.reverse_prob:
            clip = clip.flip(0)  # time reversal
            label = self.reverse_map.get(label, label)
        if self.augment is not None:  # its own stream: crops and flips stay as without it
            clip = self.augment(clip, aug_rng)  # (T, 3, C, C) uint8
        return clip, label


@dataclass
class EvalViews:
    """The test views of decoded frames as ``protocol`` computes them (module docstring)."""
    protocol: str = "gcvideo"
    crop: int = 256
    num_clips: int = 10
    num_crops: int = 3
    eval_uint8: bool = False  # uint8 views, normalised later (normalize_views); gcvideo and mmaction2 only
    mean: Sequence[float] = (0.45, 0.45, 0.45)
    std: Sequence[float] = (0.225, 0.225, 0.225)
    single_view_4d: bool = False  # one view: (3, T, S, S), not (1, 3, T, S, S)
    one_crop_scale: int = 256  # the short side PySlowFast's one-crop test resizes to (DATA.TRAIN_JITTER_SCALES[0])
    train: ClassVar[bool] = False

    def __post_init__(self):
        if self.protocol not in VIEW_PROTOCOLS:
            raise ValueError(f"view_protocol = {self.protocol!r}; expected one of {VIEW_PROTOCOLS}")
        self.crop, self.num_clips, self.num_crops = int(self.crop), int(self.num_clips), int(self.num_crops)
        self.one_crop_scale, self.single_view_4d = int(self.one_crop_scale), bool(self.single_view_4d)
        self.mean, self.std = [float(x) for x in self.mean], [float(x) for x in self.std]
        # pyslowfast and pytorchvideo resize normalised float frames, so their views stay float32
        self.eval_uint8 = bool(self.eval_uint8) and self.protocol in ("gcvideo", "mmaction2")

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def video_shape(self, num_frames: int) -> tuple:
        """Shape of an item's ``video``."""
        shape = (3, num_frames, self.crop, self.crop)
        return shape if (self.single_view_4d and self.num_views == 1) else (self.num_views,) + shape

    def clip_indices(self, reader, sampling: ClipSampling) -> List[List[int]]:
        """Frame indices of the test clips of the opened video ``reader``; ValueError where the peer's
        code could not sample it either."""
        info = reader.stream_info() if self.protocol in ("pyslowfast", "pytorchvideo") else None
        return protocol_clip_indices(self.protocol, info, reader.num_frames, reader.fps, sampling.num_frames,
                                     sampling.sampling_rate, sampling.target_fps, self.num_clips)

    def __call__(self, frames, flat: Sequence[int], clips: Sequence[Sequence[int]]) -> torch.Tensor:
        """uint8 frames ``(K, h, w, 3)``, frame ``flat[k]`` in row k -> the views of ``clips`` (frame indices
        per clip): ``(V, 3, T, S, S)``."""
        row = {f: r for r, f in enumerate(flat)}
        rows = [[row[i] for i in c] for c in clips]
        if self.protocol == "gcvideo":
            video = make_views(frames, rows, self.crop, self.num_crops, self.mean, self.std,
                               as_uint8=self.eval_uint8)  # (V, 3, T, S, S)
        else:
            video = make_peer_views(frames, rows, self.peer_spec())  # (V, 3, T, S, S)
        return self._single(video)

    def peer_spec(self) -> PeerViewSpec:
        """The views of a peer protocol (not gcvideo) as ``make_peer_views`` takes them."""
        # PySlowFast's one-crop test resizes to its TRAIN_JITTER_SCALES[0]
        scale = self.one_crop_scale if (self.protocol, self.num_crops) == ("pyslowfast", 1) else self.crop
        return PeerViewSpec(self.protocol, scale, self.crop, self.num_crops, self.mean, self.std, self.eval_uint8)

    def failed(self, num_frames: int, device="cpu") -> torch.Tensor:
        """The zeros an item holds for a video that failed."""
        video = torch.zeros((self.num_views, 3, num_frames, self.crop, self.crop),
                            dtype=torch.uint8 if self.eval_uint8 else torch.float32, device=device)
        return self._single(video)

    def _single(self, video: torch.Tensor) -> torch.Tensor:
        return video[0] if (self.single_view_4d and self.num_views == 1) else video  # (3, T, S, S)


def build_train_clips(cfg) -> TrainClips:
    """The training clips of ``cfg``: DATA.TRAIN_JITTER_SCALES, TRAIN_CROP_SIZE, RANDOM_FLIP, the label
    pairs, REVERSE_PROB, NUM_SAMPLES, PAIR_REVERSED, TRAIN_UINT8, MEAN, STD and the ``AUG`` transform."""
    d = cfg.DATA
    return TrainClips(jitter_scales=d.TRAIN_JITTER_SCALES, crop=d.TRAIN_CROP_SIZE, random_flip=d.RANDOM_FLIP,
                      flip_pairs=d.FLIP_LABEL_PAIRS, reverse_prob=d.REVERSE_PROB, reverse_pairs=d.REVERSE_LABEL_PAIRS,
                      num_samples=d.NUM_SAMPLES, pair_reversed=d.PAIR_REVERSED, augment=build_train_transform(cfg),
                      uint8=d.TRAIN_UINT8, mean=d.MEAN, std=d.STD)


def build_eval_views(cfg, num_clips: int, num_crops: int, *, eval_uint8: bool,
                     single_view_4d: bool = False) -> EvalViews:
    """``num_clips`` x ``num_crops`` test views of ``cfg``: TEST.VIEW_PROTOCOL, DATA.TEST_CROP_SIZE, MEAN,
    STD (and TRAIN_JITTER_SCALES[0], PySlowFast's one-crop scale)."""
    d = cfg.DATA
    return EvalViews(protocol=cfg.TEST.VIEW_PROTOCOL, crop=d.TEST_CROP_SIZE, num_clips=num_clips, num_crops=num_crops,
                     eval_uint8=eval_uint8, mean=d.MEAN, std=d.STD, single_view_4d=single_view_4d,
                     one_crop_scale=d.TRAIN_JITTER_SCALES[0])
