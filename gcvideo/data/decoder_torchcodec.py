"""The torchcodec backend of :mod:`gcvideo.data.decoder` (``DATA.DECODER: torchcodec``).

torchcodec (PyTorch's video decoder, ``pip install torchcodec``; it loads FFmpeg's shared
libraries, e.g. ``apt-get install ffmpeg``) decodes in its exact seek mode: it scans the file
once and seeks to the keyframe before each wanted frame. On ``device="cuda"`` it decodes with
NVDEC straight into GPU memory and ``read`` returns a uint8 CUDA tensor ``(K, H, W, 3)``.

It is trusted like decord: its frame count must equal PyAV's packet index of the file
(``decoder.index_mismatch``), and every frame it returns must carry the presentation time of
the frame asked for (checked on each read, so a shifted frame is never returned). Anything
else (a count that differs, a container without packet timestamps, a decoding error) makes
the reader use PyAV for that file, with the reason logged once.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from gcvideo.data.decoder import VideoDecodeError, index_mismatch, resize_frames

__all__ = ["TorchCodecBackend", "torchcodec_unavailable"]


def _load_torchcodec() -> int:
    """Import torchcodec and load its FFmpeg-dependent core library; FFmpeg's major version.

    Importing torchcodec succeeds without FFmpeg (its image decoders need none); only the core
    library it tried to load at import tells whether videos can be decoded.
    """
    import torchcodec

    version = getattr(torchcodec, "ffmpeg_major_version", None)
    if version is None:
        raise RuntimeError("torchcodec could not load libtorchcodec_core: FFmpeg's shared libraries "
                           "(libavcodec, libavformat, libavutil of FFmpeg 4-9) are not found; install them, "
                           "e.g. apt-get install ffmpeg")
    return int(version)


@functools.lru_cache(maxsize=None)
def torchcodec_unavailable() -> str:
    """"" where torchcodec can decode videos (installed and its FFmpeg libraries loaded), else why
    not, in one line. Cached: the backend choice asks once per process."""
    try:
        _load_torchcodec()
    except Exception as e:  # ImportError, or RuntimeError when FFmpeg's libraries are missing
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return f"torchcodec unavailable: {type(e).__name__}: {first}"
    return ""


class TorchCodecBackend:
    """torchcodec ``VideoDecoder`` (exact seek mode, NHWC uint8) checked against the packet index."""

    name = "torchcodec"
    call = "get_frames_at"

    def __init__(self, path: str, local: str, threads: int, index, device: str = "cpu"):
        from torchcodec.decoders import VideoDecoder  # ImportError / RuntimeError (no FFmpeg) -> PyAV

        self.path = path
        self.device = str(device)
        self._dec = VideoDecoder(local, seek_mode="exact", dimension_order="NHWC", device=self.device,
                                 num_ffmpeg_threads=max(int(threads), 0))
        meta = self._dec.metadata
        self.num_frames = int(meta.num_frames or 0)
        if self.num_frames <= 0:
            raise RuntimeError("torchcodec finds no frames")
        why = index_mismatch("torchcodec", self.num_frames, None, index)
        if why:
            raise RuntimeError(f"not verified: {why}")
        self._times = index.frame_times()  # (N,) seconds, what each returned frame must show
        self._tol = 0.5 * float(np.diff(self._times).min()) if self.num_frames > 1 else 1e-3
        self.fps = index.fps
        self.mode = "exact"

    def close(self) -> None:
        self._dec = None

    def read(self, indices: Sequence[int], size: Optional[Tuple[int, int]] = None):
        wanted = sorted(set(int(i) for i in indices))
        if wanted[0] < 0 or wanted[-1] >= self.num_frames:
            raise VideoDecodeError(self.path, f"bad_index: frame index out of range 0..{self.num_frames - 1}")
        if self._dec is None:
            raise VideoDecodeError(self.path, "unreadable: reader already closed")
        batch = self._dec.get_frames_at(wanted)
        got = batch.pts_seconds.double().cpu().numpy()
        off = np.abs(got - self._times[wanted])
        if not (off <= self._tol).all():  # never a neighbour in place of the frame asked for
            j = int(np.argmax(~(off <= self._tol)))
            raise RuntimeError(f"torchcodec returned the frame at {got[j]:.4f} s for frame {wanted[j]} "
                               f"({self._times[wanted[j]]:.4f} s)")
        data = batch.data  # (K', H, W, 3) uint8, on self.device
        pos = torch.tensor([wanted.index(i) for i in indices], device=data.device)
        if self.device == "cpu":
            frames = data.numpy()
            if size is not None:
                frames = resize_frames(frames, size)  # (K', h, w, 3)
            return frames[pos.numpy()]  # (K, H, W, 3)
        if size is not None:
            from torchvision.transforms.v2 import functional as TF

            x = TF.resize(data.permute(0, 3, 1, 2), list(size), interpolation=TF.InterpolationMode.BILINEAR,
                          antialias=True)  # (K', 3, h, w) on the GPU
            data = x.permute(0, 2, 3, 1)
        return data[pos].contiguous()  # (K, H, W, 3) on the GPU
