#!/usr/bin/env python
"""Multi-view test: ``python tools/test_net.py [--config FILE] [--checkpoint CKPT] [KEY VALUE ...]``.

Views: TEST.NUM_ENSEMBLE_VIEWS clips x TEST.NUM_SPATIAL_CROPS crops (10 x 3 = 30).
Without --checkpoint the newest checkpoint in OUTPUT_DIR is tested. Without --config the config
stored in that checkpoint is used (``OUTPUT_DIR RUN`` is then enough); with one, its frames,
sampling, crops, normalisation and model must be the checkpoint's (KEY VALUE pairs may change them).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.config import ConfigError, load_cfg  # noqa: E402
from gcvideo.engine import test  # noqa: E402
from gcvideo.engine.tester import load_checkpoint_cfg  # noqa: E402
from gcvideo.data.annotations import AnnotationError  # noqa: E402
from gcvideo.utils.folder_lock import FolderInUse  # noqa: E402
from gcvideo.utils.io import CheckpointError, WriteError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="", help="YAML config the model was trained with (default: the one "
                   "stored in the checkpoint)")
    p.add_argument("--checkpoint", default="", help="checkpoint to test (sets TEST.CHECKPOINT); 'best': OUTPUT_DIR's "
                   "best by validation top-1 (TRAIN.KEEP_BEST)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. TEST.NUM_ENSEMBLE_VIEWS 10")
    args = p.parse_args(argv)
    opts = list(args.opts) + (["TEST.CHECKPOINT", args.checkpoint] if args.checkpoint else [])
    try:
        cfg = load_cfg(args.config, opts) if args.config else load_checkpoint_cfg(opts)
        test(cfg, allow=list(args.opts)[0::2])  # keys set on the command line may differ from the checkpoint's
    except (ConfigError, FileNotFoundError, CheckpointError, AnnotationError, WriteError, FolderInUse) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
