#!/usr/bin/env python
"""Multi-view test: ``python tools/test_net.py [--config FILE] [--checkpoint CKPT] [KEY VALUE ...]``.

Views: TEST.NUM_ENSEMBLE_VIEWS clips x TEST.NUM_SPATIAL_CROPS crops (10 x 3 = 30).
Without --checkpoint the newest checkpoint in OUTPUT_DIR is tested. Without --config the config
stored in that checkpoint is used (``OUTPUT_DIR RUN`` is then enough); with one, its frames,
sampling, crops, normalisation and model must be the checkpoint's (KEY VALUE pairs may change them).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.config import load_cfg  # noqa: E402
from gcvideo.engine import test  # noqa: E402
from gcvideo.engine.tester import load_checkpoint_cfg  # noqa: E402


@tool
def main(argv=None) -> int:
    p = ToolParser(__doc__)
    p.add_argument("--config", default="", help="YAML config the model was trained with (default: the one "
                   "stored in the checkpoint)")
    p.add_argument("--checkpoint", default="", help="checkpoint to test (sets TEST.CHECKPOINT); 'best': OUTPUT_DIR's "
                   "best by validation top-1 (TRAIN.KEEP_BEST)")
    args = p.parse_args(argv)
    opts = list(args.opts) + (["TEST.CHECKPOINT", args.checkpoint] if args.checkpoint else [])
    cfg = load_cfg(args.config, opts) if args.config else load_checkpoint_cfg(opts)
    test(cfg, allow=list(args.opts)[0::2])  # keys set on the command line may differ from the checkpoint's
    return 0


if __name__ == "__main__":
    sys.exit(main())
