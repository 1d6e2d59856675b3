"""Use a trained model on video files: top-k classes with multi-view testing.

Reference: the test protocol of Y. Cao et al., "Global Context Networks" (TPAMI 2020),
Sec. 5.3 (after Feichtenhofer et al., SlowFast, ICCV 2019): 10 temporal clips x 3
spatial crops of the short side resized to the crop size; view scores are averaged
(softmax probabilities, ``prob_mean``).

Decoding, clip sampling and the test views are the data pipeline's
(``gcvideo.data.build_views_dataset``: ``VideoDataset`` in test mode on the given paths); a file
that cannot be decoded gives a result with ``ok = False`` and the decoder's reason, and the other
videos go on.
"""
from __future__ import annotations

import json
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from gcvideo.engine import combine_views
from gcvideo.utils.device import select_device
from gcvideo.utils.progress import progress_bar
from gcvideo.utils.errors import UsageError

__all__ = ["parse_views", "decode_views", "predict_videos", "format_predictions", "resolve_device", "model_device"]


resolve_device = select_device  # "auto" | "cpu" | "cuda" | "cuda:1" | a torch.device


def parse_views(text: str) -> Tuple[int, int]:
    """``"10x3"`` -> (10 clips, 3 crops); crops must be 1 or 3."""
    try:
        clips, crops = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"views {text!r}: expected CLIPSxCROPS, e.g. 10x3 or 1x1") from None
    if clips < 1 or crops not in (1, 3):
        raise UsageError(f"views {text!r}: need at least 1 clip and 1 or 3 crops")
    return clips, crops


def decode_views(dataset, progress: bool = False) -> List[Dict]:
    """The items of ``dataset`` (``gcvideo.data.build_views_dataset``), in order: the test views of each
    video; ``progress``: a bar on stderr counting the videos decoded."""
    bar = progress_bar(total=len(dataset), desc="decode", unit="video") if progress else None
    items = []
    for i in range(len(dataset)):
        items.append(dataset[i])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return items


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (cpu for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def predict_videos(model: nn.Module, dataset, class_names: Sequence[str], topk: int = 5,
                   device: Optional[str] = None, max_batch_views: int = 10, log=None,
                   progress: bool = False) -> List[Dict]:
    """Top-``topk`` classes of each video of ``dataset`` (``gcvideo.data.build_views_dataset``):
    [{"path", "ok", "error", "views", "protocol", "top": [{"index", "name", "prob"}]}] ("protocol": the
    dataset's TEST.VIEW_PROTOCOL, whose frames and crops the views are), probabilities = mean
    over views of the softmax (``prob_mean``). The views go to ``device`` (None: the model's) in
    chunks of ``max_batch_views``; ``class_names[i]`` names logit i. ``progress``: a bar on stderr
    counting the videos done (decoded and classified), with a rate and an ETA. ``log``: called with one
    ``error: path: reason`` line per video that cannot be read (``gcvideo.utils.progress.progress_write``
    keeps it off the bar's line)."""
    device = resolve_device(device) if device is not None else model_device(model)
    model.eval()
    views = f"{dataset.transform.num_clips}x{dataset.transform.num_crops}"
    protocol = getattr(dataset.transform, "protocol", "gcvideo")
    k = min(topk, len(class_names))
    results = []
    bar = progress_bar(total=len(dataset), desc=f"predict ({views} views)", unit="video") if progress else None
    for i in range(len(dataset)):
        item = dataset[i]
        res = {"path": item["path"], "ok": bool(item["ok"]), "error": item["error"], "views": views,
               "protocol": protocol, "top": []}
        if item["ok"]:
            x = item["video"]  # (V, 3, T, S, S)
            logits = torch.cat([model(x[a:a + max_batch_views].to(device)).float().cpu()
                                for a in range(0, x.shape[0], max_batch_views)])  # (V, K)
            probs = combine_views(logits.unsqueeze(0), "prob_mean")[0]  # (K,)
            p, idx = probs.topk(k)
            res["top"] = [{"index": int(j), "name": class_names[int(j)], "prob": float(q)} for q, j in zip(p, idx)]
        elif log is not None:
            log(f"error: {item['path']}: {item['error']}")
        results.append(res)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
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
        lines.append(f"{r['path']} ({r['views']} views, {r.get('protocol', 'gcvideo')} protocol):")
        for rank, t in enumerate(r["top"], 1):
            lines.append(f"  {rank}. {t['name']:<40s} {100.0 * t['prob']:6.2f}%")
    return "\n".join(lines)
