"""Use a trained model on video files: top-k classes with multi-view testing.

Reference: the test protocol of Y. Cao et al., "Global Context Networks" (TPAMI 2020),
Sec. 5.3 (after Feichtenhofer et al., SlowFast, ICCV 2019): 10 temporal clips x 3
spatial crops of the short side resized to the crop size; view scores are averaged
(softmax probabilities, ``prob_mean``).

Decoding, clip sampling and the test views are the data pipeline's (``gcvideo.data``:
``VideoDataset`` in test mode on the given paths); a file that cannot be decoded gives
a result with ``ok = False`` and the decoder's reason, and the other videos go on.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from gcvideo.engine.tester import class_names as label_map_names
from gcvideo.utils.device import select_device

from gcvideo.models import build_model_from_checkpoint

__all__ = ["parse_views", "video_views_dataset", "decode_views", "predict_videos", "format_predictions",
           "resolve_device"]


resolve_device = select_device  # "auto" | "cpu" | "cuda" | "cuda:1" | a torch.device


def parse_views(text: str) -> Tuple[int, int]:
    """``"10x3"`` -> (10 clips, 3 crops); crops must be 1 or 3."""
    try:
        clips, crops = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"views {text!r}: expected CLIPSxCROPS, e.g. 10x3 or 1x1") from None
    if clips < 1 or crops not in (1, 3):
        raise ValueError(f"views {text!r}: need at least 1 clip and 1 or 3 crops")
    return clips, crops


def video_views_dataset(cfg, paths: Sequence[str], num_clips: int, num_crops: int):
    """A test-mode ``gcvideo.data.VideoDataset`` over ``paths`` (label -1): items hold
    ``video`` (V, 3, T, S, S) with V = clips x crops, ``ok`` and ``error``."""
    from gcvideo.data import VideoDataset, VideoRecord

    d = cfg.DATA
    records = [VideoRecord(path=str(p), label=-1, line=i + 1) for i, p in enumerate(paths)]
    return VideoDataset(records, train=False, decoder=d.DECODER,
                        decoder_threads=d.get("DECODER_THREADS", 1), num_frames=d.NUM_FRAMES,
                        sampling_rate=d.SAMPLING_RATE, target_fps=d.TARGET_FPS, test_crop=d.TEST_CROP_SIZE,
                        mean=d.MEAN, std=d.STD, num_clips=num_clips, num_crops=num_crops, seed=cfg.SEED)


def decode_views(cfg, paths: Sequence[str], num_clips: int, num_crops: int) -> List[Dict]:
    """The test views of each video (list of dataset items, in order)."""
    ds = video_views_dataset(cfg, paths, num_clips, num_crops)
    return [ds[i] for i in range(len(ds))]


@torch.no_grad()
def predict_videos(cfg, checkpoint: str, videos: Sequence[str], views: Tuple[int, int] = (10, 3), topk: int = 5,
                   device: str = "auto", max_batch_views: int = 10, model: Optional[nn.Module] = None,
                   class_names: Optional[List[str]] = None, log=None) -> List[Dict]:
    """Top-``topk`` classes of each video: [{"path", "ok", "error", "views", "top": [{"index", "name",
    "prob"}]}], probabilities = mean over views of the softmax (``prob_mean``)."""
    from gcvideo.engine import combine_views

    names = class_names if class_names is not None else label_map_names(cfg.DATA.LABEL_MAP, cfg.MODEL.NUM_CLASSES)
    device = resolve_device(device)
    model = model if model is not None else build_model_from_checkpoint(cfg, checkpoint).to(device)
    model.eval()
    ds = video_views_dataset(cfg, videos, *views)
    k = min(topk, cfg.MODEL.NUM_CLASSES)
    results = []
    for i in range(len(ds)):
        item = ds[i]
        res = {"path": item["path"], "ok": bool(item["ok"]), "error": item["error"], "views": f"{views[0]}x{views[1]}",
               "top": []}
        if item["ok"]:
            x = item["video"]  # (V, 3, T, S, S)
            logits = torch.cat([model(x[a:a + max_batch_views].to(device)).float().cpu()
                                for a in range(0, x.shape[0], max_batch_views)])  # (V, K)
            probs = combine_views(logits.unsqueeze(0), "prob_mean")[0]  # (K,)
            p, idx = probs.topk(k)
            res["top"] = [{"index": int(j), "name": names[int(j)], "prob": float(q)} for q, j in zip(p, idx)]
        elif log is not None:
            log(f"error: {item['path']}: {item['error']}")
        results.append(res)
    return results


def format_predictions(results: List[Dict], as_json: bool = False) -> str:
    """Human-readable lines (or JSON) for ``predict_videos`` results."""
    if as_json:
        return json.dumps(results, indent=1)
    lines = []
    for r in results:
        if not r["ok"]:
            lines.append(f"{r['path']}: ERROR {r['error']}")
            continue
        lines.append(f"{r['path']} ({r['views']} views):")
        for rank, t in enumerate(r["top"], 1):
            lines.append(f"  {rank}. {t['name']:<40s} {100.0 * t['prob']:6.2f}%")
    return "\n".join(lines)
