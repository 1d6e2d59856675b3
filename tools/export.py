#!/usr/bin/env python
"""Export a trained model to TorchScript or ONNX, verified against the eager model.

    python tools/export.py --checkpoint CKPT [--config FILE] --format torchscript|onnx --out FILE
                           [--input T,H,W] [--exporter auto|dynamo|legacy] [--overwrite] [KEY VALUE ...]

The exported graph takes (N, 3, T, H, W) clips (dynamic batch; T, H, W from --input, default
DATA.NUM_FRAMES, DATA.TEST_CROP_SIZE, DATA.TEST_CROP_SIZE) and returns logits. The file is
written only if its outputs match the eager model's within 1e-4 relative (ONNX checked with
onnxruntime when installed); an existing file is kept unless --overwrite.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gcvideo.analysis.export import EXPORTERS, FORMATS, ExportOptions, export_model  # noqa: E402
from gcvideo.cli import ToolParser, tool  # noqa: E402
from gcvideo.engine.tester import config_for_checkpoint  # noqa: E402
from gcvideo.models import build_model_from_checkpoint  # noqa: E402
from gcvideo.utils.io import refuse_existing  # noqa: E402


def _shape(text: str):
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--input {text!r}: expected T,H,W, e.g. 8,256,256") from None
    if len(vals) != 3 or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"--input {text!r}: expected 3 positive integers T,H,W")
    return vals


@tool
def main(argv=None) -> int:
    p = ToolParser(__doc__)
    p.add_argument("--config", default="", help="YAML config the model was trained with (default: the one "
                   "stored in the checkpoint)")
    p.add_argument("--checkpoint", required=True, help="trained weights (gcvideo, pytorchvideo, PySlowFast, Caffe2)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--input", type=_shape, default=None, help="clip size T,H,W (default from the config)")
    p.add_argument("--exporter", default="auto", choices=EXPORTERS, help="ONNX exporter")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    args = p.parse_args(argv)
    refuse_existing(args.out, args.overwrite)  # before loading anything
    cfg = config_for_checkpoint(args.config, args.opts, args.checkpoint)
    shape = args.input or (cfg.DATA.NUM_FRAMES, cfg.DATA.TEST_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE)
    model = build_model_from_checkpoint(cfg, args.checkpoint, allow=list(args.opts)[0::2])  # all weights required
    info = export_model(model, args.out, ExportOptions(args.format, shape, exporter=args.exporter),
                        overwrite=args.overwrite)
    err = "not checked" if info["max_rel_err"] is None else f"{info['max_rel_err']:.2e}"
    print(f"wrote {info['path']} ({info['format']}, {info['exporter']}, input (N, 3, "
          f"{', '.join(map(str, info['input_shape']))}), {info['bytes']} bytes); max relative error vs eager "
          f"{err} ({info['verified_with']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
