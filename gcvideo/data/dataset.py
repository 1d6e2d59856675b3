"""The video dataset: training clips and multi-view test items, robust to broken videos.

``build_dataset(cfg, split)`` and ``build_views_dataset(cfg, paths, num_clips, num_crops)`` are the
only functions here that read a config.

Item contract (docs/DESIGN.md): a dict with
``video`` ``(3, T, H, W)`` (train; val with one view), ``(K, 3, T, H, W)`` (train with
``num_samples`` K > 1: K clips of one decoded window) or ``(V, 3, T, H, W)`` (test; val
with several views; clip-major), uint8 (``train_uint8`` / ``eval_uint8``: normalised on
the device by ``normalize_views``) or normalised float32; ``label`` int (-1 unknown; an
int64 tensor ``(K,)`` with K > 1), ``index`` (row of the video used in the annotation
list), ``path``, ``ok``, ``error`` and ``skipped``. ``collate_train`` batches training
items: K clips per item become K rows of the batch.

Randomness: every random choice of item ``index`` in epoch ``e`` comes from
``numpy.random.default_rng([SEED, e, index, attempt, stream])`` (stream 0: clip, crop, flip,
reversal; 1: the replacement of a broken video; 2: the ``transform``'s augmentation), so the same
(seed, epoch, index) gives the same clip whatever the number of DataLoader
workers, the sampler or the process (exact resume). ``set_epoch`` writes the
epoch into shared memory, so persistent workers see it too.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from gcvideo.data.annotations import VideoRecord, VideoRecords, load_annotations
from gcvideo.data.augment import ClipTransform, build_train_transform
from gcvideo.data.decoder import FrameCountChanged, VideoDecodeError, check_frame_size, open_video
from gcvideo.data.sampling import VIEW_PROTOCOLS, protocol_clip_indices, train_clip_indices
from gcvideo.data.transforms import (draw_scale, make_peer_views, make_views, normalize, short_side_size, to_tchw,
                                     train_clip)

__all__ = ["VideoDataset", "build_dataset", "build_views_dataset", "collate_train", "SPLITS"]

SPLITS = ("train", "val", "test")
# Replacement attempts for one training item before giving up (the tracker stops far earlier
# unless almost everything is broken).
MAX_ATTEMPTS = 50
# Other random clips of a video tried when frames of a clip do not decode (``damaged:``) before
# the video is replaced: the frames that do decode are exact, so the rest of the video is usable.
DAMAGED_RETRIES = 3


def _failure(kind: str, e: BaseException) -> str:
    """``kind: ExceptionType: first line`` for the ``error``/``skipped`` fields."""
    text = str(e).strip().splitlines()
    return f"{kind}: {type(e).__name__}" + (f": {text[0][:200]}" if text else "")


def read_frames(reader, indices: Sequence[int], size=None) -> np.ndarray:
    """uint8 ``(K, h, w, 3)`` at the frame size ``size(height, width)`` returns (None: the source
    size), scaled by the decoder in its colour conversion (``reader.read(indices, size=...)``)."""
    hw = size(reader.height, reader.width) if size is not None else None
    return reader.read(indices) if hw is None else reader.read(indices, size=hw)


def collate_train(items: List[dict]) -> dict:
    """``default_collate``, then K clips per item (video ``(B, K, 3, T, H, W)``, label ``(B, K)``) as K
    rows each: video ``(B * K, 3, T, H, W)``, label ``(B * K,)`` (item b's clips are rows b*K..b*K+K-1)."""
    batch = default_collate(items)
    if batch["video"].dim() == 6:
        batch["video"] = batch["video"].flatten(0, 1)  # (B * K, 3, T, H, W)
        batch["label"] = batch["label"].flatten()  # (B * K,)
    return batch


def _pair_map(pairs: Sequence[Sequence[int]], key: str) -> Dict[int, int]:
    out: Dict[int, int] = {}
    for p in pairs:
        a, b = int(p[0]), int(p[1])
        if a in out and out[a] != b:
            raise ValueError(f"{key}: class {a} is mapped twice ({out[a]} and {b})")
        out[a] = b
    return out


class VideoDataset(Dataset):
    """Videos of one split. ``train=True``: random clips, broken videos replaced;
    ``train=False``: ``num_clips x num_crops`` deterministic views, broken videos marked.
    """
    # ``set_epoch`` reaches persistent DataLoader workers (shared memory): the engine keeps its
    # training workers for the whole run (gcvideo.engine.loader.TrainLoader)
    epoch_is_shared = True

    def __init__(self, records: Union[VideoRecords, Sequence[VideoRecord]], train: bool, *, decoder: str = "pyav",
                 decoder_threads: int = 1, decode_device: str = "cpu", num_frames: int = 8, sampling_rate: int = 8,
                 target_fps: float = 30,
                 jitter_scales: Sequence[int] = (256, 320), train_crop: int = 224, test_crop: int = 256,
                 random_flip: bool = True, flip_pairs: Sequence[Sequence[int]] = (), reverse_prob: float = 0.0,
                 reverse_pairs: Sequence[Sequence[int]] = (), mean: Sequence[float] = (0.45, 0.45, 0.45),
                 std: Sequence[float] = (0.225, 0.225, 0.225), num_clips: int = 10, num_crops: int = 3,
                 seed: int = 0, single_view_4d: bool = False, eval_uint8: bool = False, num_samples: int = 1,
                 pair_reversed: bool = False, train_uint8: bool = False, max_frame_pixels: int = 4096 * 2304,
                 max_aspect_ratio: float = 10.0, view_protocol: str = "gcvideo",
                 transform: Optional[ClipTransform] = None):
        if not len(records):
            raise ValueError("VideoDataset needs at least one video")
        # one bytes buffer + numpy arrays: DataLoader workers share these pages, never copy them
        self.records = VideoRecords.from_records(records)
        self.train = bool(train)
        self.decoder = decoder
        self.decoder_threads = int(decoder_threads)
        self.decode_device = str(decode_device)  # "cuda": torchcodec frames and augmentation on the GPU
        self.num_frames = int(num_frames)
        self.sampling_rate = int(sampling_rate)
        self.target_fps = float(target_fps)
        self.jitter_scales = [int(x) for x in jitter_scales]
        self.train_crop = int(train_crop)
        self.test_crop = int(test_crop)
        self.random_flip = bool(random_flip)
        self.flip_map = _pair_map(flip_pairs, "DATA.FLIP_LABEL_PAIRS")
        self.reverse_prob = float(reverse_prob)
        self.reverse_map = _pair_map(reverse_pairs, "DATA.REVERSE_LABEL_PAIRS")
        self.mean = [float(x) for x in mean]
        self.std = [float(x) for x in std]
        self.num_clips = int(num_clips)
        self.num_crops = int(num_crops)
        self.seed = int(seed)
        self.single_view_4d = bool(single_view_4d)
        self.max_frame_pixels = int(max_frame_pixels)  # per-video bounds on what decoding/resizing allocates
        self.max_aspect_ratio = float(max_aspect_ratio)
        if view_protocol not in VIEW_PROTOCOLS:
            raise ValueError(f"view_protocol = {view_protocol!r}; expected one of {VIEW_PROTOCOLS}")
        self.view_protocol = view_protocol  # whose test views: frame indices, resize, crops
        # eval items: uint8 views, normalised later (normalize_views); pyslowfast and pytorchvideo resize
        # normalised float frames, so their views stay float32
        self.eval_uint8 = bool(eval_uint8) and view_protocol in ("gcvideo", "mmaction2")
        self.train_uint8 = bool(train_uint8)  # train items: uint8 clips, normalised later (normalize_views)
        self.num_samples = int(num_samples)  # clips per training item, from one decode
        if self.num_samples < 1:
            raise ValueError(f"num_samples = {num_samples}; expected a positive number of clips per video")
        self.pair_reversed = bool(pair_reversed)  # clip 2i+1 = clip 2i reversed in time
        if self.pair_reversed and self.num_samples % 2:
            raise ValueError(f"pair_reversed with num_samples = {num_samples}; expected an even number of clips")
        # training clips after crop, flip and reversal: ``transform(clip, rng)``, uint8 (T, 3, C, C) in and
        # out, drawing from the item's stream 2 (gcvideo.data.augment); None: no further augmentation
        self.transform = transform
        self.collate = collate_train if self.train else None  # DataLoader collate_fn (None: the default)
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    # -- epoch / size ---------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Epoch for the random choices (shared with worker processes, persistent ones too)."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch[0])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_views(self) -> int:
        return 1 if self.train else self.num_clips * self.num_crops

    def video_shape(self) -> tuple:
        """Shape of the ``video`` field of every item."""
        if self.train:
            shape = (3, self.num_frames, self.train_crop, self.train_crop)
            return shape if self.num_samples == 1 else (self.num_samples,) + shape
        shape = (3, self.num_frames, self.test_crop, self.test_crop)
        return shape if (self.single_view_4d and self.num_views == 1) else (self.num_views,) + shape

    def _rng(self, index: int, attempt: int, stream: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch, index, attempt, stream])

    # -- items ----------------------------------------------------------------------
    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += len(self)
        return self._train_item(index) if self.train else self._eval_item(index)

    def _decode(self, path: str, sample, size=None) -> tuple:
        """Open once, compute indices with ``sample(reader)``, read them in one pass, at the
        frame size ``size(height, width)`` returns (called after ``sample``; None: the source size)."""
        try:
            with open_video(path, self.decoder, self.decoder_threads, self.decode_device) as reader:
                check_frame_size(path, reader.height, reader.width, self.max_frame_pixels, self.max_aspect_ratio)
                for _ in range(3):
                    want = sample(reader)
                    flat = want if isinstance(want[0], int) else sorted({i for c in want for i in c})
                    try:
                        frames = read_frames(reader, flat, size)  # (K, h, w, 3)
                        check_frame_size(path, frames.shape[1], frames.shape[2], self.max_frame_pixels,
                                         self.max_aspect_ratio)  # the frames as decoded, whatever the header said
                        return want, flat, frames
                    except FrameCountChanged:
                        continue  # fewer frames decode than announced: sample again
                raise VideoDecodeError(path, "no_frames: frame count keeps changing while decoding")
        except VideoDecodeError:
            raise
        except Exception as e:  # anything else a damaged file provokes inside the libraries
            raise VideoDecodeError(path, f"unreadable: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")

    def _view_indices(self, reader, path: str) -> List[List[int]]:
        """Frame indices of the test clips of the opened video, as ``view_protocol`` computes them."""
        info = reader.stream_info() if self.view_protocol in ("pyslowfast", "pytorchvideo") else None
        try:
            return protocol_clip_indices(self.view_protocol, info, reader.num_frames, reader.fps, self.num_frames,
                                         self.sampling_rate, self.target_fps, self.num_clips)
        except ValueError as e:  # the peer's code could not sample this video either
            raise VideoDecodeError(path, f"view_protocol: {e}")

    def _train_item(self, index: int) -> dict:
        skipped: List[str] = []
        idx = index
        for attempt in range(MAX_ATTEMPTS):
            rec = self.records[idx]
            rng = self._rng(index, attempt)
            aug_rng = self._rng(index, attempt, stream=2) if self.transform is not None else None
            scales: List[int] = []
            source: List[Tuple[int, int]] = []

            def scaled_size(height: int, width: int):
                """One clip: its scale drawn before the read, frames converted straight to that size."""
                source.append((height, width))
                if self.num_samples > 1 or height <= 0 or width <= 0:
                    return None  # K clips at K scales (or an unknown size): full-size frames
                scales.append(draw_scale(rng, self.jitter_scales))
                return short_side_size(height, width, scales[-1])

            try:
                _, _, frames = self._decode(rec.path, lambda r: train_clip_indices(
                    r.num_frames, r.fps, self.num_frames, self.sampling_rate, self.target_fps, rng), scaled_size)
            except VideoDecodeError as e:
                if e.reason.startswith("damaged:") and attempt < DAMAGED_RETRIES:
                    continue  # frames of this clip do not decode: another clip of the same video
                skipped.append(f"{rec.path}\t{e.reason}")
                idx = int(self._rng(index, attempt, stream=1).integers(len(self)))
                continue
            try:
                x = to_tchw(frames)  # (T, 3, h, w) uint8
                hw = source[-1] if scales else tuple(x.shape[-2:])  # the frame size the crops are drawn for
                c, t, kk = self.train_crop, x.shape[0], self.num_samples
                # the clips, written straight into the item (uint8) or normalised one by one (float32)
                video = torch.empty((kk, 3, t, c, c), dtype=torch.uint8) if self.train_uint8 else None
                clips, labels = [], []
                for k in range(kk):
                    if self.pair_reversed and k % 2:  # the previous clip reversed in time: no draws
                        clip, label = clip.flip(0), self.reverse_map.get(label, label)
                    else:
                        # draws per clip, in order: scale (already drawn for one clip), crop top, crop left,
                        # flip, reversal
                        scale = scales[-1] if scales else draw_scale(rng, self.jitter_scales)
                        clip, flipped = train_clip(x, hw, scale, self.train_crop, self.random_flip, rng)  # (T, 3, C, C)
                        label = self.flip_map.get(rec.label, rec.label) if flipped else rec.label
                        if self.reverse_prob > 0 and rng.random() < self.reverse_prob:
                            clip = clip.flip(0)  # time reversal
                            label = self.reverse_map.get(label, label)
                        if self.transform is not None:  # its own stream: crops and flips stay as without it
                            clip = self.transform(clip, aug_rng)  # (T, 3, C, C) uint8
                    if video is not None:
                        video[k].copy_(clip.permute(1, 0, 2, 3))  # uint8 (3, T, C, C), normalised on the device
                    else:
                        clips.append(normalize(clip, self.mean, self.std))  # float32 (3, T, C, C)
                    labels.append(label)
                if video is None:
                    video = torch.stack(clips) if kk > 1 else clips[0][None]  # (K, 3, T, C, C)
                if kk == 1:
                    video, label = video[0], labels[0]  # (3, T, C, C), int
                else:
                    label = torch.tensor(labels, dtype=torch.int64)  # (K,)
            except Exception as e:  # a per-video failure (MemoryError, ...): replaced like a broken video
                skipped.append(f"{rec.path}\t{_failure('transform', e)}")
                idx = int(self._rng(index, attempt, stream=1).integers(len(self)))
                continue
            return {"video": video, "label": label, "index": idx, "path": rec.path, "ok": True, "error": "",
                    "skipped": "\n".join(skipped)}
        raise RuntimeError(f"{MAX_ATTEMPTS} videos in a row failed to decode while building training item "
                           f"{index}; the last: {skipped[-1]!r}. Check the dataset with tools/check_videos.py")

    def _eval_item(self, index: int) -> dict:
        rec = self.records[index]
        try:
            clips, flat, frames = self._decode(rec.path, lambda r: self._view_indices(r, rec.path))
            row = {f: r for r, f in enumerate(flat)}
            rows = [[row[i] for i in c] for c in clips]
            if self.view_protocol == "gcvideo":
                video = make_views(frames, rows, self.test_crop, self.num_crops, self.mean, self.std,
                                   as_uint8=self.eval_uint8)  # (V, 3, T, S, S)
            else:  # PySlowFast's one-crop test resizes to its TRAIN_JITTER_SCALES[0]
                scale = self.jitter_scales[0] if (self.view_protocol, self.num_crops) == ("pyslowfast", 1) \
                    else self.test_crop
                video = make_peer_views(frames, rows, self.view_protocol, scale, self.test_crop, self.num_crops,
                                        self.mean, self.std, as_uint8=self.eval_uint8)  # (V, 3, T, S, S)
            ok, error = True, ""
        except Exception as e:  # decode or transform (MemoryError, ...): a failed video, never the end of a run
            video = torch.zeros((self.num_views, 3, self.num_frames, self.test_crop, self.test_crop),
                                dtype=torch.uint8 if self.eval_uint8 else torch.float32, device=self.decode_device)
            ok, error = False, e.reason if isinstance(e, VideoDecodeError) else _failure("transform", e)
        if self.single_view_4d and self.num_views == 1:
            video = video[0]  # (3, T, S, S)
        return {"video": video, "label": rec.label, "index": index, "path": rec.path, "ok": ok, "error": error,
                "skipped": ""}


def annotation_path(cfg, split: str) -> str:
    """The annotation file of ``split``: DATA.{TRAIN,VAL,TEST}_FILE under DATA.PATH_TO_DATA_DIR."""
    from gcvideo.config import ConfigError

    d = cfg.DATA
    key = {"train": "TRAIN_FILE", "val": "VAL_FILE", "test": "TEST_FILE"}[split]
    name = d[key]
    if os.path.isabs(name) or "://" in name:
        return name
    if not d.PATH_TO_DATA_DIR:
        raise ConfigError(f"DATA.PATH_TO_DATA_DIR is empty and DATA.{key} = {name!r} is relative; set "
                          "DATA.PATH_TO_DATA_DIR to the folder with the annotation files")
    return os.path.join(d.PATH_TO_DATA_DIR, name) if "://" not in d.PATH_TO_DATA_DIR else \
        d.PATH_TO_DATA_DIR.rstrip("/") + "/" + name


def build_dataset(cfg, split: str) -> VideoDataset:
    """Dataset of ``split`` ("train" | "val" | "test") as the config describes.

    train: random clips; val: TRAIN.EVAL_VIEWS = [clips, crops] views (one view ->
    ``(3, T, H, W)`` items); test: TEST.NUM_ENSEMBLE_VIEWS x TEST.NUM_SPATIAL_CROPS views.
    Video paths are relative to DATA.{TRAIN,VAL,TEST}_PATH_PREFIX, else DATA.PATH_PREFIX, else
    the annotation file's folder.
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is not one of {SPLITS}")
    d = cfg.DATA
    prefix = d[f"{split.upper()}_PATH_PREFIX"] or d.PATH_PREFIX
    records = load_annotations(annotation_path(cfg, split), fmt=d.FORMAT, path_prefix=prefix,
                               label_map=d.LABEL_MAP, num_classes=cfg.MODEL.NUM_CLASSES,
                               clip_layout=d.CLIP_LAYOUT, sep=d.PATH_LABEL_SEPARATOR,
                               require_labels=(split == "train"))
    if split == "val":
        clips, crops = int(cfg.TRAIN.EVAL_VIEWS[0]), int(cfg.TRAIN.EVAL_VIEWS[1])
    else:
        clips, crops = int(cfg.TEST.NUM_ENSEMBLE_VIEWS), int(cfg.TEST.NUM_SPATIAL_CROPS)
    return VideoDataset(
        records, train=(split == "train"), **_dataset_kwargs(cfg),
        train_crop=d.TRAIN_CROP_SIZE,
        random_flip=d.RANDOM_FLIP, flip_pairs=d.FLIP_LABEL_PAIRS, reverse_prob=d.REVERSE_PROB,
        reverse_pairs=d.REVERSE_LABEL_PAIRS, num_clips=clips, num_crops=crops,
        single_view_4d=(split == "val"), eval_uint8=d.EVAL_UINT8, num_samples=d.NUM_SAMPLES,
        pair_reversed=d.PAIR_REVERSED, train_uint8=d.TRAIN_UINT8,
        transform=build_train_transform(cfg) if split == "train" else None)


def build_views_dataset(cfg, paths: Sequence[str], num_clips: int, num_crops: int) -> VideoDataset:
    """A test-mode dataset over the video files ``paths`` (label -1, no annotation file): items hold
    ``video`` float32 normalised (V, 3, T, S, S) with V = ``num_clips`` x ``num_crops``, ``ok`` and
    ``error``. Decoding, clip sampling, size limits and normalisation as ``build_dataset``'s."""
    records = [VideoRecord(path=str(p), label=-1, line=i + 1) for i, p in enumerate(paths)]
    return VideoDataset(records, train=False, **_dataset_kwargs(cfg), num_clips=num_clips, num_crops=num_crops,
                        eval_uint8=False)


def _dataset_kwargs(cfg) -> dict:
    """The ``VideoDataset`` arguments every dataset of ``cfg`` shares: decoder, clip sampling, scales,
    test crop, view protocol, normalisation, seed and the per-video size limits."""
    d = cfg.DATA
    return dict(decoder=d.DECODER, decoder_threads=d.DECODER_THREADS, decode_device=d.DECODE_DEVICE,
                jitter_scales=d.TRAIN_JITTER_SCALES,
                num_frames=d.NUM_FRAMES, sampling_rate=d.SAMPLING_RATE, target_fps=d.TARGET_FPS,
                test_crop=d.TEST_CROP_SIZE, mean=d.MEAN, std=d.STD, seed=cfg.SEED,
                max_frame_pixels=d.MAX_FRAME_PIXELS, max_aspect_ratio=d.MAX_ASPECT_RATIO,
                view_protocol=cfg.TEST.VIEW_PROTOCOL)
