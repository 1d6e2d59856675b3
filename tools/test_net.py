#!/usr/bin/env python
"""Multi-view test: ``python tools/test_net.py --config FILE [--checkpoint CKPT] [KEY VALUE ...]``.

Views: TEST.NUM_ENSEMBLE_VIEWS clips x TEST.NUM_SPATIAL_CROPS crops (10 x 3 = 30).
Without --checkpoint the newest checkpoint in OUTPUT_DIR is tested.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.config import load_cfg  # noqa: E402
from gcvideo.engine import test  # noqa: E402


@tool
def main(argv=None) -> int:
    p = ToolParser(__doc__)
    p.add_argument("--config", required=True, help="YAML config the model was trained with")
    p.add_argument("--checkpoint", default="", help="checkpoint to test (sets TEST.CHECKPOINT)")
    args = p.parse_args(argv)
    opts = list(args.opts) + (["TEST.CHECKPOINT", args.checkpoint] if args.checkpoint else [])
    test(load_cfg(args.config, opts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
