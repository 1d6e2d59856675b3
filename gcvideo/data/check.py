"""Scanning a dataset for videos that cannot be used (library part of tools/check_videos.py).

``check_video(path)`` opens a video the way the dataset does (same backend and
fallbacks) and decodes its first, middle and last frames (``full=True``: every
frame); it returns "" or the reason (``missing: ...``, ``empty: ...``,
``unreadable: ...``, ``no_video_stream: ...``, ``no_frames: ...``).

``check_annotations(csv, ...)`` does that for every video of an annotation file
with a process pool and a progress bar (when not one of its videos exists, an
``AnnotationError`` saying the prefix is probably wrong, before any work), and writes next to it (or into
``out_dir``) ``{name}.broken.txt`` (``path<TAB>reason``) and ``{name}.clean{ext}``:
the annotation file without the lines of broken videos (header, comments and all
other lines unchanged).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from gcvideo.data.annotations import AnnotationError, iter_lines, load_annotations
from gcvideo.data.decoder import FrameCountChanged, VideoDecodeError, open_video
from gcvideo.utils.io import atomic_write_text, path_manager
from gcvideo.utils.parallel import parallel_imap

__all__ = ["check_video", "check_annotations"]


def check_video(path: str, backend: str = "pyav", full: bool = False) -> str:
    """"" when the video decodes, else the reason."""
    try:
        with open_video(path, backend) as reader:
            for _ in range(3):
                n = reader.num_frames
                idx = list(range(n)) if full else sorted({0, n // 2, n - 1})
                try:
                    reader.read(idx)
                    return ""
                except FrameCountChanged:
                    continue
            return "no_frames: frame count keeps changing while decoding"
    except VideoDecodeError as e:
        return e.reason
    except Exception as e:  # anything else a damaged file provokes inside the libraries
        return f"unreadable: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _job(args: Tuple[int, str, str, bool]) -> Tuple[int, str]:
    i, path, backend, full = args
    return i, check_video(path, backend, full)


def check_annotations(csv_path: str, fmt: str = "auto", path_prefix: str = "", label_map: str = "",
                      num_classes: Optional[int] = None, clip_layout: str = "auto", backend: str = "pyav",
                      workers: int = 1, full: bool = False, out_dir: str = "", progress: bool = True) -> Dict:
    """Check every video of ``csv_path``; write the broken list and a cleaned copy. Returns a summary."""
    records = load_annotations(csv_path, fmt=fmt, path_prefix=path_prefix, label_map=label_map,
                               num_classes=num_classes, clip_layout=clip_layout)
    if not any(path_manager.exists(r.path) for r in records):  # stops at the first video found
        raise AnnotationError(
            f"{csv_path}: none of its {len(records)} videos exists (the first would be {records[0].path}); the "
            f"path prefix is probably wrong: give the folder that holds them (--prefix, DATA.PATH_PREFIX; now "
            f"{path_prefix or os.path.dirname(csv_path) or '.'})")
    jobs = [(i, r.path, backend, full) for i, r in enumerate(records)]
    reasons: Dict[int, str] = {}
    for i, reason in parallel_imap(_job, jobs, workers, "checking videos", "video", progress, chunksize=8):
        if reason:
            reasons[i] = reason
    out_dir = out_dir or os.path.dirname(csv_path) or "."
    base = os.path.basename(csv_path)
    stem, ext = os.path.splitext(base)
    broken_path = os.path.join(out_dir, f"{stem}.broken.txt")
    clean_path = os.path.join(out_dir, f"{stem}.clean{ext or '.csv'}")
    bad_lines = {records[i].line for i in reasons}
    clean = "".join(text + "\n" for n, text in iter_lines(csv_path) if n not in bad_lines)  # numbered as read
    broken: List[str] = [f"{records[i].path}\t{reasons[i]}\n" for i in sorted(reasons)]
    path_manager.mkdirs(out_dir)
    atomic_write_text(broken_path, "".join(broken))
    atomic_write_text(clean_path, clean)
    kinds: Dict[str, int] = {}
    for r in reasons.values():
        k = r.split(":", 1)[0]
        kinds[k] = kinds.get(k, 0) + 1
    return {"videos": len(records), "broken": len(reasons), "kinds": kinds, "broken_list": broken_path,
            "clean_csv": clean_path}
