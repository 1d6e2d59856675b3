#!/usr/bin/env python
"""Train a video model: ``python tools/train_net.py --config FILE [--init-from CKPT] [KEY VALUE ...]``.

Run the same command again to resume. Several processes / machines: launch with
torchrun (see docs/training.md).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.config import load_cfg  # noqa: E402
from gcvideo.engine import train  # noqa: E402


@tool
def main(argv=None) -> int:
    p = ToolParser(__doc__)
    p.add_argument("--config", required=True, help="YAML config (overrides of gcvideo/config.py defaults)")
    p.add_argument("--init-from", default="", help="initial weights: 2D ImageNet ResNet (inflated) or a "
                   "pytorchvideo/gcvideo 3D checkpoint (sets TRAIN.INIT_FROM)")
    args = p.parse_args(argv)
    opts = list(args.opts) + (["TRAIN.INIT_FROM", args.init_from] if args.init_from else [])
    cfg = load_cfg(args.config, opts)
    train(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
