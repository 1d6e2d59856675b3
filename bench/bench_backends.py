#!/usr/bin/env python
"""Decoder backends side by side (one core, one decoder thread): open cost (PyAV's packet index
included, which decord and torchcodec are checked against), an 8x8 training clip read, and
read(size=...) (scaled in the RGB conversion) against a full-size read + resize_frames.

    python bench/bench_backends.py [--clips 40]
    python bench/bench_backends.py --device cuda   # torchcodec NVDEC vs PyAV, wall-clock ms (GPU machine)
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


def clip_times(path, backend, clips, size=None, resize_after=False, device="cpu"):
    """Median ms of (open, one 8x8 clip read) over ``clips`` random clips, and the backend used:
    CPU time of this process, or wall-clock time (synchronised) with ``device="cuda"``."""
    clock = time.process_time if device == "cpu" else time.perf_counter
    rng = np.random.default_rng(0)
    opens, reads, used = [], [], ""
    for _ in range(clips):
        t0 = clock()
        r = open_video(path, backend, device=device)
        t1 = clock()
        idx = train_clip_indices(r.num_frames, r.fps, 8, 8, 30, rng)
        if resize_after:
            resize_frames(r.read(idx), size)
        else:
            r.read(idx, size=size)
        if device != "cpu":
            torch.cuda.synchronize()
        t2 = clock()
        used = r.backend
        r.close()
        opens.append(t1 - t0)
        reads.append(t2 - t1)
    return 1e3 * float(np.median(opens)), 1e3 * float(np.median(reads)), used


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--device", default="cpu", help="cuda: torchcodec NVDEC against PyAV, wall-clock")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import data_helpers as H

    tmp = tempfile.mkdtemp(prefix="bench_backends_")
    gen = H.write_index_video(os.path.join(tmp, "gen.mp4"), 300, fps=30, width=340, height=256, gop=250)
    files = {"demo.mp4": os.path.join(ROOT, "tests", "data", "files", "demo.mp4"), "generated 340x256": gen}
    if args.device != "cpu":
        print("| file | backend, device (used) | open ms (wall) | 8x8 clip read ms (wall) | clips/s per reader |")
        print("|---|---|---|---|---|")
        for name, path in files.items():
            for b, dev in (("pyav", "cpu"), ("torchcodec", "cpu"), ("torchcodec", args.device)):
                o, r, used = clip_times(path, b, args.clips, device=dev)
                print(f"| {name} | {b}, {dev} ({used}) | {o:.1f} | {r:.1f} | {1e3 / (o + r):.1f} |")
        return
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
