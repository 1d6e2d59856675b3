#!/usr/bin/env python
"""The main job (``make toy``): toy dataset (made if missing), train a small GC Slow-only model on
the CPU, 30-view test, print top-1/top-5 and where the report is.

    python tools/run_toy.py [--config configs/toy/slow_gc_toy.yaml] [--data data/toy] [KEY VALUE ...]
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gcvideo.engine.toy import run_toy  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs/toy/slow_gc_toy.yaml"))
    p.add_argument("--data", default=None, help="toy dataset folder (default: the config's DATA.PATH_TO_DATA_DIR)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. OUTPUT_DIR runs/toy2")
    args = p.parse_args(argv)
    run_toy(args.config, args.data, args.opts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
