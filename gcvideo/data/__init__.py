"""Kinetics-style video data: annotations, decoding, clip sampling, datasets, the toy set.

Public API (see docs/data.md):

* ``build_dataset(cfg, split)``: the dataset of "train" | "val" | "test" (item contract in
  docs/DESIGN.md); ``build_views_dataset(cfg, paths, num_clips, num_crops)``: test views of video files.
* ``VideoDataset(records, *, transform, sampling, decode, seed)``: decodes (``DecodeOptions``, the
  frames ``ClipSampling`` asks for) and hands the frames to ``transform``, a ``TrainClips`` or an
  ``EvalViews`` (gcvideo.data.clip_transforms).
* ``decode_frames(path, indices, backend="pyav", size=None)``: uint8 ``(len(indices), H, W, 3)``, exact or an error.
* ``open_video(path, backend)``: a reader to decode several index sets from one open.
* ``BrokenVideoTracker(output_dir, num_videos, max_fraction)``: the engine's bookkeeping of
  training videos that failed (test accuracy with failures: ``gcvideo.engine.compute_metrics``).
* ``load_annotations`` (a ``VideoRecords`` table), ``read_label_map``: the annotation formats.
* ``collate_train``: the training loader's collate (K clips per video as K batch rows).
* ``make_toy_dataset``: the synthetic motion dataset (gcvideo.data.toy).

Names are imported lazily, so that the command-line tools (toy generator, video checker)
do not pay for importing torchvision.
"""
import importlib

_EXPORTS = {
    "build_dataset": "dataset", "build_views_dataset": "dataset", "VideoDataset": "dataset", "collate_train": "dataset",
    "TrainClips": "clip_transforms", "EvalViews": "clip_transforms", "ClipSampling": "sampling",
    "DecodeOptions": "decoder",
    "decode_frames": "decoder", "open_video": "decoder", "VideoReader": "decoder",
    "VideoDecodeError": "decoder", "FrameCountChanged": "decoder",
    "BrokenVideoTracker": "broken", "TooManyBrokenVideos": "broken",
    "parse_skipped": "broken",
    "load_annotations": "annotations", "read_label_map": "annotations", "class_key": "annotations",
    "AnnotationError": "annotations", "VideoRecord": "annotations", "VideoRecords": "annotations",
    "train_clip_indices": "sampling", "view_clip_indices": "sampling",
    "make_toy_dataset": "toy",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"gcvideo.data.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gcvideo.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
