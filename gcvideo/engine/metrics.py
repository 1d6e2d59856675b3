"""Multi-view score aggregation, accuracy metrics and the evaluation report files.

Pure functions over tensors and lists, so they can be checked against
hand-computed numbers. Failed videos (``ok=False``: could not be decoded) have no
scores; accuracy is reported twice: over all listed videos with failed ones
counted wrong (the honest number) and over the decodable ones only.
"""
from __future__ import annotations

import csv
import io
import json
import os
from typing import Dict, List, Optional, Sequence

import torch

from gcvideo.utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["combine_views", "compute_metrics", "write_report", "format_summary"]


def combine_views(logits: torch.Tensor, method: str) -> torch.Tensor:
    """(N, V, K) per-view logits -> (N, K) video scores.

    prob_mean: mean over views of softmax probabilities; logit_mean: mean of
    logits; prob_max: per-class max over views of probabilities.
    """
    if logits.dim() != 3:
        raise ValueError(f"expected per-view logits (N, V, K), got shape {tuple(logits.shape)}")
    logits = logits.float()
    if method == "prob_mean":
        return logits.softmax(-1).mean(1)
    if method == "logit_mean":
        return logits.mean(1)
    if method == "prob_max":
        return logits.softmax(-1).amax(1)
    raise ValueError(f"TEST.ENSEMBLE_METHOD = {method!r}: expected prob_mean, logit_mean or prob_max")


def _accuracies(correct1: torch.Tensor, correctk: torch.Tensor, labels: torch.Tensor,
                num_classes: int, k: int) -> Dict[str, float]:
    n = len(labels)
    if n == 0:
        return {"top1": float("nan"), f"top{k}": float("nan"), "mean_class_acc": float("nan"), "videos": 0}
    per_class = []
    for c in range(num_classes):
        mask = labels == c
        if mask.any():
            per_class.append(correct1[mask].float().mean().item())
    return {"top1": 100.0 * correct1.float().mean().item(), f"top{k}": 100.0 * correctk.float().mean().item(),
            "mean_class_acc": 100.0 * sum(per_class) / len(per_class), "videos": n}


def compute_metrics(scores: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor, num_classes: int,
                    topk: int = 5) -> Dict[str, Dict[str, float]]:
    """Top-1, top-k and mean per-class accuracy (percent).

    Args:
        scores: (N, K) video scores (rows of failed videos are ignored).
        labels: (N,) int64 class indices; -1 = unknown (left out of accuracy).
        ok: (N,) bool, False for videos that could not be decoded.
    Returns ``{"all": {...}, "decodable": {...}}``: "all" counts failed videos as
    wrong, "decodable" leaves them out. Each has top1, top{topk} (top5), mean_class_acc and
    videos (labelled ones); "all" also has failed (labelled videos that failed) and unlabeled.
    """
    labels, ok = labels.long(), ok.bool()
    known = labels >= 0
    k = min(topk, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # (N, k)
    hit1 = (top[:, 0] == labels) & ok
    hitk = (top == labels[:, None]).any(1) & ok
    out = {"all": _accuracies(hit1[known], hitk[known], labels[known], num_classes, topk),
           "decodable": _accuracies(hit1[known & ok], hitk[known & ok], labels[known & ok], num_classes, topk)}
    out["all"]["failed"] = int((~ok & known).sum())
    out["all"]["unlabeled"] = int((~known).sum())
    return out


def confusion_matrix(pred: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts, rows = true class, columns = predicted."""
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    keep = labels >= 0
    cm.index_put_((labels[keep], pred[keep]), torch.ones(int(keep.sum()), dtype=torch.int64), accumulate=True)
    return cm


def _confusion_png(cm: torch.Tensor, class_names: Sequence[str], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = cm.shape[0]
    rows = cm.float() / cm.sum(1, keepdim=True).clamp_min(1)  # row-normalised
    size = min(4 + 0.35 * k, 24)
    fig, ax = plt.subplots(figsize=(size, size))
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 40:
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(class_names, rotation=90, fontsize=7)
        ax.set_yticklabels(class_names, fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def format_summary(metrics: Dict[str, Dict[str, float]], views: str) -> str:
    a, d = metrics["all"], metrics["decodable"]
    lines = [f"{views}: top-1 {a['top1']:.2f}%  top-5 {a['top5']:.2f}%  mean class accuracy "
             f"{a['mean_class_acc']:.2f}%  over {a['videos']} videos (failed counted wrong)"]
    if a["failed"]:
        lines.append(f"{a['failed']} videos could not be decoded; over the {d['videos']} decodable ones: "
                     f"top-1 {d['top1']:.2f}%  top-5 {d['top5']:.2f}%  mean class accuracy "
                     f"{d['mean_class_acc']:.2f}%")
    return "\n".join(lines)


def write_report(out_dir: str, *, scores: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor,
                 paths: List[str], errors: List[str], indices: List[int], class_names: Sequence[str],
                 metrics: Dict, views: str, extra: Optional[Dict] = None) -> Dict[str, str]:
    """Write predictions.csv, failed_videos.txt, confusion_matrix.png, report.json, report.txt.

    Returns the written paths by kind.
    """
    k = min(5, scores.shape[1])
    top = scores.topk(k, dim=1)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "path", "label", "ok"] + [f"{c}{i + 1}" for i in range(k) for c in ("pred", "score")])
    for r in range(len(paths)):
        label = int(labels[r])
        row = [indices[r], paths[r], class_names[label] if label >= 0 else "", int(bool(ok[r]))]
        if ok[r]:
            for j in range(k):
                row += [class_names[int(top.indices[r, j])], f"{float(top.values[r, j]):.5f}"]
        w.writerow(row)
    files = {"predictions": os.path.join(out_dir, "predictions.csv"),
             "failed": os.path.join(out_dir, "failed_videos.txt"),
             "confusion": os.path.join(out_dir, "confusion_matrix.png"),
             "json": os.path.join(out_dir, "report.json"),
             "text": os.path.join(out_dir, "report.txt")}
    atomic_write_text(files["predictions"], buf.getvalue())
    failed = [f"{paths[r]}\t{errors[r]}" for r in range(len(paths)) if not ok[r]]
    atomic_write_text(files["failed"], "".join(line + "\n" for line in failed))
    pred = top.indices[:, 0].clone()
    cm = confusion_matrix(pred[ok], labels[ok], len(class_names))
    atomic_write_bytes(files["confusion"], _confusion_png(cm, class_names, f"confusion ({views})"))
    report = {"views": views, "metrics": metrics, "num_failed": len(failed), **(extra or {})}
    atomic_write_text(files["json"], json.dumps(report, indent=2) + "\n")
    atomic_write_text(files["text"], format_summary(metrics, views) + "\n" + "".join(
        f"failed: {line}\n" for line in failed))
    return files
