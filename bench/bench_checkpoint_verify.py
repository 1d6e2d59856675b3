#!/usr/bin/env python
"""Cost of verifying a checkpoint's CRC-32s (``gcvideo.utils.io.verify_checkpoint_bytes``) next to
loading it, on a Slow-R50 + GC training checkpoint (model + SGD momentum buffers, as
``gcvideo.engine.trainer`` writes them), from a file in the page cache.

    python bench/bench_checkpoint_verify.py [--repeats 5] [--config configs/kinetics400/slow_r50_8x8_gc_all.yaml]

Prints the median of ``--repeats`` runs of each: read the file, verify the bytes, torch.load
(weights_only=True) of the bytes, and ``load_checkpoint_file`` (read + verify + load).
"""
import argparse
import io
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gcvideo.config import load_cfg  # noqa: E402
from gcvideo.engine.optim import build_optimizer  # noqa: E402
from gcvideo.models import build_model  # noqa: E402
from gcvideo.utils.io import atomic_save, load_checkpoint_file, verify_checkpoint_bytes  # noqa: E402


def median_s(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.path.join(ROOT, "configs/kinetics400/slow_r50_8x8_gc_all.yaml"))
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args()
    torch.set_num_threads(1)
    cfg = load_cfg(a.config, ["DEVICE", "cpu"], check_files=False)
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    for q in model.parameters():  # momentum buffers, as after a first step
        opt.state[q]["momentum_buffer"] = torch.zeros_like(q)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "checkpoint_epoch0001.pth")
        atomic_save({"model": model.state_dict(), "optimizer": opt.state_dict()}, path)
        size = os.path.getsize(path)
        data = open(path, "rb").read()
        read = median_s(lambda: open(path, "rb").read(), a.repeats)
        verify = median_s(lambda: verify_checkpoint_bytes(data, path), a.repeats)
        load = median_s(lambda: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), a.repeats)
        total = median_s(lambda: load_checkpoint_file(path), a.repeats)
    params = sum(q.numel() for q in model.parameters())
    print(f"{os.path.basename(a.config)}: {params / 1e6:.2f}M parameters, checkpoint {size / 1e6:.1f} MB "
          f"(model + momentum), median of {a.repeats}")
    print(f"read {read * 1e3:.0f} ms, verify (CRC-32 of every record) {verify * 1e3:.0f} ms "
          f"({size / verify / 1e9:.2f} GB/s), torch.load {load * 1e3:.0f} ms")
    print(f"load_checkpoint_file (read + verify + load) {total * 1e3:.0f} ms; verify = "
          f"{100 * verify / (total - verify):.0f}% on top of read + load")


if __name__ == "__main__":
    main()
