#!/usr/bin/env python
"""End to end on a GPU machine: ``train_net.py`` on generated Kinetics-like clips, then the
30-view ``test_net.py``; clips/s, the share of time the step loop waits for data, videos/s.

The clips are made like bench/bench_decode.py's originals (30 fps, 340x256, x264 with
keyframes 250 frames apart and B-frames, 10 s). Training runs the Slow-only R50 8x8 Kinetics
config for ``--iters`` iterations per decoder with ``--workers`` loader processes; the figures are
read from the run's ``metrics.jsonl`` (the first logged window, which holds the start-up, is
dropped). The 30-view test runs on ``--test-videos`` of the clips.

    python bench/bench_gpu_e2e.py --out runs/gpu_e2e --decoders pyav,torchcodec --workers 16
    python bench/bench_gpu_e2e.py --out /tmp/e2e --device cpu --clips 8 --iters 2 --batch 2 \
        --size 64 --workers 2 --test-videos 2 --decoders pyav                         # CPU dry run
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from multiprocessing import Pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

from bench_decode import make_kinetics_like  # noqa: E402


def _make(args):
    return make_kinetics_like(*args)


def make_clips(folder: str, count: int, workers: int) -> list:
    """``count`` Kinetics-like clips in ``folder/videos`` (kept between runs) and the CSVs."""
    os.makedirs(os.path.join(folder, "videos"), exist_ok=True)
    jobs = [(os.path.join(folder, "videos", f"k_like_{i}.mp4"), i) for i in range(count)]
    with Pool(workers) as pool:
        paths = pool.map(_make, jobs)
    with open(os.path.join(folder, "classes.txt"), "w") as f:
        f.write("".join(f"class_{k}\n" for k in range(8)))
    for split in ("train", "val", "test"):
        with open(os.path.join(folder, f"{split}.csv"), "w") as f:
            f.write("".join(f"{os.path.relpath(p, folder)} {i % 8}\n" for i, p in enumerate(paths)))
    return paths


def read_metrics(run_dir: str) -> dict:
    """clips/s and data share of the logged windows after the first (which holds the start-up)."""
    iters = []
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "clips_per_s" in rec:
                iters.append(rec)
    steady = iters[1:] or iters
    clips = sum(r["clips_per_s"] for r in steady) / max(len(steady), 1)
    share = sum(r["data_share"] for r in steady) / max(len(steady), 1)
    return {"clips_per_s": clips, "data_share": share, "windows": len(steady)}


def run(cmd, log_path: str, timeout: float) -> tuple:
    t = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, timeout=timeout)
    return rc, time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="folder for the clips, the runs and the results")
    ap.add_argument("--device", default="cuda", help="DEVICE for the runs")
    ap.add_argument("--decoders", default="pyav,torchcodec")
    ap.add_argument("--clips", type=int, default=64)
    ap.add_argument("--iters", type=int, default=40, help="training iterations per decoder")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224, help="train crop size")
    ap.add_argument("--workers", type=int, default=16, help="DATA.NUM_WORKERS")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--test-videos", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=240, help="seconds per run")
    args = ap.parse_args(argv)
    out = os.path.abspath(args.out)
    data = os.path.join(out, "data")
    t = time.perf_counter()
    make_clips(data, args.clips, min(args.workers, os.cpu_count() or 1))
    print(f"{args.clips} Kinetics-like clips ready in {time.perf_counter() - t:.0f} s", flush=True)
    config = os.path.join(ROOT, "configs", "kinetics400", "slow_r50_8x8.yaml")
    common = ["DATA.PATH_TO_DATA_DIR", data, "DATA.LABEL_MAP", os.path.join(data, "classes.txt"),
              "MODEL.NUM_CLASSES", "8", "DEVICE", args.device, "DATA.NUM_WORKERS", str(args.workers),
              "DATA.TRAIN_CROP_SIZE", str(args.size), "DATA.TEST_CROP_SIZE", str(args.size)]
    results = {"args": vars(args), "train": {}, "test": {}}
    epochs = max(1, -(-args.iters * args.batch // args.clips))
    for decoder in args.decoders.split(","):
        run_dir = os.path.join(out, f"train_{decoder}")
        cmd = [sys.executable, "tools/train_net.py", "--config", config, *common, "DATA.DECODER", decoder,
               "OUTPUT_DIR", run_dir, "TRAIN.BATCH_SIZE", str(args.batch), "SOLVER.MAX_EPOCH", str(epochs),
               "TRAIN.MIXED_PRECISION", args.precision, "TRAIN.EVAL_PERIOD", "0", "TRAIN.TEST_AT_END", "False",
               "TRAIN.LOG_PERIOD", "5", "TRAIN.PRECISE_BN_BATCHES", "0",
               "SOLVER.WARMUP_EPOCHS", "0"]
        try:
            rc, wall = run(cmd, os.path.join(out, f"train_{decoder}.log"), args.timeout)
            res = dict(read_metrics(run_dir), rc=rc, wall_s=wall) if rc == 0 else {"rc": rc, "wall_s": wall}
        except (subprocess.TimeoutExpired, OSError) as e:
            res = {"error": f"{type(e).__name__}: {e}"}
        results["train"][decoder] = res
        print(f"train {decoder}: {res}", flush=True)
    # 30-view test of the first decoder's trained model on the first test videos
    with open(os.path.join(data, "test.csv")) as f:
        lines = f.readlines()[: args.test_videos]
    with open(os.path.join(data, "test_subset.csv"), "w") as f:
        f.writelines(lines)
    first = args.decoders.split(",")[0]
    cmd = [sys.executable, "tools/test_net.py", "--config", config, *common, "DATA.DECODER", first,
           "DATA.TEST_FILE", "test_subset.csv", "OUTPUT_DIR", os.path.join(out, f"train_{first}"),
           "TEST.BATCH_SIZE", "4"]
    try:
        rc, wall = run(cmd, os.path.join(out, "test.log"), args.timeout)
        results["test"] = {"rc": rc, "wall_s": wall, "videos": len(lines), "videos_per_s": len(lines) / wall}
    except (subprocess.TimeoutExpired, OSError) as e:
        results["test"] = {"error": f"{type(e).__name__}: {e}"}
    print(f"test (30 views, {len(lines)} videos, start-up included): {results['test']}", flush=True)
    with open(os.path.join(out, "e2e.json"), "w") as f:
        json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
