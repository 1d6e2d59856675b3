#!/usr/bin/env python
"""Find the videos of an annotation file that cannot be decoded; write them and a cleaned CSV.

    python tools/check_videos.py --csv data/k400/val.csv [--workers 8] [--full]
           [--format auto] [--prefix DIR] [--label-map FILE] [--backend decord|pyav] [--out DIR]

Writes {name}.broken.txt (path<TAB>reason) and {name}.clean.csv (the annotation file without
the broken videos' lines) next to the CSV or into --out. Exit status 0 when it could check (the
summary says how many are broken); 2 with one "error:" line when none of the videos exists (the
prefix is probably wrong) or the annotation file cannot be used.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.data.annotations import CLIP_LAYOUTS, FORMATS  # noqa: E402
from gcvideo.data.check import CheckOptions, check_annotations  # noqa: E402
from gcvideo.data.decoder import BACKENDS  # noqa: E402


@tool
def main(argv=None) -> int:
    ap = ToolParser(__doc__, overrides=False)
    ap.add_argument("--csv", required=True, help="annotation file (PySlowFast, mmaction2 list or Kinetics CSV)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel processes")
    ap.add_argument("--full", action="store_true", help="decode every frame (default: first, middle, last)")
    ap.add_argument("--format", default="auto", choices=list(FORMATS), help="DATA.FORMAT")
    ap.add_argument("--prefix", default="", help="DATA.PATH_PREFIX (default: the CSV's folder)")
    ap.add_argument("--label-map", default="", help="DATA.LABEL_MAP for class-name labels")
    ap.add_argument("--layout", default="auto", choices=list(CLIP_LAYOUTS), help="DATA.CLIP_LAYOUT")
    ap.add_argument("--num-classes", type=int, default=None, help="labels must be below this")
    ap.add_argument("--backend", default="pyav", choices=list(BACKENDS), help="DATA.DECODER")
    ap.add_argument("--out", default="", help="folder for the outputs (default: the CSV's folder)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    options = CheckOptions(fmt=args.format, path_prefix=args.prefix, label_map=args.label_map,
                           num_classes=args.num_classes, clip_layout=args.layout, backend=args.backend, full=args.full)
    s = check_annotations(args.csv, options, workers=args.workers, out_dir=args.out, progress=not args.quiet)
    kinds = ", ".join(f"{k}: {v}" for k, v in sorted(s["kinds"].items())) or "none"
    print(f"{s['broken']} of {s['videos']} videos cannot be used ({kinds})\n"
          f"broken list: {s['broken_list']}\ncleaned annotations: {s['clean_csv']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
