"""Scanning a dataset for videos that cannot be used (library part of tools/check_videos.py).

``check_video(path)`` opens a video the way the dataset does (same backend and
fallbacks) and decodes its first, middle and last frames (``full=True``: every
frame); it returns "" or the reason (``missing: ...``, ``empty: ...``,
``unreadable: ...``, ``no_video_stream: ...``, ``no_frames: ...``).

``check_annotations(csv, CheckOptions(...))`` does that for every video of an annotation file
with a process pool and a progress bar (when not one of its videos exists, an
``AnnotationError`` saying the prefix is probably wrong, before any work), and writes next to it (or into
``out_dir``) ``{name}.broken.txt`` (``path<TAB>reason``) and ``{name}.clean{ext}``:
the annotation file without the lines of broken videos (header, comments and all
other lines unchanged).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from gcvideo.data.annotations import CLIP_LAYOUTS, FORMATS, AnnotationError, iter_lines, load_annotations
from gcvideo.data.decoder import BACKENDS, FrameCountChanged, VideoDecodeError, open_video
from gcvideo.utils.errors import UsageError
from gcvideo.utils.io import atomic_write_text, path_manager
from gcvideo.utils.parallel import parallel_imap

__all__ = ["check_video", "check_annotations", "CheckOptions"]


@dataclass(frozen=True)
class CheckOptions:
    """How ``check_annotations`` reads an annotation file (``load_annotations``' arguments) and decodes
    its videos (tools/check_videos.py's options); a value it cannot use is a ``UsageError``."""
    fmt: str = "auto"  # DATA.FORMAT: one of annotations.FORMATS
    path_prefix: str = ""  # DATA.PATH_PREFIX; "" = the annotation file's folder
    label_map: str = ""  # DATA.LABEL_MAP, for class-name labels
    num_classes: Optional[int] = None  # labels must be below this
    clip_layout: str = "auto"  # DATA.CLIP_LAYOUT: one of annotations.CLIP_LAYOUTS
    backend: str = "pyav"  # DATA.DECODER: one of decoder.BACKENDS
    full: bool = False  # decode every frame (else the first, middle and last)

    def __post_init__(self):
        for name, value, allowed in (("format", self.fmt, FORMATS), ("clip layout", self.clip_layout, CLIP_LAYOUTS),
                                     ("backend", self.backend, BACKENDS)):
            if value not in allowed:
                raise UsageError(f"{name} {value!r} is not one of {', '.join(allowed)}")
        if self.num_classes is not None and self.num_classes < 1:
            raise UsageError(f"--num-classes {self.num_classes} must be at least 1 (or left out)")


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


def check_annotations(csv_path: str, options: CheckOptions = CheckOptions(), *, workers: int = 1, out_dir: str = "",
                      progress: bool = True) -> Dict:
    """Check every video of ``csv_path`` as ``options`` say; write the broken list and a cleaned copy (into
    ``out_dir``, "" = next to ``csv_path``). Returns a summary."""
    o = options
    records = load_annotations(csv_path, fmt=o.fmt, path_prefix=o.path_prefix, label_map=o.label_map,
                               num_classes=o.num_classes, clip_layout=o.clip_layout)
    if not any(path_manager.exists(r.path) for r in records):  # stops at the first video found
        raise AnnotationError(
            f"{csv_path}: none of its {len(records)} videos exists (the first would be {records[0].path}); the "
            f"path prefix is probably wrong: give the folder that holds them (--prefix, DATA.PATH_PREFIX; now "
            f"{o.path_prefix or os.path.dirname(csv_path) or '.'})")
    jobs = [(i, r.path, o.backend, o.full) for i, r in enumerate(records)]
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
