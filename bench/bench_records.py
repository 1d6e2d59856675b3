#!/usr/bin/env python
"""Kinetics-scale annotation lists: parse time, dataset construction, and DataLoader worker memory.

    python bench/bench_records.py [--rows 240000] [--workers 16] [--out bench/results/records.md]

Writes a 240k-row PySlowFast list and the same rows as an official Kinetics CSV (the
video paths need not exist), times ``load_annotations`` and ``build_dataset("train")``
on them, then forks ``--workers`` processes at once (as DataLoader workers are forked)
that each read every record of the dataset (path and label, as ``__getitem__`` does),
and reports each worker's memory growth from ``/proc/self/smaps_rollup``: USS
(Private_Clean + Private_Dirty, the pages only this worker holds) and PSS. Two storages
side by side: gcvideo's ``VideoRecords`` (one bytes buffer + numpy arrays) and a Python
list of ``VideoRecord`` objects (what the dataset kept before; every worker copies the
pages of the objects it touches as their reference counts change, pytorch/pytorch#13246).
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from gcvideo.config import get_cfg  # noqa: E402
from gcvideo.data.annotations import (DEFAULT_KINETICS400_LABEL_MAP, load_annotations,  # noqa: E402
                                      read_label_map)
from gcvideo.data.dataset import build_dataset  # noqa: E402
from gcvideo.utils.io import atomic_write_text  # noqa: E402

_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"))


def write_lists(folder: str, rows: int, seed: int = 0) -> tuple:
    """A PySlowFast list ``class_folder/{id}_{start}_{end}.mp4 label`` and the official CSV of the same rows."""
    names = read_label_map(DEFAULT_KINETICS400_LABEL_MAP)
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, len(names), rows)
    starts = rng.integers(0, 300, rows)
    ids = ["".join(r) for r in _ALPHABET[rng.integers(0, len(_ALPHABET), (rows, 11))]]
    slowfast, official = os.path.join(folder, "train.csv"), os.path.join(folder, "kinetics_train.csv")
    with open(slowfast, "w") as f:
        f.writelines(f"{names[c].replace(' ', '_')}/{y}_{t:06d}_{t + 10:06d}.mp4 {c}\n"
                     for c, y, t in zip(classes, ids, starts))
    with open(official, "w") as f:
        f.write("label,youtube_id,time_start,time_end,split,is_cc\n")
        f.writelines(f"\"{names[c]}\",{y},{t},{t + 10},train,0\n" for c, y, t in zip(classes, ids, starts))
    return slowfast, official


def smaps() -> dict:
    """kB of Rss, Pss and USS (Private_Clean + Private_Dirty) of this process."""
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":") and parts[1].isdigit():
                out[parts[0][:-1]] = int(parts[1])
    return {"rss": out["Rss"], "pss": out["Pss"], "uss": out["Private_Clean"] + out["Private_Dirty"]}


def _worker(records, barrier, queue) -> None:
    barrier.wait()  # every worker forked: the shared pages have their final number of sharers
    before = smaps()
    barrier.wait()
    n = 0
    for i in range(len(records)):  # what __getitem__ reads of every record it is given
        r = records[i]
        n += len(r.path) + (r.label >= 0)
    barrier.wait()  # all workers alive and done: PSS divides the shared pages among all of them
    read = smaps()
    barrier.wait()
    # a full collection (Python runs one now and then in every worker) writes the gc header of every
    # tracked object: the interpreter's own (torch, numpy, ... the same for any storage) and a list's rows
    gc.collect()
    barrier.wait()
    collected = smaps()
    barrier.wait()
    queue.put({"n": n, **{k: read[k] - before[k] for k in read},
               **{f"gc_{k}": collected[k] - before[k] for k in collected}})


def worker_growth(records, workers: int) -> list:
    """Memory growth (kB) of each of ``workers`` forked processes that read every record."""
    ctx = mp.get_context("fork")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(records, barrier, queue)) for _ in range(workers)]
    for p in procs:
        p.start()
    res = [queue.get(timeout=600) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=240000, help="rows of the generated annotation files")
    ap.add_argument("--workers", type=int, default=16, help="forked worker processes")
    ap.add_argument("--out", default="", help="also write the markdown report here")
    args = ap.parse_args(argv)
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    with tempfile.TemporaryDirectory() as tmp:
        slowfast, official = write_lists(tmp, args.rows)
        cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True,
                             text=True).stdout.strip() or platform.processor()
        load = os.getloadavg()
        out("# Kinetics-scale annotation lists (bench/bench_records.py)\n")
        out(f"Machine: {cpu}, {os.cpu_count()} cores; load average at start {load[0]:.1f} / {load[1]:.1f} / "
            f"{load[2]:.1f} (1/5/15 min). {args.rows} rows, {args.workers} forked workers.\n")
        out("## Parsing and dataset construction\n")
        out("| file | size | load_annotations CPU s | wall s | build_dataset('train') CPU s | wall s |")
        out("|---|---|---|---|---|---|")
        for name, path in (("PySlowFast list", slowfast), ("official Kinetics CSV", official)):
            c0, w0 = time.process_time(), time.perf_counter()
            recs = load_annotations(path, num_classes=400, clip_layout="flat", require_labels=True,
                                    label_map=DEFAULT_KINETICS400_LABEL_MAP)
            c1, w1 = time.process_time(), time.perf_counter()
            cfg = get_cfg()
            cfg.DATA.PATH_TO_DATA_DIR, cfg.DATA.TRAIN_FILE = tmp, os.path.basename(path)
            cfg.DATA.LABEL_MAP, cfg.DATA.CLIP_LAYOUT = DEFAULT_KINETICS400_LABEL_MAP, "flat"
            c2, w2 = time.process_time(), time.perf_counter()
            ds = build_dataset(cfg, "train")
            c3, w3 = time.process_time(), time.perf_counter()
            assert len(ds) == len(recs) == args.rows
            out(f"| {name} | {os.path.getsize(path) / 1e6:.1f} MB | {c1 - c0:.2f} | {w1 - w0:.2f} | {c3 - c2:.2f} | {w3 - w2:.2f} |")
        out("\n## Memory growth per worker after reading every record (kB; mean / max over workers)\n")
        out("| storage | parent holds (MB) | USS growth, records read | PSS growth, records read | "
            "USS growth, then a full gc | PSS growth, then a full gc |")
        out("|---|---|---|---|---|---|")
        ds_records = ds.records
        del recs, ds
        results = {}
        for name in ("VideoRecords (bytes buffer + numpy)", "list of VideoRecord (before)",
                     "VideoRecords, gc.freeze() in the parent before forking"):
            # the earlier storage: one VideoRecord object per row (made only now, so that it is not in
            # the parent while the table is measured: a worker's garbage collection would walk it)
            records = ds_records if name.startswith("VideoRecords") else list(ds_records)
            gc.collect()
            if "freeze" in name:
                gc.freeze()  # objects alive now are never collected again: workers leave their pages alone
            held = (len(records._paths) + records.labels.nbytes + records.lines.nbytes + records._ends.nbytes
                    if hasattr(records, "_paths") else
                    sum(sys.getsizeof(r) + sys.getsizeof(r.__dict__) + sys.getsizeof(r.path) for r in records)
                    + sys.getsizeof(records))
            g = worker_growth(records, args.workers)
            assert all(x["n"] == g[0]["n"] for x in g)
            results[name] = g
            cells = []
            for k in ("uss", "pss", "gc_uss", "gc_pss"):
                v = [x[k] for x in g]
                cells.append(f"{statistics.mean(v):.0f} / {max(v)}")
            out(f"| {name} | {held / 1e6:.1f} | " + " | ".join(cells) + " |")
            del records
            gc.unfreeze()
        mean = {(n, k): statistics.mean(x[k] for x in g) for n, g in results.items() for k in ("uss", "gc_uss")}
        (new, new_gc), (old, old_gc), (_, frozen_gc) = [[mean[n, k] for k in ("uss", "gc_uss")] for n in results]
        out(f"\nUSS growth per worker after reading every record: {new / 1024:.1f} MB with VideoRecords, "
            f"{old / 1024:.1f} MB with a list ({args.workers} workers: {args.workers * new / 1024:.0f} MB vs "
            f"{args.workers * old / 1024:.0f} MB in all); after a full garbage collection as well: "
            f"{new_gc / 1024:.1f} MB vs {old_gc / 1024:.1f} MB, of which the difference, "
            f"{(old_gc - new_gc) / 1024:.1f} MB, is the list's rows; the rest is the interpreter's own objects (torch, numpy, ...), which gc.freeze() in "
            f"the parent before the workers fork leaves shared too ({frozen_gc / 1024:.1f} MB).")
    if args.out:
        atomic_write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
