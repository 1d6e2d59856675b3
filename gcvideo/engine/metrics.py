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
import textwrap
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch

from gcvideo.utils.io import atomic_write_bytes, atomic_write_text

__all__ = ["EvalResult", "combine_views", "compute_metrics", "write_report", "format_summary", "per_class_accuracy",
           "confused_pairs", "format_class_report", "confusion_figure"]

# The confusion-matrix figure: inches per class (shrunk to fit), its largest side, and the smallest
# class cell that still gets its name on the axes (at a readable font size).
CONFUSION_CELL_IN = 0.4
CONFUSION_MAX_IN = 24.0
CONFUSION_MIN_NAMED_CELL_IN = 0.1
CONFUSION_DPI = 100


@dataclass
class EvalResult:
    """Per-video results (sorted by dataset index) and the metrics over them: what ``evaluate``
    returns and ``write_report`` writes. Every per-video field has one entry a video."""
    indices: List[int]
    scores: torch.Tensor  # (N, K) combined over views; zeros for failed videos
    labels: torch.Tensor  # (N,) int64; -1 = unknown
    ok: torch.Tensor  # (N,) bool
    paths: List[str]
    errors: List[str]  # "" for a decodable video
    metrics: Dict = field(default_factory=dict)  # compute_metrics over scores, labels, ok

    def __post_init__(self) -> None:
        n = len(self.indices)
        sizes = {"scores": len(self.scores), "labels": len(self.labels), "ok": len(self.ok),
                 "paths": len(self.paths), "errors": len(self.errors)}
        if any(v != n for v in sizes.values()) or self.scores.dim() != 2:
            raise ValueError(f"EvalResult of {n} videos (indices) has scores of shape {tuple(self.scores.shape)}, "
                             f"{', '.join(f'{k} {v}' for k, v in sizes.items() if k != 'scores')}: every per-video "
                             "field needs one entry a video, scores (N, K)")


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


def per_class_accuracy(pred: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor,
                       class_names: Sequence[str]) -> List[Dict]:
    """Top-1 accuracy of every class with labelled videos, worst first (ties: class index).

    ``pred`` (N,) top-1 classes, ``labels`` (N,) (-1 = unknown, left out), ``ok`` (N,) (a failed video
    counts wrong, as in the "all" metrics). Returns [{"index", "name", "videos", "correct", "failed", "top1"}]
    with top1 in percent.
    """
    known = labels >= 0
    hit = (pred == labels) & ok & known
    rows = []
    for c in torch.unique(labels[known]).tolist():
        mask = labels == c
        n, correct = int(mask.sum()), int(hit[mask].sum())
        rows.append({"index": c, "name": class_names[c], "videos": n, "correct": correct,
                     "failed": int((mask & ~ok).sum()), "top1": 100.0 * correct / n})
    rows.sort(key=lambda r: (r["top1"], r["index"]))
    return rows


def confused_pairs(cm: torch.Tensor, class_names: Sequence[str], top: int = 10) -> List[Dict]:
    """The ``top`` largest off-diagonal counts of ``cm`` (rows = true class, columns = predicted),
    largest first (ties: true, then predicted index): [{"true", "predicted", "videos", "share"}],
    share = percent of the true class's videos in ``cm``."""
    off = cm.clone()
    off.fill_diagonal_(0)
    rows_total = cm.sum(1)
    pairs = [(-int(off[t, p]), t, p) for t, p in off.nonzero().tolist()]
    return [{"true": class_names[t], "predicted": class_names[p], "videos": -neg,
             "share": 100.0 * -neg / int(rows_total[t])} for neg, t, p in sorted(pairs)[:top]]


def format_class_report(per_class: List[Dict], pairs: List[Dict]) -> str:
    """report.txt's per-class accuracy (worst first) and most confused pairs."""
    if not per_class:
        return "per-class accuracy: no labelled videos\n"
    width = min(40, max(len(r["name"]) for r in per_class))
    lines = [f"per-class top-1 accuracy, worst first ({len(per_class)} classes with videos; failed videos "
             "counted wrong):"]
    for r in per_class:
        failed = f", {r['failed']} failed" if r["failed"] else ""
        lines.append(f"  {r['name']:<{width}s} {r['top1']:6.2f}%  {r['correct']}/{r['videos']}{failed}")
    if pairs:
        lines.append(f"most confused pairs (true -> predicted, decodable videos), top {len(pairs)}:")
        width = min(80, max(len(f"{p['true']} -> {p['predicted']}") for p in pairs))
        lines += [f"  {p['true'] + ' -> ' + p['predicted']:<{width}s} {p['videos']} "
                  f"video{'s' if p['videos'] > 1 else ''} ({p['share']:.1f}% of {p['true']})" for p in pairs]
    else:
        lines.append("most confused pairs: none (every decodable video's top-1 is its class)")
    return "\n".join(lines) + "\n"


def confusion_figure(cm: torch.Tensor, class_names: Sequence[str], title: str):
    """A matplotlib figure of ``cm`` (rows = true class, columns = predicted) over the classes present
    (a video of theirs or a prediction), rows normalised, named on the axes while a class gets at
    least CONFUSION_MIN_NAMED_CELL_IN inches; counts written in the cells up to 30 classes.
    Sides at most CONFUSION_MAX_IN inches (+1 for the colour bar). Returns (figure, present class indices)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = ((cm.sum(0) > 0) | (cm.sum(1) > 0)).nonzero().flatten().tolist()
    k = len(present)
    sub = cm[present][:, present]  # (k, k)
    rows = sub.float() / sub.sum(1, keepdim=True).clamp_min(1)  # row-normalised
    names = [class_names[c] for c in present]
    margin = min(3.0, 0.07 * max((len(n) for n in names), default=0))  # inches for the names
    cell = min(CONFUSION_CELL_IN, (CONFUSION_MAX_IN - 1.5 - margin) / max(k, 1))
    named = cell >= CONFUSION_MIN_NAMED_CELL_IN
    if not named:
        margin, cell = 0.0, (CONFUSION_MAX_IN - 1.5) / k
    side = min(CONFUSION_MAX_IN, max(4.0, 1.5 + margin + k * cell))
    fig, ax = plt.subplots(figsize=(side + 1.0, side))
    title = textwrap.fill(title, width=int((side + 1.0) * 9))  # ~9 characters an inch at the default size
    if k == 0:
        ax.set_axis_off()
        ax.set_title(f"{title}\nno decodable labelled videos")
        return fig, present
    im = ax.imshow(rows.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\n{k} of {len(class_names)} classes present" if k < len(class_names) else title)
    if named:
        font = max(5.0, min(9.0, 0.7 * 72 * cell))
        ax.set_xticks(range(k))
        ax.set_yticks(range(k))
        ax.set_xticklabels(names, rotation=90, fontsize=font)
        ax.set_yticklabels(names, fontsize=font)
        if k <= 30:
            for i in range(k):
                for j in range(k):
                    if sub[i, j]:
                        ax.text(j, i, str(int(sub[i, j])), ha="center", va="center", fontsize=font,
                                color="white" if rows[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of the true class's videos")
    fig.tight_layout()
    return fig, present


def _confusion_png(cm: torch.Tensor, class_names: Sequence[str], title: str) -> bytes:
    import matplotlib.pyplot as plt

    fig, _ = confusion_figure(cm, class_names, title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=CONFUSION_DPI)
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


def write_report(out_dir: str, result: EvalResult, class_names: Sequence[str], views: str,
                 extra: Optional[Dict] = None) -> Dict[str, str]:
    """Write ``result``'s predictions.csv, failed_videos.txt, confusion_matrix.png, report.json, report.txt
    (the summary, per-class accuracy worst first, the most confused pairs, the failed videos). ``views``
    names the views in the summary (e.g. "10x3 views"); ``extra`` goes into report.json.

    Returns the written paths by kind.
    """
    scores, labels, ok, paths = result.scores, result.labels, result.ok, result.paths
    errors, indices, metrics = result.errors, result.indices, result.metrics
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
    per_class = per_class_accuracy(pred, labels, ok, class_names)
    pairs = confused_pairs(cm, class_names)
    report = {"views": views, "metrics": metrics, "num_failed": len(failed), **(extra or {}),
              "per_class": per_class, "confused_pairs": pairs}
    atomic_write_text(files["json"], json.dumps(report, indent=2) + "\n")
    atomic_write_text(files["text"], format_summary(metrics, views) + "\n" + format_class_report(per_class, pairs)
                      + "".join(f"failed: {line}\n" for line in failed))
    return files
