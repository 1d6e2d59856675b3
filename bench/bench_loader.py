#!/usr/bin/env python
"""What persistent loader workers save: the training loader, epoch after epoch, with and without them.

    python bench/bench_loader.py [--data DIR] [--workers 2] [--epochs 4] [--rounds 2]
                                 [--out bench/results/loader.md] [KEY VALUE ...]

On the toy training set (made in ``--data`` if missing; ``KEY VALUE`` overrides the toy config),
iterates the training loader for ``--epochs`` epochs, loading only (no model), three ways side
by side in one process, alternating per round:

- ``gcvideo``: ``TrainLoader`` as ``train`` builds it: one DataLoader, persistent workers,
  re-primed every epoch (``ForkingLoader``: garbage collector frozen for the fork);
- ``new workers``: the same ``TrainLoader`` with persistence off (a new DataLoader and new worker
  processes every epoch, what a dataset whose epoch does not reach its workers gets);
- ``torch DataLoader``: a plain ``torch.utils.data.DataLoader`` made every epoch, the pattern of
  torchvision's video reference and PySlowFast (``persistent_workers`` off).

Per way: the time to the first batch of each epoch after the first (the restart cost that a
training step waits for), clips/s over all epochs, and whether the batches are the same clips
as gcvideo's (labels and a pixel checksum of every batch).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gcvideo.config import load_cfg  # noqa: E402
from gcvideo.data.dataset import build_dataset, collate_train  # noqa: E402
from gcvideo.data.toy import make_toy_dataset  # noqa: E402
from gcvideo.engine.distributed import TrainSampler  # noqa: E402
from gcvideo.engine.loader import LoaderSettings, TrainLoader  # noqa: E402
from gcvideo.utils.io import atomic_write_text  # noqa: E402


def machine() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    info = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    name = info.get("Model name", platform.processor()).strip()
    fam, model = info.get("CPU family", "?").strip(), info.get("Model", "?").strip()
    return f"{name} (family {fam} model {model}), {os.cpu_count()} cores"


def run_epochs(make_loader, epochs: int) -> dict:
    """Iterate ``make_loader(epoch)`` for each epoch; first-batch times, clips, wall, batch fingerprints."""
    first, clips, prints = [], 0, []
    t0 = time.perf_counter()
    for epoch in range(epochs):
        te = time.perf_counter()
        for i, batch in enumerate(make_loader(epoch)):
            if i == 0:
                first.append(time.perf_counter() - te)
            clips += batch["label"].numel()
            prints.append((batch["label"].tolist(), int(batch["video"].to(torch.int64).sum())))
    return {"first": first, "clips": clips, "wall": time.perf_counter() - t0, "prints": prints}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/toy", help="toy dataset folder (made if missing)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs/toy/slow_gc_toy.yaml"))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="", help="markdown file for the table (refuses an existing file)")
    p.add_argument("opts", nargs=argparse.REMAINDER)
    args = p.parse_args(argv)
    if args.out and os.path.exists(args.out):
        raise SystemExit(f"error: {args.out} exists; choose a new --out")
    if not os.path.exists(os.path.join(args.data, "train.csv")):
        make_toy_dataset(args.data)
    cfg = load_cfg(args.config, ["DATA.PATH_TO_DATA_DIR", args.data,
                                 "DATA.LABEL_MAP", os.path.join(args.data, "classes.txt")] + args.opts)
    torch.set_num_threads(1)
    dataset = build_dataset(cfg, "train")
    batch, seed = cfg.TRAIN.BATCH_SIZE, cfg.SEED
    sampler = TrainSampler(len(dataset), batch, 0, 1, seed)

    def train_loader(persistent: bool):
        loader = TrainLoader(dataset, sampler, batch, LoaderSettings(args.workers, False, cfg.DATA.PREFETCH_FACTOR),
                             seed=seed, rank=0, collate_fn=collate_train)
        if not persistent:  # what TrainLoader does for a dataset whose epoch does not reach its workers
            loader.persistent = False
            loader._kw["persistent_workers"] = False
        return loader

    def plain(epoch: int):
        sampler.set_epoch(epoch, 0)
        dataset.set_epoch(epoch)
        return torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=args.workers,
                                           drop_last=True, collate_fn=collate_train,
                                           prefetch_factor=cfg.DATA.PREFETCH_FACTOR)

    results = {"gcvideo": [], "new workers": [], "torch DataLoader": []}
    for _ in range(args.rounds):
        for name in results:
            if name == "torch DataLoader":
                results[name].append(run_epochs(plain, args.epochs))
                continue
            loader = train_loader(persistent=name == "gcvideo")
            try:
                results[name].append(run_epochs(loader.epoch, args.epochs))
            finally:
                loader.close()
    ref = results["gcvideo"][0]["prints"]
    lines = [f"Machine: {machine()}; torch {torch.__version__}; {args.workers} workers, batch {batch}, "
             f"{args.epochs} epochs x {args.rounds} rounds, {len(dataset)} clips/epoch, loading only.",
             f"Command: `python bench/bench_loader.py --workers {args.workers} --epochs {args.epochs} "
             f"--rounds {args.rounds}" + (" " + " ".join(args.opts) if args.opts else "") + "`", "",
             "| loader | first batch, epoch 1 (s) | first batch, later epochs (s, median) | clips/s | "
             "same batches as gcvideo |", "|---|---|---|---|---|"]
    base = None
    for name, runs in results.items():
        later = statistics.median(t for r in runs for t in r["first"][1:])
        rate = sum(r["clips"] for r in runs) / sum(r["wall"] for r in runs)
        base = base or later
        same = all(r["prints"] == ref for r in runs)
        lines.append(f"| {name} | {statistics.median(r['first'][0] for r in runs):.3f} | {later:.3f} "
                     f"({later / base:.2f}x gcvideo) | {rate:.1f} | {'yes' if same else 'NO'} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
