"""Kinetics-style video data: annotations, decoding, clip sampling, datasets, the toy set.

Public API (see docs/data.md):

* ``build_dataset(cfg, split)``: the dataset of "train" | "val" | "test" (item contract in
  docs/DESIGN.md).
* ``decode_frames(path, indices, backend="decord")``: uint8 ``(len(indices), H, W, 3)``.
* ``open_video(path, backend)``: a reader to decode several index sets from one open.
* ``BrokenVideoTracker(output_dir, num_videos, max_fraction)``: the engine's bookkeeping of
  training videos that failed; ``accuracy_with_failures`` for test accuracy with failures.
* ``load_annotations``, ``read_label_map``: the annotation formats.
* ``make_toy_dataset``: the synthetic motion dataset (gcvideo.data.toy).
"""
from gcvideo.data.annotations import (AnnotationError, VideoRecord, class_key, load_annotations,
                                      read_label_map)
from gcvideo.data.broken import (BrokenVideoTracker, TooManyBrokenVideos, accuracy_with_failures,
                                 parse_skipped)
from gcvideo.data.dataset import VideoDataset, build_dataset
from gcvideo.data.decoder import (FrameCountChanged, VideoDecodeError, VideoReader, decode_frames,
                                  open_video)
from gcvideo.data.sampling import view_clip_indices, train_clip_indices

__all__ = [
    "build_dataset", "VideoDataset", "decode_frames", "open_video", "VideoReader", "VideoDecodeError",
    "FrameCountChanged", "BrokenVideoTracker", "TooManyBrokenVideos", "accuracy_with_failures",
    "parse_skipped", "load_annotations", "read_label_map", "class_key", "AnnotationError", "VideoRecord",
    "train_clip_indices", "view_clip_indices", "make_toy_dataset",
]


def make_toy_dataset(*args, **kwargs):
    """See :func:`gcvideo.data.toy.make_toy_dataset` (imported lazily)."""
    from gcvideo.data.toy import make_toy_dataset as _make

    return _make(*args, **kwargs)
