#!/usr/bin/env python
"""Train a video model: ``python tools/train_net.py --config FILE [--init-from CKPT] [KEY VALUE ...]``.

Run the same command again to resume. Several processes / machines: launch with
torchrun (see docs/training.md).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.config import ConfigError, load_cfg  # noqa: E402
from gcvideo.data.annotations import AnnotationError  # noqa: E402
from gcvideo.data.broken import TooManyBrokenVideos  # noqa: E402
from gcvideo.engine import NonFiniteLossError, train  # noqa: E402
from gcvideo.engine.distributed import BatchSizeError  # noqa: E402
from gcvideo.models import InflationError  # noqa: E402
from gcvideo.utils.folder_lock import FolderInUse  # noqa: E402
from gcvideo.utils.io import CheckpointError, WriteError  # noqa: E402

# errors that a user fixes (config, files, data, disk): one "error: ..." line, no traceback
USER_ERRORS = (ConfigError, AnnotationError, CheckpointError, InflationError, FolderInUse, FileExistsError,
               WriteError, NonFiniteLossError, TooManyBrokenVideos, BatchSizeError)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="YAML config (overrides of gcvideo/config.py defaults)")
    p.add_argument("--init-from", default="", help="initial weights: 2D ImageNet ResNet (inflated) or a "
                   "pytorchvideo/gcvideo 3D checkpoint (sets TRAIN.INIT_FROM)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides, e.g. SOLVER.MAX_EPOCH 10")
    args = p.parse_args(argv)
    opts = list(args.opts) + (["TRAIN.INIT_FROM", args.init_from] if args.init_from else [])
    try:
        cfg = load_cfg(args.config, opts)
        train(cfg)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
