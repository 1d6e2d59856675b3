#!/usr/bin/env python
"""Which rotating toy validation videos a model gets wrong, by angular speed, shape and texture.

    python bench/toy_rotation_errors.py PREDICTIONS.csv [PREDICTIONS.csv ...] [--seed 0]

PREDICTIONS.csv: a test report's predictions (``tools/test_net.py`` writes it), on the toy set made
with ``make_toy_dataset(seed=SEED)``. Each rotating validation video is rendered again from its
seed (2 frames; ``render_video`` draws its random parameters in the same order for any length), and
its angular speed (degrees per sampled frame at a stride of 8), shape and texture are recorded.
Prints, per group: [videos, wrong].
"""
import argparse
import collections
import csv
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import gcvideo.data.toy as toy  # noqa: E402

STRIDE = 8


def rotating_video_params(seed: int, num_val: int = 200):
    """{index: {"deg_per_step", "shape", "texture"}} of the rotating validation videos."""
    seen = {}
    motion, shape_alpha, pattern = toy._motion, toy._shape_alpha, toy._pattern

    def spy_motion(rng, label, n, size):
        out = motion(rng, label, n, size)
        seen["deg_per_step"] = abs(math.degrees(float(out[2][1] - out[2][0]))) * STRIDE
        return out

    def spy_shape(kind, *args):
        seen["shape"] = kind
        return shape_alpha(kind, *args)

    def spy_pattern(kind, u, v, freq, angle):
        seen["texture"] = kind  # the last call is the object's (the background's pattern comes first)
        return pattern(kind, u, v, freq, angle)

    toy._motion, toy._shape_alpha, toy._pattern = spy_motion, spy_shape, spy_pattern
    try:
        params = {}
        rotating = {toy.TOY_CLASSES.index("rotating_cw"), toy.TOY_CLASSES.index("rotating_ccw")}
        for i in range(num_val):
            if toy.video_label(i) in rotating:
                seen.clear()
                toy.render_video(toy.video_rng(seed, "val", i), toy.video_label(i), 2, 128)
                params[i] = dict(seen)
        return params
    finally:
        toy._motion, toy._shape_alpha, toy._pattern = motion, shape_alpha, pattern


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("predictions", nargs="+")
    p.add_argument("--seed", type=int, default=0, help="seed the toy set was made with")
    args = p.parse_args(argv)
    params = rotating_video_params(args.seed)
    for path in args.predictions:
        with open(path) as f:
            wrong = {int(r["index"]) for r in csv.DictReader(f) if r["label"] != r["pred1"]}
        print(path)
        groups = {"shape": lambda d: d["shape"], "texture": lambda d: d["texture"],
                  "degrees per sampled frame (5-degree bins)": lambda d: int(d["deg_per_step"] // 5) * 5}
        for name, key in groups.items():
            counts = collections.defaultdict(lambda: [0, 0])
            for i, d in params.items():
                counts[key(d)][0] += 1
                counts[key(d)][1] += i in wrong
            print(f"  {name}: {dict(sorted(counts.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
