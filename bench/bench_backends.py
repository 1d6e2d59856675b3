#!/usr/bin/env python
"""Decoder backends side by side (one core, one decoder thread): open cost (PyAV's packet index
included, which decord and torchcodec are checked against), an 8x8 training clip read, and
read(size=...) (scaled in the RGB conversion) against a full-size read + resize_frames.

    python bench/bench_backends.py [--clips 40] [--files demo.mp4,generated]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "data"))

from gcvideo.data.decoder import open_video, resize_frames  # noqa: E402
from gcvideo.data.sampling import train_clip_indices  # noqa: E402


def backends():
    out = ["pyav", "decord"]
    try:
        from torchcodec.decoders import VideoDecoder  # noqa: F401
        out.append("torchcodec")
    except Exception:
        pass
    return out


def clip_times(path, backend, clips, size=None, resize_after=False):
    """Median CPU ms of (open, one 8x8 clip read) over ``clips`` random clips, and the backend used."""
    rng = np.random.default_rng(0)
    opens, reads, used = [], [], ""
    for _ in range(clips):
        t0 = time.process_time()
        r = open_video(path, backend)
        t1 = time.process_time()
        idx = train_clip_indices(r.num_frames, r.fps, 8, 8, 30, rng)
        if resize_after:
            resize_frames(r.read(idx), size)
        else:
            r.read(idx, size=size)
        t2 = time.process_time()
        used = r.backend
        r.close()
        opens.append(t1 - t0)
        reads.append(t2 - t1)
    return 1e3 * float(np.median(opens)), 1e3 * float(np.median(reads)), used


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(1)
    import data_helpers as H

    tmp = tempfile.mkdtemp(prefix="bench_backends_")
    gen = H.write_index_video(os.path.join(tmp, "gen.mp4"), 300, fps=30, width=340, height=256, gop=250)
    files = {"demo.mp4": os.path.join(ROOT, "tests", "data", "files", "demo.mp4"), "generated 340x256": gen}
    print("| file | backend (used) | open ms | 8x8 clip read ms | clips/s (open+read) |")
    print("|---|---|---|---|---|")
    for name, path in files.items():
        for b in backends():
            o, r, used = clip_times(path, b, args.clips)
            print(f"| {name} | {b} ({used}) | {o:.1f} | {r:.1f} | {1e3 / (o + r):.1f} |")
    print()
    print("| file | backend | read(size=(288, 383)) ms | read() + resize_frames ms |")
    print("|---|---|---|---|")
    for name, path in files.items():
        for b in backends():
            _, a, _ = clip_times(path, b, args.clips, size=(288, 383))
            _, c, _ = clip_times(path, b, args.clips, size=(288, 383), resize_after=True)
            print(f"| {name} | {b} | {a:.1f} | {c:.1f} |")


if __name__ == "__main__":
    main()
