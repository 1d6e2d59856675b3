#!/usr/bin/env python
"""Re-encode a Kinetics copy to a short side and write PySlowFast train/val CSVs.

    python tools/prepare_kinetics.py --src raw/ --dst data/k400_320/ [--short-side 320] [--workers 8]
           [--label-map datasets/kinetics400/label_map.txt] [--annotations kinetics_train.csv kinetics_val.csv]

--src holds <split>/<class>/clip files (e.g. videos_train/abseiling/...), <class>/clip files
(one split, --split), or flat clips named {youtube_id}_{start:06d}_{end:06d}.* with
--annotations (the official CSVs give class and split). Outputs keep their relative paths
(suffix .mp4) under --dst, plus --dst/{split}.csv, --dst/failed.txt and --dst/missing.txt
(annotated clips not in --src). Re-running skips finished files (outputs are written to a
temporary name and renamed when complete). Exit status 1 when videos failed, 2 for a mistake
in the arguments or the annotations (one "error:" line).
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.data.prepare import PREPARE_DEFAULTS, EncodeSettings, prepare_kinetics  # noqa: E402


@tool
def main(argv=None) -> int:
    ap = ToolParser(__doc__, overrides=False)
    ap.add_argument("--src", required=True, help="folder with the downloaded clips")
    ap.add_argument("--dst", required=True, help="output folder (videos + CSVs)")
    ap.add_argument("--short-side", type=int, default=PREPARE_DEFAULTS.short_side,
                    help="short side in pixels (never upscaled)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    ap.add_argument("--label-map", default="", help="class names, one a line (default: the Kinetics-400 map)")
    ap.add_argument("--annotations", nargs="*", default=[], help="official Kinetics CSVs (class and split by clip)")
    ap.add_argument("--split", default="train", help="split of clips whose folders do not say")
    ap.add_argument("--crf", type=int, default=PREPARE_DEFAULTS.crf, help="x264 quality (lower = better, larger)")
    ap.add_argument("--preset", default=PREPARE_DEFAULTS.preset, help="x264 preset")
    ap.add_argument("--gop", type=int, default=PREPARE_DEFAULTS.gop,
                    help="max frames between keyframes (0 = x264's default, 250); the default is chosen from "
                         "the keyframe-interval table in bench/results/decode.md (clips/s per core vs bytes)")
    ap.add_argument("--x264-options", nargs="*", metavar="KEY=VALUE",
                    default=[f"{k}={v}" for k, v in PREPARE_DEFAULTS.x264_options.items()],
                    help="libx264 options (default: %(default)s; none: give the flag alone)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    t0 = time.time()
    encode = EncodeSettings(short_side=args.short_side, crf=args.crf, preset=args.preset, gop=args.gop,
                            x264_options=EncodeSettings.parse_x264_options(args.x264_options))
    s = prepare_kinetics(args.src, args.dst, encode, label_map=args.label_map, annotations=args.annotations,
                         default_split=args.split, workers=args.workers, progress=not args.quiet)
    print(f"{s['videos']} videos: {s['encoded']} re-encoded, {s['already_done']} already done, {s['failed']} failed"
          f"{' (see failed.txt)' if s['failed'] else ''}"
          f"{'; %d annotated clips not in --src (see missing.txt)' % s['missing'] if s['missing'] else ''}; CSVs: "
          + ", ".join(f"{k}.csv ({v})" for k, v in sorted(s["splits"].items())) + f"; {time.time() - t0:.1f} s")
    return 1 if s["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
