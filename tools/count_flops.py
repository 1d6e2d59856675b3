#!/usr/bin/env python
"""Parameters and FLOPs of a config, beside the paper's figures (GCNet TPAMI, Table 10).

    python tools/count_flops.py --config configs/kinetics400/slow_r50_8x8_gc_all.yaml
    python tools/count_flops.py --config configs/kinetics400/slow_r50_8x8_nl5.yaml
    python tools/count_flops.py --config configs/kinetics400/slow_r50_8x8.yaml --input 8,224,224 --json
    python tools/count_flops.py --config configs/kinetics400/slow_r50_8x8.yaml DATA.NUM_FRAMES 4
    python tools/count_flops.py --explain        # the candidates for the paper's 39.29 / +20.31 (slow)

Clip sizes: the config's, DATA.NUM_FRAMES x DATA.TRAIN_CROP_SIZE^2 and x DATA.TEST_CROP_SIZE^2
(overrides included), unless --input says otherwise.
FLOPs follow fvcore (1 multiply-add = 1 FLOP) plus gcvideo's handles for softmax,
pooling and the like (gcvideo/analysis/flops.py, docs/flops.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.analysis.flops import (PAPER_TABLE10, TRAIN_INPUT, FlopReport, baseline_candidates,  # noqa: E402
                                    count_flops, nl_candidates)
from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.layers.context import CONTEXT_PRESETS, preset_parts  # noqa: E402


def paper_row(config_path: str):
    name = os.path.splitext(os.path.basename(config_path))[0]
    for row in PAPER_TABLE10:
        if row.config == name:
            return row
    return None


def build(config_path: str, opts: Optional[List[str]] = None):
    from gcvideo.config import load_cfg
    from gcvideo.models import build_model

    cfg = load_cfg(config_path, opts or [], check_files=False)
    return cfg, build_model(cfg)


def _parse_input(text: str):
    try:
        parts = [int(p) for p in text.replace("x", ",").split(",") if p]
    except ValueError:
        parts = []
    if len(parts) != 3 or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--input {text!r}: expected T,H,W such as 8,224,224")
    return tuple(parts)


def config_inputs(cfg) -> List[tuple]:
    """The clip sizes (T, H, W) a config trains and tests at (one entry when they are the same)."""
    d = cfg.DATA
    sizes = [(d.NUM_FRAMES, d.TRAIN_CROP_SIZE, d.TRAIN_CROP_SIZE), (d.NUM_FRAMES, d.TEST_CROP_SIZE, d.TEST_CROP_SIZE)]
    return list(dict.fromkeys(sizes))


def _skipped_lines(skipped) -> List[str]:
    if not skipped:
        return ["    (none)"]
    return [f"    {op:<22} x{count:<4} {reason or 'UNEXPLAINED: no handle and no reason'}"
            for op, (count, reason) in skipped.items()]


def _attention_pooled(cfg) -> bool:
    """The config's context blocks pool with attention (a C->1 conv whose bias the softmax cancels)."""
    c = cfg.CONTEXT
    return c.TYPE in CONTEXT_PRESETS and preset_parts(c.TYPE, pooling=c.POOLING)["pooling"] == "att"


def format_report(config: str, reports: List[FlopReport], cfg) -> str:
    row = paper_row(config)
    r0 = reports[0]
    lines = [f"config: {config}",
             f"parameters: {r0.params:,} ({r0.params / 1e6:.3f}M)"
             + (f"; paper: {row.params_m:.2f}M" if row else "")]
    if _attention_pooled(cfg) and cfg.CONTEXT.ATT_BIAS and r0.context_blocks:
        nb = r0.context_blocks
        lines.append(f"  includes {nb} biases of the C->1 attention convs (CONTEXT.ATT_BIAS, redundant under the "
                     f"softmax over positions); without them {r0.params - nb:,} ({(r0.params - nb) / 1e6:.3f}M)")
    for r in reports:
        t, h, w = r.input_shape[2:]
        d = cfg.DATA
        tag = {(d.NUM_FRAMES, d.TEST_CROP_SIZE, d.TEST_CROP_SIZE): " (test crop)",
               (d.NUM_FRAMES, d.TRAIN_CROP_SIZE, d.TRAIN_CROP_SIZE): " (train crop)"}.get((t, h, w), "")
        lines.append(f"FLOPs at {t}x{h}x{w}{tag}: {r.gflops:.3f} G"
                     + (f"   paper: {row.gflops:.2f} G at 8x224x224" if row and (t, h, w) == TRAIN_INPUT else ""))
        lines.append("  by operator: " + ", ".join(f"{k} {v / 1e9:.4f}" for k, v in
                                                    sorted(r.by_operator.items(), key=lambda kv: -kv[1])))
        lines.append("  by stage:    " + ", ".join(f"{k} {v / 1e9:.3f}" for k, v in r.by_module.items()))
        if r.context_blocks:
            lines.append(f"  inside {r.context_blocks} context blocks: {r.context_total / 1e9:.4f} G ("
                         + ", ".join(f"{k} {v / 1e9:.4f}" for k, v in sorted(r.context_by_operator.items()))
                         + ")")
    lines.append("operators without a FLOP count (same at every input size):")
    lines.append("  inside context blocks:")
    lines += _skipped_lines(r0.skipped_context)
    lines.append("  backbone:")
    lines += _skipped_lines(r0.skipped_backbone)
    if row:
        lines.append(f"paper (Table 10): {row.label}: {row.params_m:.2f}M params, {row.gflops:.2f} GFLOPs, "
                     f"top-1 {row.top1:.2f}")
        lines.append("  the paper's baseline 39.29 G is 2.45 G below fvcore's count of this architecture: "
                     "see docs/flops.md")
    return "\n".join(lines)


def explain() -> str:
    lines = ["Candidates for the paper's 39.29 GFLOPs (baseline, 8x224x224):",
             f"  {'GFLOPs':>8}  {'params':>11}  candidate"]
    for c in baseline_candidates():
        lines.append(f"  {c.gflops:8.3f}  {c.params:11,}  {c.name}" + (f"  [{c.note}]" if c.note else ""))
    lines += ["", "Candidates for the paper's +5 NL increment, +20.31 GFLOPs:"]
    for c in nl_candidates():
        lines.append(f"  {c.gflops:8.3f}  {c.gflops / 20.31 - 1:+7.1%}  {c.name}")
    return "\n".join(lines)


@tool
def main(argv: Optional[List[str]] = None) -> int:
    ap = ToolParser(__doc__)
    ap.add_argument("--config", help="config YAML (configs/kinetics400/*.yaml)")
    ap.add_argument("--input", type=_parse_input, action="append",
                    help="clip size T,H,W (repeatable); default: the config's DATA.NUM_FRAMES x "
                         "DATA.TRAIN_CROP_SIZE^2 and x DATA.TEST_CROP_SIZE^2")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    ap.add_argument("--explain", action="store_true",
                    help="compute the candidate explanations of the paper's FLOPs (takes minutes)")
    args = ap.parse_args(argv)
    if args.explain:
        print(explain())
        return 0
    if not args.config:
        ap.error("--config is required (or --explain)")
    cfg, model = build(args.config, args.opts)
    sizes = args.input or config_inputs(cfg)
    reports = [count_flops(model, (1, 3) + tuple(s)) for s in sizes]
    if args.json:
        row = paper_row(args.config)
        print(json.dumps({"config": args.config, "params": reports[0].params,
                          "reports": [r.as_dict() for r in reports],
                          "paper": row.__dict__ if row else None}, indent=1))
    else:
        print(format_report(args.config, reports, cfg))
    return 0


if __name__ == "__main__":
    sys.exit(main())
