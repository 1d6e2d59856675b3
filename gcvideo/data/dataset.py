"""The video dataset: training clips and multi-view test items, robust to broken videos.

An item is: decode (``DecodeOptions``: backend, threads, device, size bounds; the frames
``ClipSampling`` and the transform ask for), then the transform object (gcvideo.data.clip_transforms:
``TrainClips`` for training, ``EvalViews`` for val/test) makes the item's video from the frames.
``build_dataset(cfg, split)`` and ``build_views_dataset(cfg, paths, num_clips, num_crops)`` are the
only functions here that read a config: they build those objects once.

Item contract (docs/DESIGN.md): a dict with
``video`` ``(3, T, H, W)`` (train; val with one view), ``(K, 3, T, H, W)`` (train with
``num_samples`` K > 1: K clips of one decoded window) or ``(V, 3, T, H, W)`` (test; val
with several views; clip-major), uint8 (``TrainClips.uint8`` / ``EvalViews.eval_uint8``: normalised on
the device by ``normalize_views``) or normalised float32; ``label`` int (-1 unknown; an
int64 tensor ``(K,)`` with K > 1), ``index`` (row of the video used in the annotation
list), ``path``, ``ok``, ``error`` and ``skipped``. ``collate_train`` batches training
items: K clips per item become K rows of the batch.

Randomness: every random choice of item ``index`` in epoch ``e`` comes from
``numpy.random.default_rng([SEED, e, index, attempt, stream])`` (stream 0: clip, scale, crop, flip,
reversal; 1: the replacement of a broken video; 2: ``TrainClips.augment``), so the same
(seed, epoch, index) gives the same clip whatever the number of DataLoader
workers, the sampler or the process (exact resume). ``set_epoch`` writes the
epoch into shared memory, so persistent workers see it too.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from gcvideo.data.annotations import VideoRecord, VideoRecords, load_annotations
from gcvideo.data.clip_transforms import EvalViews, TrainClips, build_eval_views, build_train_clips
from gcvideo.data.decoder import DecodeOptions, FrameCountChanged, VideoDecodeError
from gcvideo.data.sampling import ClipSampling

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


class VideoDataset(Dataset):
    """Videos of one split: each item's frames are decoded (``decode``, the frames ``sampling`` and the
    transform ask for), then handed to ``transform``. A ``TrainClips`` transform: random clips, broken
    videos replaced; a ``EvalViews`` transform: deterministic views, broken videos marked.
    """
    # ``set_epoch`` reaches persistent DataLoader workers (shared memory): the engine keeps its
    # training workers for the whole run (gcvideo.engine.loader.TrainLoader)
    epoch_is_shared = True

    def __init__(self, records: Union[VideoRecords, Sequence[VideoRecord]], *, transform: Union[TrainClips, EvalViews],
                 sampling: ClipSampling = ClipSampling(), decode: DecodeOptions = DecodeOptions(), seed: int = 0):
        if not len(records):
            raise ValueError("VideoDataset needs at least one video")
        # one bytes buffer + numpy arrays: DataLoader workers share these pages, never copy them
        self.records = VideoRecords.from_records(records)
        self.sampling = sampling  # which frames make a clip
        self.decode = decode  # backend, threads, device ("cuda": torchcodec frames and augmentation on the GPU), bounds
        self.transform = transform  # decoded frames -> the item's video (and label)
        self.train = bool(transform.train)
        self.seed = int(seed)
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
        return 1 if self.train else self.transform.num_views

    def video_shape(self) -> tuple:
        """Shape of the ``video`` field of every item."""
        return self.transform.video_shape(self.sampling.num_frames)

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
            with self.decode.open(path) as reader:
                self.decode.check_size(path, reader.height, reader.width)
                for _ in range(3):
                    want = sample(reader)
                    flat = want if isinstance(want[0], int) else sorted({i for c in want for i in c})
                    try:
                        frames = read_frames(reader, flat, size)  # (K, h, w, 3)
                        # the frames as decoded, whatever the header said
                        self.decode.check_size(path, frames.shape[1], frames.shape[2])
                        return want, flat, frames
                    except FrameCountChanged:
                        continue  # fewer frames decode than announced: sample again
                raise VideoDecodeError(path, "no_frames: frame count keeps changing while decoding")
        except VideoDecodeError:
            raise
        except Exception as e:  # anything else a damaged file provokes inside the libraries
            raise VideoDecodeError(path, f"unreadable: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")

    def _view_indices(self, reader, path: str) -> List[List[int]]:
        """Frame indices of the test clips of the opened video, as the view protocol computes them."""
        try:
            return self.transform.clip_indices(reader, self.sampling)
        except ValueError as e:  # the peer's code could not sample this video either
            raise VideoDecodeError(path, f"view_protocol: {e}")

    def _train_item(self, index: int) -> dict:
        skipped: List[str] = []
        idx = index
        for attempt in range(MAX_ATTEMPTS):
            rec = self.records[idx]
            rng = self._rng(index, attempt)  # stream 0: clip, scale, crop, flip, reversal
            size = self.transform.frame_size(rng)  # one clip per video: its scale drawn before the read
            try:
                _, _, frames = self._decode(rec.path, lambda r: self.sampling.train_indices(r, rng), size)
            except VideoDecodeError as e:
                if e.reason.startswith("damaged:") and attempt < DAMAGED_RETRIES:
                    continue  # frames of this clip do not decode: another clip of the same video
                skipped.append(f"{rec.path}\t{e.reason}")
                idx = int(self._rng(index, attempt, stream=1).integers(len(self)))
                continue
            try:
                # stream 2: the augment transform's own draws (made only where there is one)
                aug_rng = self._rng(index, attempt, stream=2) if self.transform.augment is not None else None
                video, label = self.transform(frames, rec.label, rng, aug_rng, size)
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
            video = self.transform(frames, flat, clips)  # (V, 3, T, S, S)
            ok, error = True, ""
        except Exception as e:  # decode or transform (MemoryError, ...): a failed video, never the end of a run
            video = self.transform.failed(self.sampling.num_frames, self.decode.device)
            ok, error = False, e.reason if isinstance(e, VideoDecodeError) else _failure("transform", e)
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
    if split == "train":
        transform = build_train_clips(cfg)
    elif split == "val":  # one view: (3, T, S, S) items
        transform = build_eval_views(cfg, int(cfg.TRAIN.EVAL_VIEWS[0]), int(cfg.TRAIN.EVAL_VIEWS[1]),
                                     eval_uint8=d.EVAL_UINT8, single_view_4d=True)
    else:
        transform = build_eval_views(cfg, int(cfg.TEST.NUM_ENSEMBLE_VIEWS), int(cfg.TEST.NUM_SPATIAL_CROPS),
                                     eval_uint8=d.EVAL_UINT8)
    return VideoDataset(records, transform=transform, **_dataset_kwargs(cfg))


def build_views_dataset(cfg, paths: Sequence[str], num_clips: int, num_crops: int) -> VideoDataset:
    """A test-mode dataset over the video files ``paths`` (label -1, no annotation file): items hold
    ``video`` float32 normalised (V, 3, T, S, S) with V = ``num_clips`` x ``num_crops``, ``ok`` and
    ``error``. Decoding, clip sampling, size limits and normalisation as ``build_dataset``'s."""
    records = [VideoRecord(path=str(p), label=-1, line=i + 1) for i, p in enumerate(paths)]
    return VideoDataset(records, transform=build_eval_views(cfg, num_clips, num_crops, eval_uint8=False),
                        **_dataset_kwargs(cfg))


def _dataset_kwargs(cfg) -> dict:
    """The ``VideoDataset`` arguments every dataset of ``cfg`` shares: clip sampling, decoding (backend,
    threads, device, the per-video size limits) and the seed."""
    d = cfg.DATA
    return dict(sampling=ClipSampling(num_frames=d.NUM_FRAMES, sampling_rate=d.SAMPLING_RATE, target_fps=d.TARGET_FPS),
                decode=DecodeOptions(decoder=d.DECODER, threads=d.DECODER_THREADS, device=d.DECODE_DEVICE,
                                     max_frame_pixels=d.MAX_FRAME_PIXELS, max_aspect_ratio=d.MAX_ASPECT_RATIO),
                seed=cfg.SEED)
