#!/usr/bin/env python
"""One training step of the toy model (forward, backward, optimizer) under config variants, timed
side by side: what a crop size, stem or clip length costs, as a ratio to the first variant.

    python bench/bench_toy_step.py [--config configs/toy/slow_gc_toy.yaml] [--rounds 21] [--threads 1]
        [--variant "LABEL KEY VALUE ..."] ...

Each variant is the config plus its KEY VALUE overrides; the batch is TRAIN.BATCH_SIZE x
DATA.NUM_SAMPLES random clips of DATA.NUM_FRAMES x DATA.TRAIN_CROP_SIZE^2 in the training memory
format, the optimizer is ``build_optimizer``'s. The variants take turns, one step each per round, so
that a shared host's load falls on all of them alike; the first 3 rounds are warm-up and the median
of the rest is reported, with each variant's first step (with TRAIN.COMPILE True: the compile). Default variants: the toy config before 2026-12-07 (64 px crops, 7x7 stem)
and the committed one.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gcvideo.config import load_cfg  # noqa: E402
from gcvideo.engine.optim import build_optimizer  # noqa: E402
from gcvideo.engine.trainer import compiled  # noqa: E402
from gcvideo.models import build_model  # noqa: E402

DEFAULT_VARIANTS = [
    "64px-7x7 DATA.TRAIN_JITTER_SCALES [64,80] DATA.TRAIN_CROP_SIZE 64 MODEL.STEM_KERNEL [3,7,7]",
    "committed",
]


def setup(config: str, words):
    """(model, optimizer, clips, labels) of one variant."""
    cfg = load_cfg(config, words, check_files=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    fmt = torch.channels_last_3d if cfg.TRAIN.CHANNELS_LAST else torch.contiguous_format
    model = model.to(memory_format=fmt)
    n = cfg.TRAIN.BATCH_SIZE * cfg.DATA.NUM_SAMPLES
    size = cfg.DATA.TRAIN_CROP_SIZE
    x = torch.randn(n, 3, cfg.DATA.NUM_FRAMES, size, size).to(memory_format=fmt)  # (N, C, T, H, W)
    y = torch.randint(0, cfg.MODEL.NUM_CLASSES, (n,))
    return compiled(model, cfg.TRAIN.COMPILE), build_optimizer(cfg, model), x, y


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs", "toy", "slow_gc_toy.yaml"))
    ap.add_argument("--variant", action="append", help='"LABEL KEY VALUE ..." (repeatable)')
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the toy run uses 1)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = [v.split() for v in (args.variant or DEFAULT_VARIANTS)]
    runs = [setup(args.config, words[1:]) for words in variants]
    times = [[] for _ in runs]
    for _ in range(args.rounds):
        for i, (model, opt, x, y) in enumerate(runs):  # one step of each variant per round
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            times[i].append(time.perf_counter() - t0)
    medians = [statistics.median(t[3:]) for t in times]
    print(f"{torch.__version__}, {args.threads} thread(s), {args.rounds - 3} rounds (median)")
    print("| variant | overrides | step ms | ratio | first step s |\n|---|---|---|---|---|")
    for words, med, t in zip(variants, medians, times):
        print(f"| {words[0]} | {' '.join(words[1:]) or '-'} | {med * 1000:.1f} | {med / medians[0]:.2f}x | "
              f"{t[0]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
