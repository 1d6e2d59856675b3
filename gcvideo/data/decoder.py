"""Video decoding: one reader interface, three backends (PyAV, decord, torchcodec).

``open_video(path, backend)`` returns a :class:`VideoReader` that knows the video's
frame count, frame rate and size and decodes any set of 0-based frame indices in one
pass (``reader.read(indices, size=None)`` -> uint8 ``(len(indices), H, W, 3)``, in the
requested order, duplicates allowed). ``decode_frames`` is the one-call form.
``reader.stream_info()`` gives the header fields and frame timestamps the peers' test samplers
compute with (``StreamInfo``; gcvideo.data.sampling).

Frame index ``i`` means the frame with the ``i``-th smallest presentation timestamp
of the first video stream's packets (frames an edit list discards not counted); on a
clean file, the ``i``-th frame a full sequential decode outputs. A read returns exactly
those frames or raises VideoDecodeError naming the file and why; never a neighbour.

* PyAV (default): the container is demuxed once into a packet index (per video packet:
  timestamps, byte offset, size, keyframe flag; no packet data is kept, so memory does not
  grow with the file); that index is also what the other backends are checked against.
  The frame count is the number of non-discarded video packets. A read demuxes again only
  the packets it needs, each checked against the index (a packet that differs: the
  sequential mode). For MP4/MOV/Matroska with unique packet
  timestamps the reader seeks to the last keyframe at or before the first
  wanted frame (a keyframe whose packet the decoder rejects is never a start), seeks
  to a later keyframe when nothing is wanted in between,
  and tells the decoder to skip non-reference frames that are not wanted
  (``skip_frame=NONREF``; exact, those frames are never used by other frames). A wanted
  frame that does not come out while a later one does is ``damaged: ...``; none coming
  out up to the end means the stream ends early (FrameCountChanged). Other containers
  (AVI with packed B-frames, GIF, ...) or a surprise (output timestamps not increasing)
  use the sequential mode: decode from the first packet (a second demux of the
  file) and count output frames; after
  a rejected packet later frames cannot be numbered, and asking for one is ``damaged``.
  A container that stops demuxing early (truncated file) keeps the packets read so far.
* decord: ``VideoReader.get_batch`` (never ``seek()`` + ``next()``), used only where its
  frame table agrees with the packet index (same count, every frame's timestamp within
  half a frame interval: ``index_mismatch``) and a first frame without a negative
  timestamp (an edit list decord would count).
* torchcodec (:mod:`gcvideo.data.decoder_torchcodec`): exact seek mode, same count as the
  packet index, and every returned frame must carry the asked frame's timestamp; on
  ``device="cuda"`` NVDEC decodes into GPU tensors.

Where decord or torchcodec cannot be used for a file (cannot open it, no packet index to
check against, a mismatch, a decoding error), PyAV decodes it; ``reader.fallback`` says
why and the reason is logged once per file and process.

When a read finds fewer frames than the reader announced (declared frame count
larger than what decodes), it updates ``reader.num_frames`` and raises
:class:`FrameCountChanged`; callers sample again with the new count (the
dataset does this once, transparently).

Colour conversion: the CPU backends convert with libswscale's default YUV->RGB path,
so they return identical pixels for the same frame of an h264 file (tested). PyAV
reuses one ``VideoReformatter`` per reader (a fresh swscale context per frame costs
~10x more).
"""
from __future__ import annotations

import bisect
import itertools
import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from gcvideo.utils.io import path_manager

__all__ = ["VideoDecodeError", "FrameCountChanged", "VideoReader", "StreamInfo", "open_video", "decode_frames",
           "resize_frames", "check_frame_size", "BACKENDS", "DecodeOptions"]

# DATA.DECODER: the decoder backends (the config and tools/check_videos.py take their names from here)
BACKENDS = ("pyav", "decord", "torchcodec")
# Containers whose packet timestamps reliably give presentation order.
_TIMESTAMP_CONTAINERS = ("mov", "mp4", "matroska", "webm")
logger = logging.getLogger(__name__)
# Frame rates outside this range are treated as unknown.
_FPS_RANGE = (0.1, 1000.0)
# A packet without a timestamp, in the packet index.
_NO_TS = np.iinfo(np.int64).min


class VideoDecodeError(RuntimeError):
    """A video cannot be used. ``reason`` is a short ``kind: detail`` string.

    Kinds: ``missing``, ``empty``, ``unreadable`` (not a media file / container
    error), ``no_video_stream``, ``no_frames`` (nothing decodes), ``bad_index``,
    ``damaged`` (wanted frames do not decode, later ones do), ``bad_size`` (frames too large or
    too elongated, see ``check_frame_size``).
    """

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class FrameCountChanged(RuntimeError):
    """The video decodes to fewer frames than announced; ``num_frames`` is the true count."""

    def __init__(self, path: str, announced: int, num_frames: int):
        super().__init__(f"{path}: announced {announced} frames, only {num_frames} decode")
        self.path = path
        self.announced = announced
        self.num_frames = num_frames


@dataclass(frozen=True)
class StreamInfo:
    """The container's header fields the peers' test samplers compute with (gcvideo.data.sampling),
    as PyAV reads them, and the frames' timestamps. Times are in ``time_base`` units (seconds =
    ticks * time_base); None where the container does not store the field."""
    average_rate: Optional[Fraction]  # the video stream's average_rate (frames per second)
    header_frames: int  # the video stream's declared frame count (``stream.frames``; 0: not stored)
    duration: Optional[int]  # the video stream's duration
    time_base: Fraction
    start_time: Optional[int]  # the video stream's start_time
    frame_pts: Optional[Tuple[int, ...]]  # timestamp of frame 0..N-1 (indexed files); None: unknown
    audio_duration: Optional[int] = None  # the first audio stream's duration, time base, start_time
    audio_time_base: Optional[Fraction] = None
    audio_start_time: Optional[int] = None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    msg = text[0] if text else type(e).__name__
    # decord prefixes messages with "[hh:mm:ss] /path/to/source.cc:123: "
    if msg.startswith("[") and "] " in msg:
        msg = msg.split("] ", 1)[1]
    return msg[:300]


def check_size(size) -> Optional[Tuple[int, int]]:
    """``size`` as a (height, width) pair of positive ints (None stays None); else ValueError."""
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size = {size!r}; expected (height, width)")
    if h <= 0 or w <= 0 or (h, w) != tuple(size):
        raise ValueError(f"size = {size!r}; expected two positive integers (height, width)")
    return h, w


def check_frame_size(path: str, height: int, width: int, max_pixels: int, max_aspect: float) -> None:
    """VideoDecodeError ``bad_size: ...`` when frames of ``height`` x ``width`` pixels are more
    than ``max_pixels`` (DATA.MAX_FRAME_PIXELS) or their long side is more than ``max_aspect``
    (DATA.MAX_ASPECT_RATIO) times the short one. Every resize of the data pipeline scales the
    short side to a crop size, so these two bounds bound what any resize allocates. Unknown
    sizes (0) pass; the dataset checks the decoded frames again."""
    h, w = int(height), int(width)
    if h <= 0 or w <= 0:
        return
    if h * w > max_pixels:
        raise VideoDecodeError(path, f"bad_size: {w}x{h} frames ({h * w / 1e6:.1f} Mpixels) are larger than "
                                     f"DATA.MAX_FRAME_PIXELS = {max_pixels} ({max_pixels / 1e6:.1f} Mpixels)")
    aspect = max(h, w) / min(h, w)
    if aspect > max_aspect:
        raise VideoDecodeError(path, f"bad_size: {w}x{h} frames have an aspect ratio of {aspect:g}:1, more than "
                                     f"DATA.MAX_ASPECT_RATIO = {max_aspect:g}")


def resize_frames(frames: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """uint8 ``(K, H, W, 3)`` -> ``(K, h, w, 3)``: torchvision bilinear, antialiased (the backends
    that cannot scale while converting to RGB resize after it with this)."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    h, w = size
    if frames.shape[1:3] == (h, w):
        return frames
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)  # (K, 3, H, W), channels-last
    x = TF.resize(x, [h, w], interpolation=TF.InterpolationMode.BILINEAR, antialias=True)  # (K, 3, h, w)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())  # (K, h, w, 3)


def _valid_fps(fps) -> bool:
    try:
        f = float(fps)
    except (TypeError, ValueError):
        return False
    return np.isfinite(f) and _FPS_RANGE[0] <= f <= _FPS_RANGE[1]


class _IndexMismatch(Exception):
    """A second demux does not give the packets of the index (``read`` then decodes sequentially)."""


def _packet_key(p) -> Tuple[int, int, int]:
    """What identifies a demuxed packet in the index: (pts, byte offset, size). (Not dts: the
    Matroska demuxer guesses it from the packets before, so it differs after a seek.)"""
    return _NO_TS if p.pts is None else int(p.pts), -1 if p.pos is None else int(p.pos), int(p.size)


class _PyAVBackend:
    """PyAV reader over a packet index demuxed once without the packets' data (see module docstring)."""

    name = "pyav"

    def __init__(self, path: str, local: str, threads: int = 1):
        import av

        self.path = path
        self._local = local
        self._threads = threads
        try:
            container = av.open(local, metadata_errors="ignore")
        except Exception as e:  # av.error.FFmpegError and OSError variants
            raise VideoDecodeError(path, f"unreadable: cannot open as a video container ({_first_line(e)})")
        self._container = container
        try:
            if not container.streams.video:
                raise VideoDecodeError(path, "no_video_stream: the file has no video stream")
            stream = container.streams.video[0]
            self._stream = stream
            stream.thread_type = "SLICE" if threads != 1 else "NONE"
            stream.codec_context.thread_count = max(int(threads), 0)
            self._cc = stream.codec_context
            fps = None
            for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
                if rate is not None and _valid_fps(rate):
                    fps = float(rate)
                    break
            keys, flags = [], []  # per packet: (pts, pos, size, dts), (keyframe, discard); no data kept
            self.demux_error = ""
            try:
                for p in container.demux(stream):
                    if p.size > 0:
                        keys.append(_packet_key(p) + (_NO_TS if p.dts is None else int(p.dts),))
                        flags.append((p.is_keyframe, p.is_discard))
            except Exception as e:  # truncated / damaged container: keep what was read
                self.demux_error = _first_line(e)
            self._container_format = container.format.name or ""
            self._time_base = stream.time_base
            audio = container.streams.audio[0] if container.streams.audio else None
            self._header = dict(average_rate=stream.average_rate, header_frames=int(stream.frames or 0),
                                duration=stream.duration, time_base=stream.time_base, start_time=stream.start_time,
                                audio_duration=audio.duration if audio is not None else None,
                                audio_time_base=audio.time_base if audio is not None else None,
                                audio_start_time=audio.start_time if audio is not None else None)
        except BaseException:
            container.close()
            raise
        self._keys = np.array(keys, dtype=np.int64).reshape(-1, 4)  # (P, 4) pts, pos, size, dts
        is_key = [k for k, _ in flags]
        pts = [key[0] for key, (_, discard) in zip(keys, flags) if not discard]
        pts = [None if t == _NO_TS else t for t in pts]
        del keys
        self._indexed = (
            any(n in self._container_format.split(",") for n in _TIMESTAMP_CONTAINERS)
            and all(x is not None for x in pts) and len(set(pts)) == len(pts))
        self._frame_pts: List[int] = sorted(pts) if self._indexed else []
        self._pts_set = set(self._frame_pts)
        if self._indexed:
            keys = [(i, int(self._keys[i, 0])) for i, k in enumerate(is_key) if k]
            kpts = [k for _, k in keys]
            if not keys or kpts != sorted(kpts) or keys[0][1] > self._frame_pts[0]:
                self._indexed = False
            else:
                self._key_pos = [i for i, _ in keys]
                self._key_pts = kpts
                self._bad_keys = set()  # keyframe positions whose packet the decoder rejected
                found: Dict[Tuple[int, ...], int] = {}
                for i in self._key_pos:  # where a seek lands, by packet key (ambiguous keys left out)
                    key = tuple(self._keys[i, :3].tolist())
                    found[key] = -1 if key in found else i
                self._key_at = {k: i for k, i in found.items() if i >= 0}
        self.num_frames = len(pts)
        if self.num_frames == 0:
            self.close()
            extra = f" (demuxing stopped: {self.demux_error})" if self.demux_error else ""
            raise VideoDecodeError(path, f"no_frames: the video stream has no packets{extra}")
        if fps is None and pts and all(x is not None for x in pts) and len(pts) > 1:
            span = float((max(pts) - min(pts)) * self._time_base)
            if span > 0:
                fps = (len(pts) - 1) / span
        self.fps = fps if fps is not None and _valid_fps(fps) else float("nan")
        self.mode = "indexed" if self._indexed else "sequential"
        self.indexed = self._indexed  # the packet index as opened (reads may later fall back)
        self.container_format = self._container_format
        self.height, self.width = int(self._cc.height or 0), int(self._cc.width or 0)

    def stream_info(self) -> StreamInfo:
        """Header fields and frame timestamps (``frame_pts``: the sorted packet timestamps of an indexed
        file; None in the sequential mode, where only decoding tells which frame has which timestamp:
        an AVI with packed B-frames outputs them out of timestamp order)."""
        return StreamInfo(frame_pts=tuple(self._frame_pts) if self.indexed else None, **self._header)

    def frame_times(self) -> np.ndarray:
        """Start time in seconds of every frame (indexed files): the sorted packet timestamps."""
        return np.array([float(t * self._time_base) for t in self._frame_pts], dtype=np.float64)

    # -- decoding -----------------------------------------------------------------
    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def _packets(self, start: int) -> Iterator[Tuple[int, object]]:
        """(position, packet) for the index's packets from ``start`` on, demuxed now: only what
        the caller consumes is read, and no packet is kept. Each packet must be the index's packet
        at its position (``_packet_key``), else ``_IndexMismatch``; a demux error ends the packets."""
        if start >= len(self._keys):
            return
        container, demux, j = self._position(start)
        try:
            while j < len(self._keys):
                try:
                    p = next(demux)
                except StopIteration:
                    return
                except Exception:  # a truncated / damaged container: the packets end here
                    return
                if p.size <= 0:
                    continue
                if _packet_key(p) != tuple(self._keys[j, :3].tolist()):
                    raise _IndexMismatch(f"packet {j} differs from the index")
                if j >= start:
                    yield j, p
                j += 1
        finally:
            if container is not self._container:
                container.close()

    def _position(self, start: int):
        """(container, packet iterator, position of its first packet), that position <= ``start``.

        Indexed files seek to the keyframe at ``start`` (in the stream's timestamps; a seek
        that lands after it tries the two keyframes before); elsewhere, or when the landing
        packet is not a known keyframe, a second container demuxes from the first packet."""
        import av

        k = bisect.bisect_left(self._key_pos, start) if self._indexed else 0
        if self._indexed and k < len(self._key_pos) and self._key_pos[k] == start:
            for pos in self._key_pos[max(k - 2, 0):k + 1][::-1]:
                pts, dts = int(self._keys[pos, 0]), int(self._keys[pos, 3])
                ts = min(t for t in (pts, dts) if t != _NO_TS)  # MP4 seeks by dts, Matroska by pts
                try:
                    self._container.seek(ts, stream=self._stream, backward=True)
                    demux = self._container.demux(self._stream)
                    first = next(p for p in demux if p.size > 0)
                except Exception:  # cannot seek, or nothing after the seek
                    break
                j = self._key_at.get(_packet_key(first))
                if j is not None and j <= start:
                    return self._container, itertools.chain([first], demux), j
        container = av.open(self._local, metadata_errors="ignore")
        return container, container.demux(container.streams.video[0]), 0

    def _codec(self):
        """The stream's decoder, reset so that decoding can start at a keyframe."""
        if self._container is None:
            raise VideoDecodeError(self.path, "unreadable: reader already closed")
        self._cc.flush_buffers()
        self._cc.skip_frame = "DEFAULT"
        return self._cc

    def read(self, indices: Sequence[int], size: Optional[Tuple[int, int]] = None) -> np.ndarray:
        wanted = sorted(set(int(i) for i in indices))
        if wanted[0] < 0 or wanted[-1] >= self.num_frames:
            raise VideoDecodeError(self.path, f"bad_index: frame index out of range 0..{self.num_frames - 1}: "
                                              f"{[i for i in wanted if i < 0 or i >= self.num_frames][:5]}")
        frames: Optional[Dict[int, np.ndarray]] = None
        if self._indexed:
            try:
                frames = self._read_indexed(wanted, size)
            except _IndexMismatch:
                frames = None
            if frames is None:  # surprise: trust only a sequential decode from now on
                self._indexed = False
                self.mode = "sequential"
        if frames is None:
            try:
                frames = self._read_sequential(wanted, size)
            except _IndexMismatch as e:
                raise VideoDecodeError(self.path, f"unreadable: the container demuxes differently each time ({e})")
        return np.stack([frames[int(i)] for i in indices])  # (K, H, W, 3)

    @staticmethod
    def _to_rgb(reformatter, frame, size: Optional[Tuple[int, int]]) -> np.ndarray:
        """uint8 ``(H, W, 3)``; with ``size`` = (h, w) scaled in the same swscale call (SWS_BILINEAR)."""
        if size is None:
            return reformatter.reformat(frame, format="rgb24").to_ndarray()
        return reformatter.reformat(frame, format="rgb24", width=size[1], height=size[0],
                                    interpolation="BILINEAR").to_ndarray()

    def _read_indexed(self, wanted: List[int], size=None) -> Optional[Dict[int, np.ndarray]]:
        """Frames by presentation timestamp; None on a surprise (then the sequential mode is used).

        A wanted frame the decoder does not output (its packet was rejected, or a frame it
        needs is missing) is never replaced by a neighbour: a later frame coming out first
        means a hole (VideoDecodeError ``damaged``); nothing coming out up to the end of the
        stream means the stream ends early (FrameCountChanged).
        """
        from av.video.reformatter import VideoReformatter

        pts_of = {self._frame_pts[i]: i for i in wanted}
        remaining = sorted(pts_of)
        out: Dict[int, np.ndarray] = {}
        reformatter = VideoReformatter()
        cc = self._codec()
        rejected = ""
        try:
            packets: Iterator[Tuple[int, object]] = iter(())
            pos = -1
            last_pts = None
            done = False
            while remaining and not done:
                # Keyframe to start from for the earliest frame still wanted.
                target = self._key_pos[self._start_key(remaining[0])]
                if target > pos:  # jump (a seek): everything wanted before it is already out
                    if pos >= 0:
                        cc.flush_buffers()
                    packets = self._packets(target)
                    pos = target
                    last_pts = None
                start = pos
                item = next(packets, None)
                if item is not None:
                    p = item[1]
                    pos += 1
                    # unwanted non-reference frames are skipped (keyframes are references anyway; decoding
                    # them fully makes a damaged one fail here, not silently)
                    cc.skip_frame = "DEFAULT" if p.pts in pts_of or p.is_keyframe else "NONREF"
                else:
                    p = None  # drain the decoder
                    done = True
                    cc.skip_frame = "DEFAULT"
                try:
                    decoded = cc.decode(p)
                except Exception as e:  # damaged packet: skip it, as ffmpeg does
                    rejected = rejected or _first_line(e)
                    if p is not None and start == pos - 1 and start == target and start in self._key_pos:
                        # a keyframe that does not decode is no place to start: again from an earlier one
                        self._bad_keys.add(start)
                        return self._read_indexed(wanted, size)
                    continue
                for f in decoded:
                    if f.pts is None or (last_pts is not None and f.pts <= last_pts) or f.pts not in self._pts_set:
                        return None  # not the packets' timestamps in order: the index cannot place it
                    last_pts = f.pts
                    if remaining and f.pts > remaining[0]:  # frames come out in pts order: a hole
                        self._raise_damaged([pts_of[t] for t in remaining if t < f.pts], rejected)
                    if f.pts in pts_of and pts_of[f.pts] not in out:
                        out[pts_of[f.pts]] = self._to_rgb(reformatter, f, size)
                        remaining.remove(f.pts)
        finally:
            cc.skip_frame = "DEFAULT"
        if remaining:  # nothing came out after them: does the stream end early?
            missing = [pts_of[t] for t in remaining]
            end = self._decodable_end(missing[0])
            if missing[0] < end:
                self._raise_damaged([i for i in missing if i < end], rejected)
            announced = self.num_frames
            self.num_frames = end
            if end == 0:
                raise VideoDecodeError(self.path, "no_frames: no frame of the video stream decodes")
            raise FrameCountChanged(self.path, announced, end)
        return out

    def _raise_damaged(self, missing: List[int], rejected: str) -> None:
        why = f"the decoder rejected a packet: {rejected}" if rejected else "the decoder dropped them"
        raise VideoDecodeError(self.path, f"damaged: frame(s) {missing[:5]} of {self.num_frames} do not decode "
                                          f"({why}); later frames do, so no frame is substituted")

    def _start_key(self, pts: int) -> int:
        """Index (into the keyframe lists) of the last decodable keyframe at or before ``pts``."""
        k = bisect.bisect_right(self._key_pts, pts) - 1
        while k > 0 and self._key_pos[k] in self._bad_keys:
            k -= 1
        return k

    def _decodable_end(self, index: int) -> int:
        """1 + the last frame index that decodes, decoding everything from the keyframe before ``index``."""
        k = self._start_key(self._frame_pts[index])
        start = bisect.bisect_left(self._frame_pts, self._key_pts[k])
        cc = self._codec()
        last = start - 1
        for p in itertools.chain((p for _, p in self._packets(self._key_pos[k])), [None]):
            try:
                decoded = cc.decode(p)
            except Exception:
                continue
            for f in decoded:
                if f.pts is not None:
                    last = max(last, bisect.bisect_left(self._frame_pts, f.pts))
        return min(last + 1, self.num_frames)

    def _read_sequential(self, wanted: List[int], size=None) -> Dict[int, np.ndarray]:
        """Frames by output position. After a rejected packet the positions of later frames are
        unknown (the lost frame would shift them), so wanting one of them is an error."""
        from av.video.reformatter import VideoReformatter

        want = set(wanted)
        last = wanted[-1]
        out: Dict[int, np.ndarray] = {}
        reformatter = VideoReformatter()
        cc = self._codec()
        n = 0
        rejected_at, rejected = None, ""
        for p in itertools.chain((p for _, p in self._packets(0)), [None]):
            try:
                decoded = cc.decode(p)
            except Exception as e:  # damaged packet: skip it, as ffmpeg does (and remember where)
                if rejected_at is None:
                    rejected_at, rejected = n, _first_line(e)
                continue
            for f in decoded:
                if rejected_at is not None and last >= rejected_at:
                    raise VideoDecodeError(self.path, f"damaged: the decoder rejected a packet after frame "
                                           f"{rejected_at - 1} ({rejected}) and later frames decode, so frames "
                                           f"from {rejected_at} on cannot be numbered; asked for up to {last}")
                if n in want:
                    out[n] = self._to_rgb(reformatter, f, size)
                n += 1
            if n > last:
                break
        if n <= last:
            announced = self.num_frames
            self.num_frames = n
            if n == 0:
                raise VideoDecodeError(self.path, "no_frames: no frame of the video stream decodes")
            raise FrameCountChanged(self.path, announced, n)
        return out


def index_mismatch(name: str, count: int, times: Optional[np.ndarray], index: "_PyAVBackend",
                   relative: bool = False) -> str:
    """"" when a backend's frame table agrees with PyAV's packet index of the same file, else why not.

    ``count``: the backend's frame count; ``times``: its frame start times in seconds (None: not
    compared); ``relative``: compare times relative to the first frame (decord shifts them by the
    stream start). Each time must lie within half the smallest frame gap of the index's time of
    that frame, i.e. point at the same frame.
    """
    if not index.indexed:
        return f"the {index.container_format or 'unknown'} container has no packet timestamps to check {name} against"
    if index.demux_error:
        return f"the container does not demux to its end ({index.demux_error})"
    if count != index.num_frames:
        return f"{name} counts {count} frames, the container's packet index {index.num_frames}"
    if times is None:
        return ""
    ref = index.frame_times()
    times = np.asarray(times, dtype=np.float64)
    if relative:
        ref, times = ref - ref[0], times - times[0]
    tol = 0.5 * float(np.diff(ref).min()) if len(ref) > 1 else 1e-3
    bad = np.flatnonzero(~(np.abs(times - ref) <= tol))
    if bad.size:
        i = int(bad[0])
        return f"{name} puts frame {i} at {times[i]:.4f} s, the packet index at {ref[i]:.4f} s"
    return ""


class _DecordBackend:
    """decord ``VideoReader`` with ``get_batch`` random access, trusted only where its frame
    table matches PyAV's packet index of the file (count and every frame's timestamp)."""

    name = "decord"
    call = "get_batch"

    def __init__(self, path: str, local: str, threads: int, index: "_PyAVBackend"):
        import decord

        self.path = path
        self._vr = decord.VideoReader(local, ctx=decord.cpu(0), num_threads=max(int(threads), 0))
        self.num_frames = len(self._vr)
        if self.num_frames <= 0:
            raise RuntimeError("decord reports 0 frames")
        fps = self._vr.get_avg_fps()
        self.fps = float(fps) if _valid_fps(fps) else float("nan")
        ts = self._vr.get_frame_timestamp(list(range(self.num_frames)))  # (N, 2) start/end seconds
        if ts[0][0] < -1e6:
            raise RuntimeError("inconsistent frame table: frame timestamps are unknown to decord")
        if ts[0][0] < -1e-3:
            raise RuntimeError(f"inconsistent frame table: first frame at {ts[0][0]:.3f} s "
                               "(an edit list discards leading frames that decord still counts)")
        if self.num_frames > 1 and not ts[1][0] > ts[0][0]:
            raise RuntimeError("inconsistent frame table: timestamps do not increase")
        why = index_mismatch("decord", self.num_frames, ts[:, 0], index, relative=True)
        if why:
            raise RuntimeError(f"not verified: {why}")
        self.mode = "get_batch"

    def close(self) -> None:
        self._vr = None

    def read(self, indices: Sequence[int], size: Optional[Tuple[int, int]] = None) -> np.ndarray:
        wanted = sorted(set(int(i) for i in indices))
        if wanted[0] < 0 or wanted[-1] >= self.num_frames:
            raise VideoDecodeError(self.path, f"bad_index: frame index out of range 0..{self.num_frames - 1}")
        if self._vr is None:
            raise VideoDecodeError(self.path, "unreadable: reader already closed")
        batch = self._vr.get_batch(wanted).asnumpy()  # (K', H, W, 3)
        if size is not None:
            batch = resize_frames(batch, size)  # (K', h, w, 3)
        pos = {i: j for j, i in enumerate(wanted)}
        return batch[[pos[int(i)] for i in indices]]  # (K, H, W, 3)


_logged_fallbacks: set = set()


def _log_fallback(path: str, backend: str, why: str) -> None:
    """One warning per file and process: which backend was not used for it, and why."""
    if (path, backend) in _logged_fallbacks:
        return
    _logged_fallbacks.add((path, backend))
    logger.warning("%s: %s not used, PyAV decodes it instead: %s", path, backend, why)


class VideoReader:
    """An opened video: ``num_frames``, ``fps``, ``width``, ``height``, ``backend`` (actually
    used), ``read(indices, size=None)``.

    Every file is first demuxed by PyAV (its packet index, no decoding); decord and torchcodec
    are used only where their frame table agrees with it, and PyAV takes over (the reason in
    ``fallback``, logged once per file) where it does not, or when they fail to decode.
    ``device`` ("cpu" | "cuda", torchcodec only): where decoded frames are made; with "cuda"
    ``read`` returns a uint8 torch tensor on the GPU (NVDEC), else a numpy array.
    """

    def __init__(self, path: str, backend: str = "pyav", threads: int = 1, device: str = "cpu"):
        if backend not in BACKENDS:
            raise ValueError(f"decoder backend {backend!r} is not known; expected one of {BACKENDS}")
        if device != "cpu" and not (backend == "torchcodec" and str(device).startswith("cuda")):
            raise ValueError(f"decode device {device!r} needs backend 'torchcodec' and a 'cuda' device; "
                             f"backend {backend!r} decodes on the CPU only")
        self.path = path
        self.threads = threads
        self.device = str(device)
        self.fallback = ""
        if not path_manager.exists(path):
            raise VideoDecodeError(path, "missing: file does not exist")
        try:
            local = path_manager.get_local_path(path)
        except Exception as e:
            raise VideoDecodeError(path, f"unreadable: cannot fetch the file ({_first_line(e)})")
        if os.path.isdir(local):
            raise VideoDecodeError(path, "unreadable: the path is a folder")
        if os.path.getsize(local) == 0:
            raise VideoDecodeError(path, "empty: file is 0 bytes")
        self._local = local
        self._pyav = _PyAVBackend(path, local, threads)  # the packet index; the decoder of last resort
        self._impl = self._pyav
        if backend != "pyav":
            try:
                if backend == "decord":
                    self._impl = _DecordBackend(path, local, threads, self._pyav)
                else:
                    from gcvideo.data.decoder_torchcodec import TorchCodecBackend, torchcodec_unavailable

                    why = torchcodec_unavailable()  # a real load of its FFmpeg libraries, once
                    if why:
                        raise ImportError(why)
                    self._impl = TorchCodecBackend(path, local, threads, self._pyav, self.device)
            except ImportError as e:
                self._use_pyav(backend, f"{backend} is not installed or cannot load ({_first_line(e)})")
            except Exception as e:  # DECORDError, RuntimeError, ...
                self._use_pyav(backend, _first_line(e))

    @property
    def backend(self) -> str:
        return self._impl.name

    @property
    def num_frames(self) -> int:
        return self._impl.num_frames

    @property
    def fps(self) -> float:
        """Average frame rate (NaN when the file does not say; callers then assume TARGET_FPS)."""
        return self._impl.fps

    @property
    def height(self) -> int:
        """Frame height in pixels as the container declares it (0 if unknown)."""
        return self._pyav.height

    @property
    def width(self) -> int:
        return self._pyav.width

    def stream_info(self) -> StreamInfo:
        """Header fields and frame timestamps from PyAV's packet index (whatever backend decodes)."""
        return self._pyav.stream_info()

    def _use_pyav(self, backend: str, why: str) -> None:
        self.fallback = f"{backend}: {why}"
        _log_fallback(self.path, backend, why)
        if self._impl is not self._pyav:
            self._impl.close()
        self._impl = self._pyav

    def close(self) -> None:
        """Release the file (also done by ``with open_video(...) as reader``)."""
        if self._impl is not self._pyav:
            self._impl.close()
        self._pyav.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, indices: Sequence[int], size: Optional[Tuple[int, int]] = None):
        """uint8 ``(len(indices), H, W, 3)`` for exactly these frame indices, in this order.

        ``size`` = (height, width): the frames scaled to that size. PyAV scales inside its
        YUV->RGB conversion (libswscale SWS_BILINEAR, which widens its filter when shrinking);
        the other backends convert at full size and resize with :func:`resize_frames`
        (torchvision bilinear, antialiased). Both are within a few grey levels of a full-size
        decode followed by ``resize_frames`` (mean absolute difference < 2, tested).
        Raises FrameCountChanged (sample again with ``num_frames``) or VideoDecodeError.
        """
        indices = [int(i) for i in indices]
        if not indices:
            raise ValueError("read() needs at least one frame index")
        size = check_size(size)
        if self._impl is not self._pyav:
            try:
                return self._impl.read(indices, size)
            except VideoDecodeError:
                raise
            except Exception as e:  # damaged packets etc.: PyAV decides what is exact
                self._use_pyav(self._impl.name, f"{self._impl.call} failed ({_first_line(e)})")
        frames = self._pyav.read(indices, size)  # (K, H, W, 3)
        if self.device != "cpu":
            import torch

            return torch.from_numpy(frames).to(self.device)
        return frames


def open_video(path: str, backend: str = "pyav", threads: int = 1, device: str = "cpu") -> VideoReader:
    """Open ``path`` (any iopath location) with ``backend`` ("pyav", "decord" or "torchcodec").

    Raises VideoDecodeError (with ``reason``) when the file is missing, empty, not a
    video, has no video stream or no frames.
    """
    return VideoReader(path, backend=backend, threads=threads, device=device)


def decode_frames(path: str, indices: Sequence[int], backend: str = "pyav", threads: int = 1,
                  size: Optional[Tuple[int, int]] = None, device: str = "cpu"):
    """uint8 frames ``(len(indices), H, W, 3)`` for exactly the 0-based ``indices``.

    Order is kept and duplicates are allowed. ``size`` = (height, width) scales them (see
    ``VideoReader.read``). An index past the last decodable frame raises VideoDecodeError
    (reason ``bad_index: ...``).
    """
    with open_video(path, backend=backend, threads=threads, device=device) as reader:
        try:
            return reader.read(indices, size=size)
        except FrameCountChanged as e:
            raise VideoDecodeError(path, f"bad_index: the video has only {e.num_frames} decodable frames "
                                         f"(container announced {e.announced}); asked for up to {max(indices)}")


@dataclass(frozen=True)
class DecodeOptions:
    """How a dataset decodes its videos: the ``decoder`` backend (one of BACKENDS) with ``threads``
    threads on ``device`` ("cuda": torchcodec frames on the GPU), and the per-video bounds on what
    decoding and resizing allocate (DATA.MAX_FRAME_PIXELS, DATA.MAX_ASPECT_RATIO)."""
    decoder: str = "pyav"
    threads: int = 1
    device: str = "cpu"
    max_frame_pixels: int = 4096 * 2304
    max_aspect_ratio: float = 10.0

    def __post_init__(self):
        for name, kind in (("threads", int), ("device", str), ("max_frame_pixels", int), ("max_aspect_ratio", float)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        if self.decoder not in BACKENDS:
            raise ValueError(f"decoder = {self.decoder!r}; expected one of {BACKENDS}")

    def open(self, path: str) -> VideoReader:
        """``open_video(path)`` with this backend, threads and device."""
        return open_video(path, self.decoder, self.threads, self.device)

    def check_size(self, path: str, height: int, width: int) -> None:
        """``check_frame_size`` against these bounds (VideoDecodeError ``bad_size: ...``)."""
        check_frame_size(path, height, width, self.max_frame_pixels, self.max_aspect_ratio)
