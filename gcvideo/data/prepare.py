"""Preparing a Kinetics copy: re-encode clips to a short side and write the split CSVs.

``prepare_kinetics(src, dst, short_side=320)`` re-encodes every video under ``src``
(h264, yuv420p, constant frame rate at the source's average rate, audio dropped,
never upscaled) to the same relative path under ``dst`` with a ``.mp4`` suffix,
with parallel processes and a progress bar. Each output is written to a temporary
name and renamed when complete, so a re-run skips finished files and never sees a
half-written one. Videos that cannot be re-encoded are listed in
``dst/failed.txt`` with reasons.

Labels and splits come from the folders (``src/<split>/<class>/clip`` as in
mmaction2's ``videos_train/abseiling/...``, or ``src/<class>/clip`` for one split)
or from official Kinetics CSVs (``annotations``; clips named
``{youtube_id}_{start:06d}_{end:06d}.*``), and are written as PySlowFast lists
``dst/{split}.csv`` (``path label``, paths relative to ``dst``, a TAB instead of
the space when the path has spaces, label -1 when unknown), so that ``DATA.PATH_TO_DATA_DIR = dst`` is all a config needs.
"""
from __future__ import annotations

import csv
import os
from fractions import Fraction
from typing import Dict, List, Optional, Sequence, Tuple

from gcvideo.data.annotations import (DEFAULT_KINETICS400_LABEL_MAP, VIDEO_EXTENSIONS, class_key, kinetics_clip_name,
                                      read_label_map, video_stem)
from gcvideo.utils.io import TEMPORARY_NAME, atomic_write_text
from gcvideo.utils.parallel import parallel_imap

__all__ = ["reencode_video", "prepare_kinetics", "VIDEO_EXTENSIONS", "split_name", "PREPARE_DEFAULTS"]

# Encoder settings of the training copies, chosen from the keyframe-interval table in
# bench/results/decode.md (training clips/s per core and bytes, measured on Kinetics-like clips):
# a keyframe every 32 frames (x264's default is 250: a random 8x8 clip then starts on average ~120
# frames after its keyframe, all of which must be decoded), x264's "fastdecode" tuning (CAVLC
# instead of CABAC, no deblocking filter, no weighted prediction: the decoder does less per frame)
# and B-frames that no frame references (b-pyramid none: the reader skips every unwanted B-frame).
PREPARE_DEFAULTS = {"short_side": 320, "crf": 23, "preset": "veryfast", "gop": 32,
                    "x264_options": {"tune": "fastdecode", "b-pyramid": "none"}}

_TMP_MARK = ".tmp-prepare-"


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def reencode_video(src: str, dst: str, short_side: int = 320, crf: int = 23, preset: str = "veryfast",
                   threads: int = 1, gop: int = 0, x264_options: Optional[Dict[str, str]] = None) -> Tuple[int, int, int]:
    """Re-encode ``src`` to h264 ``dst`` with the short side ``short_side`` (no upscaling).

    ``gop`` > 0: at most that many frames between keyframes (0: x264's default, 250); short
    GOPs make random access to training clips much cheaper (bench/results/decode.md).
    ``x264_options``: more libx264 options (e.g. ``{"tune": "fastdecode"}``). The training
    copies of ``prepare_kinetics`` use ``PREPARE_DEFAULTS``.

    Returns (width, height, frames written). Writes ``dst`` atomically (temp file + rename).
    """
    import av
    from av.video.reformatter import Interpolation, VideoReformatter

    folder = os.path.dirname(dst)
    if folder:
        os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(dst)}{_TMP_MARK}{os.getpid()}.mp4")
    n = 0
    try:
        with av.open(src, metadata_errors="ignore") as inp:
            if not inp.streams.video:
                raise ValueError("no video stream")
            vin = inp.streams.video[0]
            vin.codec_context.thread_count = threads
            w0, h0 = vin.codec_context.width, vin.codec_context.height
            if not w0 or not h0:
                raise ValueError("video stream without a frame size")
            scale = min(1.0, short_side / min(w0, h0))
            w, h = _even(w0 * scale), _even(h0 * scale)
            rate = vin.average_rate or vin.guessed_rate or Fraction(30)
            if not (0.1 <= float(rate) <= 1000):
                rate = Fraction(30)
            rate = Fraction(rate).limit_denominator(1001)
            reformatter = VideoReformatter()
            with av.open(tmp, "w", format="mp4") as out:
                vout = out.add_stream("libx264", rate=rate)
                vout.width, vout.height, vout.pix_fmt = w, h, "yuv420p"
                vout.codec_context.thread_count = threads
                vout.options = {"crf": str(crf), "preset": preset}
                if gop > 0:
                    vout.options = dict(vout.options, g=str(gop))
                if x264_options:
                    vout.options = dict(vout.options, **{k: str(v) for k, v in x264_options.items()})
                for frame in _frames(inp, vin):
                    f = reformatter.reformat(frame, width=w, height=h, format="yuv420p",
                                             interpolation=Interpolation.AREA)
                    f.pts = n
                    f.time_base = 1 / rate
                    for p in vout.encode(f):
                        out.mux(p)
                    n += 1
                for p in vout.encode():
                    out.mux(p)
        if n == 0:
            raise ValueError("no frame decodes")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return w, h, n


def _frames(container, stream):
    """Decoded frames, skipping packets the decoder rejects and stopping at a truncated end."""
    try:
        for packet in container.demux(stream):
            try:
                yield from packet.decode()
            except Exception:  # damaged packet: skip, as ffmpeg does
                continue
    except Exception:  # damaged/truncated container: keep what decoded
        return


def split_name(folder: str) -> str:
    """Split of a top-level folder: videos_train/train -> train, validate/val/videos_val -> val, ..."""
    k = folder.lower()
    for prefix in ("videos_", "kinetics_", "kinetics400_", "k400_"):
        if k.startswith(prefix):
            k = k[len(prefix):]
    return {"validate": "val", "validation": "val", "valid": "val"}.get(k, k)


def _job(args) -> Tuple[str, str, str]:
    src, dst, short_side, crf, preset, gop, x264_options = args
    try:
        reencode_video(src, dst, short_side=short_side, crf=crf, preset=preset, gop=gop, x264_options=x264_options)
        return src, dst, ""
    except Exception as e:  # any decoder/encoder error: report, go on
        return src, dst, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _read_kinetics_csvs(paths: Sequence[str]) -> Dict[str, Tuple[str, str]]:
    """clip stem -> (label name or "", split) from official Kinetics CSVs."""
    out: Dict[str, Tuple[str, str]] = {}
    for path in paths:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
        header = [c.strip().lower() for c in rows[0]] if rows else []
        if "youtube_id" not in header:
            raise ValueError(f"{path}:1: expected the Kinetics CSV header (label,youtube_id,time_start,...)")
        col = {c: i for i, c in enumerate(header)}
        for n, row in enumerate(rows[1:], 2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(f"{path}:{n}: expected {len(header)} fields, got {len(row)}")
            stem = kinetics_clip_name(row[col["youtube_id"]].strip(), int(float(row[col["time_start"]])),
                                      int(float(row[col["time_end"]])), ext="")
            label = row[col["label"]].strip() if "label" in col else ""
            split = split_name(row[col["split"]].strip()) if "split" in col else "test"
            out[stem] = (label, split)
    return out


def prepare_kinetics(src: str, dst: str, short_side: int = PREPARE_DEFAULTS["short_side"],
                     workers: Optional[int] = None, label_map: str = "", annotations: Sequence[str] = (),
                     default_split: str = "train", crf: int = PREPARE_DEFAULTS["crf"],
                     preset: str = PREPARE_DEFAULTS["preset"], gop: int = PREPARE_DEFAULTS["gop"],
                     x264_options: Optional[Dict[str, str]] = None, progress: bool = True) -> Dict:
    """Re-encode ``src`` into ``dst`` and write ``dst/{split}.csv``; returns a summary dict.

    ``x264_options`` None: ``PREPARE_DEFAULTS["x264_options"]`` ({} for none)."""
    if x264_options is None:
        x264_options = dict(PREPARE_DEFAULTS["x264_options"])
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"source folder {src} does not exist")
    os.makedirs(dst, exist_ok=True)
    names = read_label_map(label_map or DEFAULT_KINETICS400_LABEL_MAP)
    keys = {class_key(n): i for i, n in enumerate(names)}
    by_stem = _read_kinetics_csvs(annotations) if annotations else {}
    # stale temporaries of an interrupted run
    for root, _, files in os.walk(dst):
        for f in files:
            if _TMP_MARK in f or TEMPORARY_NAME.fullmatch(f):
                os.remove(os.path.join(root, f))
    jobs, entries, skipped_done = [], [], 0
    for root, dirs, files in os.walk(src):
        dirs.sort()
        for f in sorted(files):
            if video_stem(f) is None:  # not a video file (the test load_annotations uses for clips)
                continue
            rel = os.path.relpath(os.path.join(root, f), src)
            rel_out = os.path.splitext(rel)[0] + ".mp4"
            parts = rel_out.split(os.sep)
            stem = os.path.splitext(parts[-1])[0]
            label, split = -1, default_split
            if len(parts) >= 2 and class_key(parts[-2]) in keys:
                label = keys[class_key(parts[-2])]
                if len(parts) >= 3:
                    split = split_name(parts[0])
            elif len(parts) >= 2:
                split = split_name(parts[0])
            if stem in by_stem:
                name, split = by_stem[stem]
                if name:
                    if class_key(name) not in keys:
                        raise ValueError(f"class {name!r} of clip {stem} is not in the label map")
                    label = keys[class_key(name)]
            out_path = os.path.join(dst, rel_out)
            entries.append((split, rel_out.replace(os.sep, "/"), label, os.path.join(root, f), out_path))
            if os.path.exists(out_path):
                skipped_done += 1
            else:
                jobs.append((os.path.join(root, f), out_path, short_side, crf, preset, gop, x264_options))
    failed: Dict[str, str] = {}
    workers = max(1, workers or (os.cpu_count() or 1))
    for s, _, err in parallel_imap(_job, jobs, workers, "re-encoding", "video", progress):
        if err:
            failed[s] = err
    lines: Dict[str, List[str]] = {}
    for split, rel_out, label, s, out_path in entries:
        if s in failed or not os.path.exists(out_path):
            continue
        sep = "\t" if any(c.isspace() for c in rel_out) else " "  # a path with spaces: TAB before the label
        lines.setdefault(split, []).append(f"{rel_out}{sep}{label}\n")
    for split, ls in lines.items():
        atomic_write_text(os.path.join(dst, f"{split}.csv"), "".join(ls))
    failed_path = os.path.join(dst, "failed.txt")
    if failed:
        atomic_write_text(failed_path, "".join(f"{s}\t{r}\n" for s, r in sorted(failed.items())))
    elif os.path.exists(failed_path):  # from an earlier run: those clips are done now
        os.remove(failed_path)
    return {"videos": len(entries), "encoded": len(jobs) - len(failed), "already_done": skipped_done,
            "failed": len(failed), "splits": {k: len(v) for k, v in lines.items()}}
