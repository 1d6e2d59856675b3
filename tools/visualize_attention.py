#!/usr/bin/env python
"""Show where context blocks attend in a video (GCNet papers, Figures 1-2).

    python tools/visualize_attention.py --checkpoint CKPT [--config FILE] VIDEO --out DIR
        [--blocks NAME ...] [--queries "t,y,x;t,y,x"] [--alpha 0.5] [--overwrite] [--device auto]
        [KEY VALUE ...]

GC/SNL model: the global attention weights (softmax over all T*H*W positions) of each
chosen block, upsampled and overlaid on the centre clip's frames. Non-local model: the
attention maps of query positions (frame t, y and x as fractions of the crop; default:
centre and three other points of the middle frame), the query marked with a red dot,
so one can see whether different queries attend to the same places. Writes
DIR/attention_grid.png (frames x blocks), DIR/attention.gif and DIR/attention_maps.pt.
--blocks takes the names the figure shows (res4.5; res3.0+ for a block after the residual add),
full names as listed by model.named_context_blocks(), e.g. blocks.3.res_blocks.5.branch2.context,
or a unique part of one (blocks.3.res_blocks.5).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.analysis.attention import (AttentionFigure, attention_paths, parse_queries,  # noqa: E402
                                        visualize_attention)
from gcvideo.analysis.predict import decode_views  # noqa: E402
from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.engine.tester import config_for_checkpoint  # noqa: E402
from gcvideo.data import build_views_dataset  # noqa: E402
from gcvideo.models import build_model_from_checkpoint  # noqa: E402
from gcvideo.utils.device import select_device  # noqa: E402
from gcvideo.utils.errors import UserError  # noqa: E402
from gcvideo.utils.io import refuse_existing  # noqa: E402


@tool
def main(argv=None) -> int:
    p = ToolParser(__doc__)
    p.add_argument("video", metavar="VIDEO", help="video file")
    p.add_argument("--config", default="", help="YAML config the model was trained with (default: the one "
                   "stored in the checkpoint)")
    p.add_argument("--checkpoint", required=True, help="trained weights")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--blocks", nargs="+", default=None, help="context blocks to show (default: all)")
    p.add_argument("--queries", default=None, help='non-local query points "t,y,x;..." (y, x fractions 0..1)')
    p.add_argument("--alpha", type=float, default=0.5, help="heatmap opacity")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1")
    args = p.parse_args(argv)
    refuse_existing(list(attention_paths(args.out).values()), args.overwrite)  # before the model and the video
    queries = parse_queries(args.queries) if args.queries else None
    cfg = config_for_checkpoint(args.config, args.opts, args.checkpoint)
    figure = AttentionFigure(cfg.DATA.MEAN, cfg.DATA.STD, blocks=args.blocks, queries=queries, alpha=args.alpha)
    model = build_model_from_checkpoint(cfg, args.checkpoint, allow=list(args.opts)[0::2]).to(select_device(args.device))
    # the centre clip, centre crop
    views = decode_views(build_views_dataset(cfg, [args.video], num_clips=1, num_crops=1), progress=True)[0]
    if not views["ok"]:
        raise UserError(f"{args.video}: cannot be decoded: {views['error']}")
    out = visualize_attention(model, views["video"][:1], args.out, figure, overwrite=args.overwrite, video=args.video)
    print(f"{out['kind']} attention of {args.video}: {out['png']}, {out['gif']} (raw maps: {out['maps']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
