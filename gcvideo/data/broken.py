"""Bookkeeping for videos that cannot be decoded.

Training: the dataset replaces a broken video by another one and reports it in
the item's ``skipped`` field (``path<TAB>reason`` lines). The engine, in the main
process, feeds every batch's ``skipped`` to :class:`BrokenVideoTracker`, which logs
each path once, lists it in ``OUTPUT_DIR/broken_videos.txt`` and stops the run
(:class:`TooManyBrokenVideos`) once more than ``max_fraction`` of the videos failed.

Testing: nothing is replaced; items carry ``ok``/``error``; the engine's ``compute_metrics``
gives top-k accuracy over all listed videos (a failed video counts as wrong) and over the
decodable ones.
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Iterable, List, Optional, Sequence, Union

from gcvideo.utils.errors import UserError
from gcvideo.utils.io import atomic_write_text, path_manager

__all__ = ["BrokenVideoTracker", "TooManyBrokenVideos", "parse_skipped", "BROKEN_LIST_NAME"]

BROKEN_LIST_NAME = "broken_videos.txt"
logger = logging.getLogger(__name__)


class TooManyBrokenVideos(UserError, RuntimeError):
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
