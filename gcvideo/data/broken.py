"""Bookkeeping for videos that cannot be decoded.

Training: the dataset replaces a broken video by another one and reports it in
the item's ``skipped`` field (``path<TAB>reason`` lines). The engine, in the main
process, feeds every batch's ``skipped`` to :class:`BrokenVideoTracker`, which logs
each path once, lists it in ``OUTPUT_DIR/broken_videos.txt`` and stops the run
(:class:`TooManyBrokenVideos`) once more than ``max_fraction`` of the videos failed.

Testing: nothing is replaced; items carry ``ok``/``error``. ``accuracy_with_failures``
computes top-k accuracy over all listed videos (a failed video counts as wrong)
and over the decodable ones.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch

from gcvideo.utils.io import atomic_write_text, path_manager

__all__ = ["BrokenVideoTracker", "TooManyBrokenVideos", "parse_skipped", "accuracy_with_failures",
           "BROKEN_LIST_NAME"]

BROKEN_LIST_NAME = "broken_videos.txt"
logger = logging.getLogger(__name__)


class TooManyBrokenVideos(RuntimeError):
    """More than DATA.MAX_BROKEN_FRACTION of the videos could not be decoded."""


def parse_skipped(skipped: Union[str, Iterable[str], None]) -> List[tuple]:
    """``skipped`` field(s) of one item or a collated batch -> [(path, reason), ...]."""
    if skipped is None:
        return []
    texts = [skipped] if isinstance(skipped, str) else list(skipped)
    out = []
    for text in texts:
        for line in str(text).splitlines():
            if not line.strip():
                continue
            path, _, reason = line.partition("\t")
            out.append((path, reason or "unknown"))
    return out


class BrokenVideoTracker:
    """Counts distinct broken videos, writes them down, stops past a share.

    Args:
        output_dir: folder for ``broken_videos.txt`` (any iopath location); None or "" =
            count and log only. An existing list there (from a run being resumed) is read
            and counted: its entries for ``videos`` only, when given.
        num_videos: videos in the training set (the share's denominator).
        max_fraction: DATA.MAX_BROKEN_FRACTION; more than ``max_fraction * num_videos``
            distinct broken videos raises TooManyBrokenVideos.
        videos: the paths of the current annotation file (None = count every listed entry), so
            that a rerun after cleaning the list does not count videos it no longer has.

    Use from the main process only: ``tracker.update(batch["skipped"])`` after every
    batch (a str or a list of str). Returns the newly seen (path, reason) pairs.
    """

    def __init__(self, output_dir: Optional[str], num_videos: int, max_fraction: float = 0.05,
                 log: Optional[logging.Logger] = None, videos: Optional[Iterable[str]] = None):
        if num_videos <= 0:
            raise ValueError(f"num_videos = {num_videos}; expected the (positive) size of the dataset")
        self.output_dir = output_dir
        self.num_videos = int(num_videos)
        self.max_fraction = float(max_fraction)
        if output_dir:
            self.path = os.path.join(output_dir, BROKEN_LIST_NAME) if "://" not in output_dir else \
                output_dir.rstrip("/") + "/" + BROKEN_LIST_NAME
        else:  # counting only (e.g. processes other than rank 0)
            self.path = ""
        self.log = log or logger
        self.broken: Dict[str, str] = {}
        known = set(videos) if videos is not None else None
        if self.path and path_manager.exists(self.path):
            with path_manager.open(self.path, "r") as f:
                for path, reason in parse_skipped(f.read()):
                    if known is None or path in known:
                        self.broken.setdefault(path, reason)

    @property
    def num_broken(self) -> int:
        return len(self.broken)

    @property
    def limit(self) -> float:
        """The run stops when ``num_broken`` exceeds this."""
        return self.max_fraction * self.num_videos

    def update(self, skipped: Union[str, Sequence[str], None]) -> List[tuple]:
        new = []
        for path, reason in parse_skipped(skipped):
            if path in self.broken:
                continue
            self.broken[path] = reason
            new.append((path, reason))
            self.log.warning("broken video skipped (%d so far, limit %g): %s: %s",
                             self.num_broken, self.limit, path, reason)
        if new and self.path:
            text = "".join(f"{p}\t{r}\n" for p, r in self.broken.items())
            atomic_write_text(self.path, text)  # the whole list, never half-written
        self.check()
        return new

    add_skipped = update  # the name the engine uses


    def check(self) -> None:
        if self.num_broken > self.limit:
            raise TooManyBrokenVideos(
                f"{self.num_broken} of {self.num_videos} videos could not be decoded, more than "
                f"DATA.MAX_BROKEN_FRACTION = {self.max_fraction:g} ({self.limit:g} videos); they are listed "
                f"with reasons in {self.path or 'broken_videos.txt of the main process'}. Fix or remove them (tools/check_videos.py writes a cleaned CSV) "
                "or raise DATA.MAX_BROKEN_FRACTION.")


def accuracy_with_failures(scores: torch.Tensor, labels: torch.Tensor, ok: torch.Tensor,
                           topk: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracy over all listed videos and over the decodable ones.

    Args:
        scores: ``(N, C)`` video-level scores (rows of failed videos are ignored).
        labels: ``(N,)`` class indices; rows with label < 0 (unlabelled) are left out of both.
        ok: ``(N,)`` bool, the items' ``ok`` field.
    Returns:
        ``{"top1_all", "top1_decodable", "top5_all", ...}`` in percent (``all``: failed
        videos count as wrong; ``decodable``: failed videos left out; NaN if none),
        plus ``num_videos``, ``num_failed``, ``num_unlabeled`` (counts over all N rows).
    """
    scores = torch.as_tensor(scores)
    labels = torch.as_tensor(labels).long().view(-1)
    ok = torch.as_tensor(ok).bool().view(-1)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0] or ok.shape[0] != labels.shape[0]:
        raise ValueError(f"scores {tuple(scores.shape)}, labels {tuple(labels.shape)}, ok {tuple(ok.shape)}: "
                         "expected (N, C), (N,), (N,)")
    labelled = labels >= 0
    out: Dict[str, float] = {"num_videos": int(labels.numel()), "num_failed": int((~ok).sum()),
                             "num_unlabeled": int((~labelled).sum())}
    n_all = int(labelled.sum())
    n_ok = int((labelled & ok).sum())
    for k in topk:
        kk = min(int(k), scores.shape[1])
        top = scores.topk(kk, dim=1).indices if scores.numel() else torch.zeros((0, kk), dtype=torch.long)
        hit = (top == labels.view(-1, 1)).any(dim=1) & ok & labelled
        out[f"top{k}_all"] = 100.0 * int(hit.sum()) / n_all if n_all else float("nan")
        out[f"top{k}_decodable"] = 100.0 * int(hit.sum()) / n_ok if n_ok else float("nan")
    return out
