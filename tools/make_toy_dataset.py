#!/usr/bin/env python
"""Write the toy motion dataset (gcvideo.data.toy): mp4 videos, train.csv/val.csv, classes.txt,
label_pairs.json and toy_config.yaml (a config override with the label map and label pairs).

    python tools/make_toy_dataset.py --out data/toy [--seed 0] [--num-train 600] [--num-val 200]
                                     [--size 96] [--frames 72] [--workers N]
"""
import inspect
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.data.toy import TOY_CLASSES, make_toy_dataset  # noqa: E402


@tool
def main(argv=None) -> int:
    default = {k: p.default for k, p in inspect.signature(make_toy_dataset).parameters.items()}  # one place
    ap = ToolParser(__doc__, overrides=False)
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seed", type=int, default=default["seed"], help="random seed (same seed, same dataset)")
    ap.add_argument("--num-train", type=int, default=default["num_train"], help="training videos (classes balanced)")
    ap.add_argument("--num-val", type=int, default=default["num_val"], help="validation videos")
    ap.add_argument("--size", type=int, default=default["size"], help="frame width = height in pixels")
    ap.add_argument("--frames", type=int, default=default["num_frames"], help="frames per video (30 fps)")
    ap.add_argument("--workers", type=int, default=0, help="processes (0 = one per CPU core)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    t0 = time.time()
    meta = make_toy_dataset(args.out, seed=args.seed, num_train=args.num_train, num_val=args.num_val,
                            size=args.size, num_frames=args.frames, workers=args.workers or None,
                            progress=not args.quiet)
    out = os.path.abspath(args.out)
    print(f"toy dataset in {out}: {meta['num_train']} train + {meta['num_val']} val videos of {len(TOY_CLASSES)} "
          f"classes, {meta['bytes'] / 1e6:.1f} MB, {time.time() - t0:.1f} s\n"
          f"config override: {os.path.join(out, 'toy_config.yaml')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
