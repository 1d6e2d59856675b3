#!/usr/bin/env python
"""Peak RSS of the PyAV reader against file size: generated h264 files of a few sizes (one lossless
noise GOP muxed again and again, ``data_helpers.write_large_video``), each opened in a fresh process
that reads one 8-frame clip from the middle (``data_helpers.peak_rss_of_read``: getrusage
ru_maxrss before opening and after the read, and the seconds open + read took). One file at a time
on disk, deleted after its measurement.

    python bench/bench_decoder_memory.py [--sizes-mb 256 768 1536] [--dir /tmp]
"""
import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "data"))

import data_helpers as H  # noqa: E402

MB = 1 << 20


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[256, 768, 1536])
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where the generated files go (one at a time)")
    args = ap.parse_args()
    print("| file MB | frames | RSS before open MB | peak RSS after read MB | peak - before MB | open + read s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for mb in args.sizes_mb:
            path = os.path.join(d, f"large_{mb}.mp4")
            t = time.perf_counter()
            H.write_large_video(path, mb * MB)
            made = time.perf_counter() - t
            size = os.path.getsize(path)
            try:
                r = H.peak_rss_of_read(path)
            finally:
                os.remove(path)
            print(f"| {size / MB:.0f} | {r['num_frames']} | {r['before'] / MB:.0f} | {r['peak'] / MB:.0f} | "
                  f"{(r['peak'] - r['before']) / MB:.0f} | {r['seconds']:.2f} |  (written in {made:.1f} s)", flush=True)


if __name__ == "__main__":
    main()
