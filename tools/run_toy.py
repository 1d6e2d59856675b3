#!/usr/bin/env python
"""The main job (``make toy``): toy dataset (made if missing), train a small GC Slow-only model on
the CPU, 30-view test, GC attention of one validation video per class; prints top-1/top-5 and the
paths of the report, training curves, confusion matrix and attention figures.

    python tools/run_toy.py [--config configs/toy/slow_gc_toy.yaml] [--data data/toy] [--no-attention]
                            [KEY VALUE ...]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.recipes.toy import run_toy  # noqa: E402


@tool
def main(argv=None) -> int:
    p = ToolParser(__doc__)
    p.add_argument("--config", default="configs/toy/slow_gc_toy.yaml",
                   help="config (a shipped one, configs/..., is found from any folder)")
    p.add_argument("--data", default=None, help="toy dataset folder (default: the config's DATA.PATH_TO_DATA_DIR)")
    p.add_argument("--no-attention", action="store_true", help="skip the attention figures")
    args = p.parse_args(argv)
    run_toy(args.config, args.data, args.opts, attention=not args.no_attention)
    return 0


if __name__ == "__main__":
    sys.exit(main())
