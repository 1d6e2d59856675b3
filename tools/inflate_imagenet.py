#!/usr/bin/env python
"""Inflate a 2D ImageNet ResNet checkpoint into a gcvideo Slow-only model.

    python tools/inflate_imagenet.py --src resnet50.pth --config configs/kinetics400/slow_r50_8x8_gc_all.yaml \
        --dst runs/inflated/slow_r50_gc_all_imagenet.pth

Accepts torchvision/timm ResNet-50/101 state dicts (also wrapped under
state_dict/model keys). Prints which keys were mapped, which are new in 3D
(head, context blocks) and which 2D keys were unused (the classifier).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.models.pretrained import inflate_imagenet_checkpoint  # noqa: E402


@tool
def main(argv=None):
    p = ToolParser(__doc__)
    p.add_argument("--src", required=True, help="2D ResNet checkpoint (.pth)")
    p.add_argument("--config", required=True, help="gcvideo config of the 3D model")
    p.add_argument("--dst", required=True, help="where to write the inflated state dict (must not exist)")
    p.add_argument("--overwrite", action="store_true", help="replace --dst if it exists")
    a = p.parse_args(argv)
    inflate_imagenet_checkpoint(a.src, a.config, a.dst, opts=a.opts, overwrite=a.overwrite)
    return 0


if __name__ == "__main__":
    sys.exit(main())
