#!/usr/bin/env python
"""Classify video files with a trained model: top-5 classes and their probabilities.

    python tools/predict.py VIDEO [VIDEO ...] --checkpoint CKPT [--config FILE] [--views 10x3] [--json]
                            [--topk 5] [--device auto] [KEY VALUE ...]

Each video is decoded by the data pipeline (any container/codec decord or PyAV reads) and
tested with CLIPS x CROPS views (default 10x3, the paper's protocol); probabilities are the
mean over views of the softmax. Class names come from DATA.LABEL_MAP. A video that cannot
be read gets an error line (and "ok": false in --json output) and the others go on; the
exit status is 1 if any video failed. Without --config the config stored in the checkpoint is
used; with one, its frames, sampling, crops, normalisation and model must be the checkpoint's.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.analysis.predict import format_predictions, parse_views, predict_videos  # noqa: E402
from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.data import build_views_dataset  # noqa: E402
from gcvideo.data.item_bytes import eval_item_bytes, over_bound  # noqa: E402
from gcvideo.engine.tester import class_names, config_for_checkpoint  # noqa: E402
from gcvideo.models import build_model_from_checkpoint  # noqa: E402
from gcvideo.utils.device import select_device  # noqa: E402
from gcvideo.utils.errors import UsageError  # noqa: E402
from gcvideo.utils.progress import progress_write  # noqa: E402


@tool
def main(argv=None) -> int:
    p = ToolParser(__doc__)
    p.add_argument("videos", nargs="+", metavar="VIDEO", help="video files")
    p.add_argument("--config", default="", help="YAML config the model was trained with (default: the one "
                   "stored in the checkpoint)")
    p.add_argument("--checkpoint", required=True, help="trained weights (gcvideo, pytorchvideo, PySlowFast, Caffe2)")
    p.add_argument("--views", default="10x3", help="CLIPSxCROPS test views (crops 1 or 3), default 10x3")
    p.add_argument("--topk", type=int, default=5, help="classes to list per video")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1")
    args = p.parse_args(argv)
    views = parse_views(args.views)
    cfg = config_for_checkpoint(args.config, args.opts, args.checkpoint)
    d = cfg.DATA  # the views of one video, float32 (build_views_dataset), within DATA.MAX_ITEM_BYTES
    refusal = over_bound("a video's views", eval_item_bytes(d.NUM_FRAMES, *views, d.TEST_CROP_SIZE,
                                                            d.MAX_ASPECT_RATIO, uint8=False),
                         "DATA.MAX_ITEM_BYTES", d.MAX_ITEM_BYTES, "--views, DATA.NUM_FRAMES, DATA.TEST_CROP_SIZE")
    if refusal:
        raise UsageError(refusal)
    names = class_names(cfg.DATA.LABEL_MAP, cfg.MODEL.NUM_CLASSES)
    model = build_model_from_checkpoint(cfg, args.checkpoint, allow=list(args.opts)[0::2]).to(
        select_device(args.device))
    results = predict_videos(model, build_views_dataset(cfg, args.videos, *views), names, topk=args.topk,
                             log=progress_write, progress=True)
    print(format_predictions(results, as_json=args.json))
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
