"""Preparing a Kinetics copy: re-encode clips to a short side and write the split CSVs.

``prepare_kinetics(src, dst, PREPARE_DEFAULTS)`` re-encodes every video under ``src``
(h264, yuv420p, constant frame rate at the source's average rate, audio dropped,
never upscaled) to the same relative path under ``dst`` with a ``.mp4`` suffix,
with parallel processes and a progress bar. Each output is written to a temporary
name and renamed when complete, so a re-run skips finished files and never sees a
half-written one; one run at a time holds ``dst`` (``FolderLock``), and only the
temporaries of writers that are gone are removed. Videos that cannot be re-encoded are
listed in ``dst/failed.txt`` with reasons, annotated clips absent from ``src`` in
``dst/missing.txt`` (both written every run). A ``dst`` inside ``src`` is not walked; two
sources of one output (``clip.mp4`` and ``clip.webm``) and split names that are not plain
file names are refused before any work.

Labels and splits come from the folders (``src/<split>/<class>/clip`` as in
mmaction2's ``videos_train/abseiling/...``, or ``src/<class>/clip`` for one split)
or from official Kinetics CSVs (``annotations``; clips named
``{youtube_id}_{start:06d}_{end:06d}.*``), and are written as PySlowFast lists
``dst/{split}.csv`` (``path label``, paths relative to ``dst``, a TAB instead of
the space when the path has spaces, label -1 when unknown), so that ``DATA.PATH_TO_DATA_DIR = dst`` is all a config needs.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from gcvideo.data.annotations import (DEFAULT_KINETICS400_LABEL_MAP, VIDEO_EXTENSIONS, AnnotationError, class_key,
                                      iter_csv_rows, kinetics_clip_name, read_label_map, video_stem)
from gcvideo.utils.errors import UserError
from gcvideo.utils.folder_lock import FolderLock
from gcvideo.utils.io import TEMPORARY_NAME, atomic_write_text
from gcvideo.utils.parallel import parallel_imap

__all__ = ["reencode_video", "prepare_kinetics", "PrepareError", "VIDEO_EXTENSIONS", "split_name",
           "EncodeSettings", "PREPARE_DEFAULTS"]


class PrepareError(UserError, ValueError):
    """``--src``/``--dst`` cannot be used as given (one line: what is wrong and what to do)."""


@dataclass(frozen=True)
class EncodeSettings:
    """How ``reencode_video`` encodes a copy (libx264, yuv420p). The defaults are x264's own keyframe
    interval and no extra options; the training copies use ``PREPARE_DEFAULTS``."""
    short_side: int = 320  # pixels (never upscaled)
    crf: int = 23  # x264 quality (lower = better, larger)
    preset: str = "veryfast"  # x264 preset
    gop: int = 0  # > 0: at most that many frames between keyframes (0: x264's default, 250)
    x264_options: Mapping[str, str] = field(default_factory=dict)  # more libx264 options, e.g. {"tune": "fastdecode"}

    def __post_init__(self):
        if self.short_side < 2:
            raise PrepareError(f"--short-side {self.short_side} must be at least 2 (pixels)")
        if not 0 <= self.crf <= 51:
            raise PrepareError(f"--crf {self.crf} must be in 0..51 (x264's quality scale; 23 is its default)")
        if self.gop < 0:
            raise PrepareError(f"--gop {self.gop} must be >= 0 (0: x264's default keyframe interval)")

    @staticmethod
    def parse_x264_options(items: Sequence[str]) -> Dict[str, str]:
        """``["tune=fastdecode", ...]`` -> ``{"tune": "fastdecode", ...}``; an item without ``=`` is refused."""
        bad = [kv for kv in items if "=" not in kv or not kv.split("=", 1)[0]]
        if bad:
            raise PrepareError(f"--x264-options {bad[0]!r} is not KEY=VALUE (e.g. tune=fastdecode)")
        return dict(kv.split("=", 1) for kv in items)


# Encoder settings of the training copies, chosen from the keyframe-interval table in
# bench/results/decode.md (training clips/s per core and bytes, measured on Kinetics-like clips):
# a keyframe every 32 frames (x264's default is 250: a random 8x8 clip then starts on average ~120
# frames after its keyframe, all of which must be decoded), x264's "fastdecode" tuning (CAVLC
# instead of CABAC, no deblocking filter, no weighted prediction: the decoder does less per frame)
# and B-frames that no frame references (b-pyramid none: the reader skips every unwanted B-frame).
PREPARE_DEFAULTS = EncodeSettings(short_side=320, crf=23, preset="veryfast", gop=32,
                                  x264_options={"tune": "fastdecode", "b-pyramid": "none"})

_TMP_MARK = ".tmp-prepare-"


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def reencode_video(src: str, dst: str, encode: EncodeSettings = EncodeSettings(),
                   threads: int = 1) -> Tuple[int, int, int]:
    """Re-encode ``src`` to h264 ``dst`` as ``encode`` says, short side ``encode.short_side`` (no upscaling).

    Short GOPs (``encode.gop``) make random access to training clips much cheaper
    (bench/results/decode.md). The training copies of ``prepare_kinetics`` use ``PREPARE_DEFAULTS``.

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
            scale = min(1.0, encode.short_side / min(w0, h0))
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
                vout.options = {"crf": str(encode.crf), "preset": encode.preset}
                if encode.gop > 0:
                    vout.options = dict(vout.options, g=str(encode.gop))
                if encode.x264_options:
                    vout.options = dict(vout.options, **{k: str(v) for k, v in encode.x264_options.items()})
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
    src, dst, encode = args
    try:
        reencode_video(src, dst, encode)
        return src, dst, ""
    except Exception as e:  # any decoder/encoder error: report, go on
        return src, dst, f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _read_kinetics_csvs(paths: Sequence[str], keys: Dict[str, int], label_map: str) -> Dict[str, Tuple[int, str, str]]:
    """clip stem -> (class index or -1, split, ``file:line``) from official Kinetics CSVs.

    Every row is checked before any work: a class missing from the label map, a bad number or a
    split that is not a plain name is an :class:`AnnotationError` naming the file and line."""
    out: Dict[str, Tuple[int, str, str]] = {}
    for path in paths:
        if not os.path.isfile(path):
            raise AnnotationError(f"{path}: annotation file does not exist")
        rows = iter_csv_rows(path)
        n, first = next(rows, (1, []))
        header = [c.strip().lower() for c in first]
        if "youtube_id" not in header:
            raise AnnotationError(f"{path}:{n}: expected the Kinetics CSV header (label,youtube_id,time_start,...)")
        col = {c: i for i, c in enumerate(header)}
        for n, row in rows:
            if not row:
                continue
            if len(row) != len(header):
                raise AnnotationError(f"{path}:{n}: expected {len(header)} fields, got {len(row)}")
            try:
                stem = kinetics_clip_name(row[col["youtube_id"]].strip(), int(float(row[col["time_start"]])),
                                          int(float(row[col["time_end"]])), ext="")
            except (KeyError, ValueError, OverflowError) as e:
                raise AnnotationError(f"{path}:{n}: bad youtube_id/time_start/time_end ({e})") from None
            name = row[col["label"]].strip() if "label" in col else ""
            if name and class_key(name) not in keys:
                raise AnnotationError(f"{path}:{n}: class {name!r} is not in the label map {label_map} "
                                      f"({len(keys)} classes); pass --label-map with this dataset's classes")
            split = split_name(row[col["split"]].strip()) if "split" in col else "test"
            _check_split(split, f"{path}:{n}: split")
            out[stem] = (keys[class_key(name)] if name else -1, split, f"{path}:{n}")
    return out


def _check_split(split: str, what: str) -> None:
    """A split names ``dst/{split}.csv``: a plain file name only (no folder, no '..', not hidden)."""
    if (not split or split.startswith(".") or "/" in split or "\\" in split or "\0" in split
            or (os.altsep and os.altsep in split)):
        raise AnnotationError(f"{what} {split!r} is not a plain name (no '/' or '\\', not starting "
                              "with '.'): it names the output CSV inside --dst")


@dataclass(frozen=True)
class _Entry:
    split: str
    rel_out: str  # output path relative to dst, "/"-separated
    label: int
    src: str
    out: str


def _walk_sources(src: str, dst: str, keys: Dict[str, int], by_stem: Dict[str, Tuple[int, str, str]],
                  default_split: str) -> List[_Entry]:
    """Every video under ``src`` (``dst`` left out when it lies inside), with its output, split and label.

    Two sources that would become one output (``clip.mp4`` and ``clip.webm``) are refused."""
    skip = os.path.realpath(dst)
    entries: List[_Entry] = []
    by_out: Dict[str, str] = {}
    clashes: List[Tuple[str, str, str]] = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if os.path.realpath(os.path.join(root, d)) != skip)
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
                annotated, split, _ = by_stem[stem]
                if annotated >= 0:
                    label = annotated
            out_path = os.path.join(dst, rel_out)
            if out_path in by_out:
                clashes.append((by_out[out_path], os.path.join(root, f), out_path))
                continue
            by_out[out_path] = os.path.join(root, f)
            entries.append(_Entry(split, rel_out.replace(os.sep, "/"), label, os.path.join(root, f), out_path))
    if clashes:
        a, b, out = clashes[0]
        more = f" ({len(clashes)} such clashes; the first is shown)" if len(clashes) > 1 else ""
        raise PrepareError(f"{a} and {b} would both become {out}{more}: keep one of them in --src (move the other "
                           "out) and run again")
    return entries


_TEMP_OWNER = (re.compile(re.escape(_TMP_MARK) + r"(\d+)\.mp4$"), re.compile(r"\.tmp-(\d+)-[0-9a-f]{8}$"))


def _remove_dead_temporaries(dst: str) -> int:
    """Remove the temporaries under ``dst`` whose writer process is gone; a live owner's are kept."""
    removed = 0
    for root, _, files in os.walk(dst):
        for f in files:
            m = _TEMP_OWNER[0].search(f) if _TMP_MARK in f else (
                _TEMP_OWNER[1].search(f) if TEMPORARY_NAME.fullmatch(f) else None)
            if m and not _process_alive(int(m.group(1))):
                os.remove(os.path.join(root, f))
                removed += 1
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _write_lists(dst: str, entries: List[_Entry], failed: Dict[str, str],
                 missing: List[Tuple[str, str]]) -> Dict[str, int]:
    """``dst/{split}.csv``, ``dst/failed.txt`` and ``dst/missing.txt`` (the last two written even when
    empty, so none is left over from an earlier run); returns clips per split."""
    lines: Dict[str, List[str]] = {}
    for e in entries:
        if e.src in failed or not os.path.exists(e.out):
            continue
        sep = "\t" if any(c.isspace() for c in e.rel_out) else " "  # a path with spaces: TAB before the label
        lines.setdefault(e.split, []).append(f"{e.rel_out}{sep}{e.label}\n")
    root = os.path.realpath(dst)
    for split, ls in lines.items():
        path = os.path.join(dst, f"{split}.csv")
        if os.path.dirname(os.path.realpath(path)) != root:  # _check_split's guard, kept where the file is named
            raise PrepareError(f"split {split!r} would write {path} outside --dst {dst}")
        atomic_write_text(path, "".join(ls))
    atomic_write_text(os.path.join(dst, "failed.txt"), "".join(f"{s}\t{r}\n" for s, r in sorted(failed.items())))
    atomic_write_text(os.path.join(dst, "missing.txt"), "".join(f"{stem}\t{where}\n" for stem, where in missing))
    return {k: len(v) for k, v in lines.items()}


def prepare_kinetics(src: str, dst: str, encode: EncodeSettings = PREPARE_DEFAULTS, *, label_map: str = "",
                     annotations: Sequence[str] = (), default_split: str = "train", workers: Optional[int] = None,
                     progress: bool = True) -> Dict:
    """Re-encode ``src`` into ``dst`` as ``encode`` says and write ``dst/{split}.csv``; returns a summary dict.

    Everything a user gave is checked before any work (:class:`PrepareError`, ``AnnotationError``
    with ``file:line``); ``dst`` is locked for the run (``FolderInUse`` when another run holds it).
    Summary: ``videos``, ``encoded``, ``already_done``, ``failed`` (listed in ``dst/failed.txt``),
    ``missing`` (annotated clips absent from ``src``, listed in ``dst/missing.txt``), ``splits``."""
    src, dst = os.path.abspath(src), os.path.abspath(dst)
    if not os.path.isdir(src):
        raise PrepareError(f"--src {src} is not a folder; give the folder that holds the downloaded clips")
    if os.path.realpath(src) == os.path.realpath(dst):
        raise PrepareError(f"--dst {dst} is --src: the copies would replace the originals; choose another --dst")
    _check_split(default_split, "--split")
    label_map = label_map or DEFAULT_KINETICS400_LABEL_MAP
    keys = {class_key(n): i for i, n in enumerate(read_label_map(label_map))}
    by_stem = _read_kinetics_csvs(annotations, keys, label_map) if annotations else {}
    entries = _walk_sources(src, dst, keys, by_stem, default_split)
    found = {os.path.splitext(os.path.basename(e.src))[0] for e in entries}
    missing = [(stem, where) for stem, (_, _, where) in by_stem.items() if stem not in found]
    lock = FolderLock(dst, "--dst").acquire()
    try:
        if lock.note:
            print(lock.note, flush=True)
        _remove_dead_temporaries(dst)  # of interrupted runs
        todo = [e for e in entries if not os.path.exists(e.out)]
        jobs = [(e.src, e.out, encode) for e in todo]
        failed: Dict[str, str] = {}
        workers = max(1, workers or (os.cpu_count() or 1))
        for s, _, err in parallel_imap(_job, jobs, workers, "re-encoding", "video", progress):
            if err:
                failed[s] = err
        splits = _write_lists(dst, entries, failed, missing)
    finally:
        lock.release()
    return {"videos": len(entries), "encoded": len(jobs) - len(failed), "already_done": len(entries) - len(todo),
            "failed": len(failed), "missing": len(missing), "splits": splits}
