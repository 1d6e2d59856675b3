"""Spatial transforms on decoded clips (uint8 in, normalised float out).

Decoders give ``(T, H, W, 3)`` uint8; we view it as ``(T, 3, H, W)`` in
channels-last memory (no copy), which is what torchvision's fast uint8 bilinear
(antialiased) resize kernel wants, and only turn into float at the very end, on
the cropped pixels.

Training (``train_clip``): short-side scale jitter S ~ U{min..max}, a random C x C
crop of the video scaled to short side S (top and left drawn in the scaled
frame), horizontal flip; uint8 out (``normalize`` or, batched on the device,
``normalize_views`` make it float). Frames already decoded at the scale
(``VideoReader.read(..., size=scaled_size(...))``, one clip per video) are only
cropped; full-size frames are cut as one resized crop: the crop's box mapped to
the source (side round(C * short / S)) and resized to C x C, so only the crop's
pixels are resized (same clip up to resampling and sub-pixel rounding of the box).
``train_transform`` is the same with normalisation, for one clip.

Testing (``make_views``): the short side is resized to the crop size S, then 1 or
3 crops S x S along the long side: left/centre/right for landscape,
top/centre/bottom for portrait (offsets 0, (L - S) // 2, L - S).

The peers' test views (``make_peer_views`` with a ``PeerViewSpec``, TEST.VIEW_PROTOCOL; docs/data.md):

* ``pyslowfast``: frames to float, /255, normalised, then resized (bilinear, no antialiasing) so that
  the short side is S (long side floor(L * S / s); not resized when the short side is S already);
  crops left/centre/right or top/centre/bottom at 0, ceil((L - S) / 2), L - S. One crop: the centre
  crop of frames resized to DATA.TRAIN_JITTER_SCALES[0] (its test_net does so).
* ``pytorchvideo``: the same; one crop: torchvision's CenterCrop (round((L - S) / 2)).
* ``mmaction2``: uint8 frames resized to (int(h f + 0.5), int(w f + 0.5)), f = S / short side
  (OpenCV bilinear there, torch's bilinear here, rounded: within one grey level); ThreeCrop's
  offsets 0, 2 * ((L - S) // 2), (L - S) // 2; one crop: CenterCrop's (L - S) // 2.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from gcvideo.data.sampling import VIEW_PROTOCOLS

__all__ = ["to_tchw", "short_side_size", "resize_short_side", "train_crop_box", "resized_crop",
           "crop_offsets", "normalize", "normalize_views", "draw_scale", "train_clip", "train_transform",
           "make_views", "peer_resized_size", "peer_crop_offsets", "PeerViewSpec", "make_peer_views"]


def to_tchw(frames) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` numpy or tensor (e.g. frames decoded on the GPU) -> uint8
    ``(T, 3, H, W)`` tensor view (channels-last memory, on the frames' device)."""
    if isinstance(frames, torch.Tensor):
        return frames.contiguous().permute(0, 3, 1, 2)  # (T, 3, H, W)
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (T, 3, H, W)


def short_side_size(height: int, width: int, size: int) -> Tuple[int, int]:
    """(h, w) with the short side ``size`` and the aspect ratio kept (long side rounded)."""
    if height <= width:
        return size, max(size, int(round(width * size / height)))
    return max(size, int(round(height * size / width))), size


def resize_short_side(x: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` -> ``(T, 3, h, w)`` with short side ``size`` (bilinear, antialiased)."""
    h, w = x.shape[-2:]
    nh, nw = short_side_size(h, w, size)
    if (nh, nw) == (h, w):
        return x
    return TF.resize(x, [nh, nw], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def train_crop_box(height: int, width: int, scale: int, crop: int, rng: np.random.Generator) -> Tuple[int, int, int]:
    """(top, left, side) in source pixels of a ``crop`` crop after scaling the short side to ``scale``."""
    side = int(round(crop * min(height, width) / scale))
    side = max(1, min(side, height, width))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    return top, left, side


def resized_crop(x: torch.Tensor, top: int, left: int, side: int, size: int) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` -> ``(T, 3, size, size)``: the square at (top, left) resized."""
    region = x[..., top:top + side, left:left + side]  # (T, 3, side, side)
    if side == size:
        return region
    return TF.resize(region, [size, size], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(T, 3, H, W)`` -> float32 ``(3, T, H, W)``: (x / 255 - mean) / std, contiguous."""
    t, c, h, w = x.shape
    out = torch.empty((c, t, h, w), dtype=torch.float32, device=x.device)
    out.copy_(x.permute(1, 0, 2, 3))  # (3, T, H, W)
    return _normalize_(out, mean, std, channel_dim=0)


def _normalize_(x: torch.Tensor, mean: Sequence[float], std: Sequence[float], channel_dim: int) -> torch.Tensor:
    """In place on float ``x``: (x - 255 mean) * 1 / (255 std) along ``channel_dim`` (same rounding everywhere)."""
    shape = [1] * x.dim()
    shape[channel_dim] = len(mean)
    m = torch.tensor([255.0 * v for v in mean], dtype=torch.float32, device=x.device).view(shape)
    s = torch.tensor([1.0 / (255.0 * v) for v in std], dtype=torch.float32, device=x.device).view(shape)
    return x.sub_(m).mul_(s)


def normalize_views(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``(..., 3, T, H, W)`` (e.g. a batch of uint8 test views, on the GPU) -> normalised float32.

    The same numbers as the float32 items of the dataset (``normalize``), bit for bit.
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"normalize_views expects uint8 views, got {x.dtype}")
    return _normalize_(x.float(), mean, std, channel_dim=x.dim() - 4)


def draw_scale(rng: np.random.Generator, jitter: Sequence[int]) -> int:
    """Short side S ~ uniform integer in ``jitter`` = [min, max]."""
    return int(rng.integers(int(jitter[0]), int(jitter[1]) + 1))


def train_clip(x: torch.Tensor, source_hw: Tuple[int, int], scale: int, crop: int, flip: bool,
               rng: np.random.Generator) -> Tuple[torch.Tensor, bool]:
    """uint8 ``(T, 3, H, W)`` -> uint8 ``(T, 3, crop, crop)``: a random crop at short side ``scale``, flipped or not.

    ``x`` holds the frames at their source size ``source_hw`` or already scaled to
    ``short_side_size(*source_hw, scale)``. Random draws, in this order: crop top,
    crop left (in the scaled frame), flip (if enabled).
    """
    sh, sw = short_side_size(source_hw[0], source_hw[1], scale)
    top = int(rng.integers(0, max(sh - crop, 0) + 1))
    left = int(rng.integers(0, max(sw - crop, 0) + 1))
    h, w = x.shape[-2:]
    if (h, w) == (sh, sw):  # decoded at the scale: crop only
        side = min(crop, h, w)
        x = resized_crop(x, top, left, side, crop)  # (T, 3, crop, crop)
    else:  # full size: the same box in source pixels, resized
        side = max(1, min(int(round(crop * min(h, w) / scale)), h, w))
        t = min(int(round(top * h / sh)), h - side)
        lf = min(int(round(left * w / sw)), w - side)
        x = resized_crop(x, t, lf, side, crop)  # (T, 3, crop, crop)
    flipped = bool(flip) and bool(rng.random() < 0.5)
    if flipped:
        x = x.flip(-1)
    return x, flipped


def train_transform(frames: np.ndarray, rng: np.random.Generator, jitter: Sequence[int], crop: int,
                    flip: bool, mean: Sequence[float], std: Sequence[float]) -> Tuple[torch.Tensor, bool]:
    """uint8 full-size ``(T, H, W, 3)`` -> float ``(3, T, crop, crop)`` and whether it was flipped.

    Random draws, in this order: scale, crop top, crop left, flip (if enabled).
    """
    x = to_tchw(frames)  # (T, 3, H, W)
    clip, flipped = train_clip(x, tuple(x.shape[-2:]), draw_scale(rng, jitter), crop, flip, rng)
    return normalize(clip, mean, std), flipped  # (3, T, crop, crop)


def crop_offsets(height: int, width: int, size: int, num_crops: int) -> List[Tuple[int, int]]:
    """(top, left) of each crop: centre for 1; start/centre/end of the long side for 3."""
    dh, dw = height - size, width - size
    if num_crops == 1:
        return [(dh // 2, dw // 2)]
    if num_crops != 3:
        raise ValueError(f"num_crops = {num_crops}; expected 1 or 3")
    if width >= height:  # landscape (or square): left, centre, right
        return [(dh // 2, 0), (dh // 2, dw // 2), (dh // 2, dw)]
    return [(0, dw // 2), (dh // 2, dw // 2), (dh, dw // 2)]  # portrait: top, centre, bottom


def make_views(frames: np.ndarray, clips: Sequence[Sequence[int]], size: int, num_crops: int,
               mean: Sequence[float], std: Sequence[float], as_uint8: bool = False) -> torch.Tensor:
    """All views of one video, clip-major: float ``(V, 3, T, size, size)``, V = clips x crops.

    ``frames`` holds each needed frame once (uint8 ``(K, H, W, 3)``); ``clips`` gives,
    per clip, the rows of ``frames`` it uses. Every frame is resized once (not once per
    view); each clip is normalised once, its views are copies of its crops.
    ``as_uint8``: the views as uint8, not normalised (``normalize_views`` gives the float ones).
    """
    x = resize_short_side(to_tchw(frames), size)  # (K, 3, h, w)
    h, w = x.shape[-2:]
    return _crop_views(x, clips, crop_offsets(h, w, size, num_crops), size, mean, std, as_uint8)


def _crop_views(x: torch.Tensor, clips: Sequence[Sequence[int]], offsets: Sequence[Tuple[int, int]], size: int,
                mean: Sequence[float], std: Sequence[float], as_uint8: bool) -> torch.Tensor:
    """Views ``(V, 3, T, size, size)`` of resized frames ``x`` ``(K, 3, h, w)``: uint8 ``x`` gives uint8
    views (``as_uint8``) or normalised float ones; float ``x`` (normalised already) float views."""
    t = len(clips[0])
    # uint8: 4x smaller items, normalised on the device by the test loop
    dtype = torch.uint8 if (as_uint8 and x.dtype == torch.uint8) else torch.float32
    views = torch.empty((len(clips) * len(offsets), 3, t, size, size), dtype=dtype, device=x.device)
    for ci, rows in enumerate(clips):
        # the clip as it is (a view) or normalised once (a clip-sized buffer), then its crops copied
        keep = dtype == torch.uint8 or x.dtype != torch.uint8
        clip = x[list(rows)].permute(1, 0, 2, 3) if keep else normalize(x[list(rows)], mean, std)  # (3, T, h, w)
        for oi, (top, left) in enumerate(offsets):
            views[ci * len(offsets) + oi] = clip[..., top:top + size, left:left + size]
    return views  # (V, 3, T, size, size)


def peer_resized_size(height: int, width: int, size: int, protocol: str) -> Tuple[int, int]:
    """(h, w) a peer resizes ``height`` x ``width`` frames to for short side ``size``."""
    if protocol == "mmaction2":  # mmcv.rescale_size((w, h), (inf, size))
        f = size / min(height, width)
        return int(height * f + 0.5), int(width * f + 0.5)
    if width < height:  # PySlowFast's random_short_side_scale_jitter / pytorchvideo's short_side_scale
        return int(math.floor(float(height) / width * size)), size
    return size, int(math.floor(float(width) / height * size))


def peer_crop_offsets(height: int, width: int, size: int, num_crops: int, protocol: str) -> List[Tuple[int, int]]:
    """(top, left) of each test crop of a ``height`` x ``width`` frame as ``protocol`` places them."""
    if num_crops not in (1, 3):
        raise ValueError(f"num_crops = {num_crops}; expected 1 or 3")
    dh, dw = height - size, width - size
    if protocol == "mmaction2":
        if num_crops == 1:  # CenterCrop
            return [(dh // 2, dw // 2)]
        if height == size:  # ThreeCrop: left, right, middle
            return [(0, 0), (0, 2 * (dw // 2)), (0, dw // 2)]
        return [(0, 0), (2 * (dh // 2), 0), (dh // 2, 0)]  # top, down, middle
    if num_crops == 1 and protocol == "pytorchvideo":  # torchvision CenterCrop
        return [(int(round(dh / 2.0)), int(round(dw / 2.0)))]
    # uniform_crop (PySlowFast, pytorchvideo): spatial_idx 0, 1, 2 (one crop: 1)
    out = []
    for idx in ([1] if num_crops == 1 else [0, 1, 2]):
        top, left = int(math.ceil(dh / 2)), int(math.ceil(dw / 2))
        if height > width:
            top = {0: 0, 1: top, 2: dh}[idx]
        else:
            left = {0: 0, 1: left, 2: dw}[idx]
        out.append((top, left))
    return out


@dataclass(frozen=True)
class PeerViewSpec:
    """How a peer computes its test views (module docstring): frames resized to short side ``scale``,
    ``num_crops`` crops of ``size``. ``EvalViews.peer_spec`` builds it for its protocol."""
    protocol: str  # pyslowfast, pytorchvideo or mmaction2
    scale: int  # the short side the frames are resized to
    size: int  # the side of a crop
    num_crops: int  # 1 or 3
    mean: Tuple[float, ...]  # DATA.MEAN, DATA.STD: the normalisation of float views
    std: Tuple[float, ...]
    as_uint8: bool = False  # uint8 views, normalised later (mmaction2 only: the others resize normalised frames)

    def __post_init__(self):
        peers = VIEW_PROTOCOLS[1:]  # all but gcvideo's own (make_views)
        if self.protocol not in peers:
            raise ValueError(f"peer view protocol {self.protocol!r}; expected one of {peers}")
        if self.num_crops not in (1, 3):
            raise ValueError(f"num_crops = {self.num_crops}; expected 1 or 3")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))


def make_peer_views(frames: np.ndarray, clips: Sequence[Sequence[int]], spec: PeerViewSpec) -> torch.Tensor:
    """``make_views`` as a peer computes its test views (``spec``) of uint8 frames ``(K, h, w, 3)``, the rows
    of each clip in ``clips``: ``(V, 3, T, size, size)``. pyslowfast and pytorchvideo resize normalised float
    frames, so their views are float32 whatever ``spec.as_uint8``; mmaction2's are uint8 with it."""
    protocol, scale, size, num_crops = spec.protocol, spec.scale, spec.size, spec.num_crops
    mean, std, as_uint8 = spec.mean, spec.std, spec.as_uint8
    x = to_tchw(frames).contiguous()  # (K, 3, H, W) uint8, planar: crops and arithmetic read whole rows
    h, w = x.shape[-2:]
    nh, nw = peer_resized_size(h, w, scale, protocol)
    if protocol == "mmaction2":
        if (nh, nw) != (h, w):
            x = F.interpolate(x.float(), size=(nh, nw), mode="bilinear", align_corners=False)
            x = x.round_().clamp_(0, 255).to(torch.uint8)  # (K, 3, nh, nw)
    else:
        m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
        x = x.float().div_(255.0).sub_(m).div_(s)  # (K, 3, H, W), normalised before resizing as the peers do
        if (nh, nw) != (h, w):  # (pytorchvideo resizes to the same size too: bilinear then copies exactly)
            x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)  # (K, 3, nh, nw)
    return _crop_views(x, clips, peer_crop_offsets(nh, nw, size, num_crops, protocol), size, mean, std, as_uint8)
