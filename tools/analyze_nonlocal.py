#!/usr/bin/env python
"""The GCNet papers' analysis of non-local blocks (ICCVW 2019 Table 1, TPAMI 2020 Tables 1-3).

    python tools/analyze_nonlocal.py --checkpoint CKPT [--config FILE] --csv VIDEOS [--json OUT.json]
        [--max-videos N] [--clips 1] [--max-queries 256] [--seed 0] [--exclude-self] [--blocks NAME ...]
        [--overwrite] [--device auto] [KEY VALUE ...]

For every non-local block of a trained model: the mean cosine distance over all pairs of
positions of the block input, of its output before fusion (z - x), of the attention maps
of the query positions, of the query/key embeddings and of the query-key products, and the
Jensen-Shannon divergence between attention maps (definitions: docs/analysis.md). Small
distances mean the attention is (nearly) the same for every query: the papers' finding.
VIDEOS: an annotation file (PySlowFast/mmaction list or Kinetics CSV; labels ignored) or a
list of video paths, one a line. Prints a table; --json saves the full report.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.analysis.nonlocal_stats import (NonLocalAnalysis, ReportSource, analyze_nonlocal,  # noqa: E402
                                             format_stats_table, read_video_list)
from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.engine.tester import config_for_checkpoint  # noqa: E402
from gcvideo.data import build_views_dataset  # noqa: E402
from gcvideo.models import build_model_from_checkpoint  # noqa: E402
from gcvideo.utils.device import select_device  # noqa: E402
from gcvideo.utils.io import refuse_existing  # noqa: E402


@tool
def main(argv=None) -> int:
    p = ToolParser(__doc__)
    p.add_argument("--config", default="", help="YAML config the model was trained with (default: the one "
                   "stored in the checkpoint)")
    p.add_argument("--checkpoint", required=True, help="trained weights of a non-local model")
    p.add_argument("--csv", required=True, help="videos: annotation file or one path a line")
    p.add_argument("--json", default="", help="write the report here (JSON); default: "
                   "OUTPUT_DIR/nonlocal_stats_<checkpoint name>.json")
    p.add_argument("--max-videos", type=int, default=0, help="use the first N videos (0 = all)")
    p.add_argument("--clips", type=int, default=1, help="evenly spread clips per video (centre crop)")
    p.add_argument("--max-queries", type=int, default=256,
                   help="JSD: query positions sampled when a block has more (0 = all, exact)")
    p.add_argument("--seed", type=int, default=0, help="seed of the JSD query sample")
    p.add_argument("--exclude-self", action="store_true", help="average over pairs i != j only")
    p.add_argument("--blocks", nargs="+", default=None, help="non-local blocks to analyse, e.g. res3.0+ "
                   "(names as visualize_attention's figures show them; default: all)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per forward pass")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--device", default="auto", help="torch device: auto (cuda if available), cpu, cuda, cuda:1")
    args = p.parse_args(argv)
    analysis = NonLocalAnalysis(max_queries=args.max_queries or None, seed=args.seed,
                                include_self=not args.exclude_self, blocks=args.blocks, batch_size=args.batch_size)
    cfg = config_for_checkpoint(args.config, args.opts, args.checkpoint)
    out_json = args.json or os.path.join(
        cfg.OUTPUT_DIR, f"nonlocal_stats_{os.path.splitext(os.path.basename(args.checkpoint))[0]}.json")
    refuse_existing(out_json, args.overwrite)  # before loading anything
    d = cfg.DATA
    paths = read_video_list(args.csv, fmt=d.FORMAT, path_prefix=d.PATH_PREFIX, label_map=d.LABEL_MAP,
                            num_classes=cfg.MODEL.NUM_CLASSES, clip_layout=d.CLIP_LAYOUT)
    model = build_model_from_checkpoint(cfg, args.checkpoint, allow=list(args.opts)[0::2]).to(select_device(args.device))
    dataset = build_views_dataset(cfg, paths[:args.max_videos or None], args.clips, 1)  # centre crop
    report = analyze_nonlocal(model, dataset, analysis, source=ReportSource(args.checkpoint, args.csv),
                              out_json=out_json, overwrite=args.overwrite,
                              log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"{report['videos']} videos x {report['clips_per_video']} clip(s), {len(report['failed'])} failed; "
          f"cosine distance (1 - cos)/2 over {'all' if report['include_self'] else 'distinct'} pairs, JSD in nats")
    print(format_stats_table(report["blocks"]))
    if args.json:
        print(f"report: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
