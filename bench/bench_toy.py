#!/usr/bin/env python
"""The main job (``make toy``) over seeds and GC kernel paths: top-1 and minutes per run.

    python bench/bench_toy.py [--seeds 0 1 2] [--kernels on off] [--parallel 1] [--data DIR]
                              [--runs DIR] [--out bench/results/toy_table.md] [KEY VALUE ...]

1. Toy data: generated once into ``--data`` (a fresh folder, default under ``--runs``), timed
   (wall and CPU seconds of the generator's processes).
2. Per (kernel path, seed): ``tools/run_toy.py SEED s OUTPUT_DIR ...`` in its own process
   (``GCVIDEO_CPU_KERNELS=0`` for "off"), on the data of step 1; wall time, CPU time of the
   process and its loader workers, and the 10x3-view top-1/top-5 from its report.json.
3. A markdown table: precision the run computed in, top-1, errors (cw <-> ccw), minutes (data +
   run = what ``make toy`` takes after installation), the fastest and median epoch in seconds
   (their spread is the load of other work on a shared host), and the machine (CPU model, cores)
   and load average before/after.

On a machine shared with other work, wall times are longer than on an idle one; the table
also gives CPU minutes and "idle estimate" = (data CPU + run CPU) / cores, a lower bound for
an idle machine of that many cores (the job keeps both cores busy nearly all the time).
``--parallel N`` runs N cells at once (for a quick table on a loaded machine; then only the
CPU-based columns mean anything).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def cpu_model() -> str:
    """lscpu's model name (else platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=30).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown CPU"


def load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def timed(cmd: List[str], env: Dict[str, str], log_path: str) -> Dict:
    """Run ``cmd`` (output to ``log_path``); wall seconds, CPU seconds of it and its children, rc."""
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        # CPU time of this child tree: wait4's rusage (threads of the bench run children in parallel)
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "rc": proc.returncode}


def make_data(data: str, runs: str) -> Dict:
    """Generate the toy set into ``data`` (must not exist yet) with tools/make_toy_dataset.py."""
    if os.path.exists(os.path.join(data, "meta.json")):
        return {"wall_s": None, "cpu_s": None, "rc": 0, "reused": True}
    res = timed([sys.executable, os.path.join(ROOT, "tools", "make_toy_dataset.py"), "--out", data, "--quiet"],
                dict(os.environ), os.path.join(runs, "data.log"))
    if res["rc"] != 0:
        raise SystemExit(f"toy data generation failed (see {os.path.join(runs, 'data.log')})")
    return res


def run_cell(kernels: str, seed: int, data: str, runs: str, opts: List[str]) -> Dict:
    name = f"kernels_{kernels}_seed{seed}"
    out = os.path.join(runs, name)
    if os.path.exists(out):
        raise SystemExit(f"{out} exists; give a new --runs folder (a run folder holds one run)")
    env = dict(os.environ, GCVIDEO_CPU_KERNELS="1" if kernels == "on" else "0")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "run_toy.py"), "--data", data,
           "SEED", str(seed), "OUTPUT_DIR", out] + opts
    load_before = load()
    res = timed(cmd, env, out + ".log")
    res.update(name=name, kernels=kernels, seed=seed, load_before=load_before, load_after=load())
    reports = sorted(d for d in os.listdir(out) if d.startswith("test_")) if os.path.isdir(out) else []
    if res["rc"] == 0 and reports:
        with open(os.path.join(out, reports[-1], "report.json")) as f:
            m = json.load(f)["metrics"]["all"]
        res.update(top1=m["top1"], top5=m["top5"], report=os.path.join(out, reports[-1]))
        res.update(errors(os.path.join(out, reports[-1], "predictions.csv")))
    res.update(run_facts(out))
    return res


def run_facts(out: str) -> Dict:
    """The precision the run computed in (from its log) and its fastest and median epoch in seconds
    (metrics.jsonl): on a shared host the spread between the two shows the neighbours' load."""
    facts: Dict = {}
    try:
        with open(out + ".log", errors="replace") as f:
            m = re.search(r"precision (\S+) \(", f.read())
        if m:
            facts["precision"] = m.group(1)
        with open(os.path.join(out, "metrics.jsonl")) as f:
            secs = [json.loads(line).get("epoch_time_s") for line in f]
        secs = [s for s in secs if s is not None]
        if secs:
            facts.update(epoch_fastest_s=min(secs), epoch_median_s=statistics.median(secs))
    except OSError:
        pass
    return facts


ROTATION = {"rotating_cw", "rotating_ccw"}
TARGET_TOP1 = 95.0  # issue 15: every seed and kernel path at least this (10x3 views, 200 videos)


def errors(predictions_csv: str) -> Dict:
    """Wrong top-1 predictions of a test report, and how many of them are rotating_cw <-> rotating_ccw
    (the direction of rotation: the one distinction the toy runs that miss 95% have not learnt)."""
    with open(predictions_csv, newline="") as f:
        wrong = [(r["label"], r["pred1"]) for r in csv.DictReader(f) if r["pred1"] != r["label"]]
    return {"errors": len(wrong), "cw_ccw_errors": sum(1 for a, b in wrong if {a, b} == ROTATION)}


def table(cells: List[Dict], data: Dict, cores: int, machine: str) -> str:
    d_wall, d_cpu = data.get("wall_s") or 0.0, data.get("cpu_s") or 0.0
    lines = ["| kernels | seed | precision | top-1 | top-5 | errors (cw <-> ccw) | minutes (data + run) "
             "| epoch s, fastest / median | CPU minutes | idle estimate (min) | load before/after |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        top1 = f"{c['top1']:.1f}%" if "top1" in c else f"failed (rc {c['rc']})"
        top5 = f"{c['top5']:.1f}%" if "top5" in c else "-"
        wrong = f"{c['errors']} ({c['cw_ccw_errors']})" if "errors" in c else "-"
        total = (d_wall + c["wall_s"]) / 60
        cpu = (d_cpu + c["cpu_s"]) / 60
        epochs = f"{c['epoch_fastest_s']:.1f} / {c['epoch_median_s']:.1f}" if "epoch_median_s" in c else "-"
        lines.append(f"| {c['kernels']} | {c['seed']} | {c.get('precision', '-')} | {top1} | {top5} | {wrong} "
                     f"| {total:.1f} ({d_wall / 60:.1f} + {c['wall_s'] / 60:.1f}) | {epochs} | {cpu:.1f} "
                     f"| {cpu / cores:.1f} | {c['load_before']} / {c['load_after']} |")
    head = (f"Machine: {machine}, {cores} cores; torch {torch_version()}. Toy data: "
            + ("reused" if data.get("reused") else f"{d_wall:.0f} s wall, {d_cpu:.0f} s CPU") + ".")
    passed = sum(1 for c in cells if round(c.get("top1", 0.0), 1) >= TARGET_TOP1)  # as printed (float32 report)
    head += f" Cells at top-1 >= {TARGET_TOP1:.0f}%: {passed} of {len(cells)}."
    return head + "\n\n" + "\n".join(lines) + "\n"


def torch_version() -> str:
    try:
        import torch
        return torch.__version__
    except ImportError:
        return "?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--kernels", nargs="+", choices=["on", "off"], default=["on"],
                    help="GC CPU kernel paths to run (on: default build; off: GCVIDEO_CPU_KERNELS=0)")
    ap.add_argument("--parallel", type=int, default=1, help="cells run at once (1 = timings mean something)")
    ap.add_argument("--runs", default=os.path.join(ROOT, "runs", "bench_toy"), help="new folder for the runs")
    ap.add_argument("--data", default=None, help="toy data folder (default: RUNS/data, generated and timed)")
    ap.add_argument("--out", default=None, help="also write the table (markdown) here")
    ap.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides for every run")
    args = ap.parse_args(argv)
    os.makedirs(args.runs, exist_ok=True)
    data_dir = args.data or os.path.join(args.runs, "data")
    machine, cores = cpu_model(), os.cpu_count() or 1
    print(f"{machine}, {cores} cores, load {load()}", flush=True)
    data = make_data(data_dir, args.runs)
    if not data.get("reused"):
        print(f"toy data: {data['wall_s']:.1f} s wall, {data['cpu_s']:.1f} s CPU", flush=True)
    jobs = [(k, s) for k in args.kernels for s in args.seeds]
    with ThreadPoolExecutor(max(1, args.parallel)) as pool:
        cells = list(pool.map(lambda ks: run_cell(ks[0], ks[1], data_dir, args.runs, args.opts), jobs))
    for c in cells:
        print(f"{c['name']}: top-1 {c.get('top1', float('nan')):.2f}%  {c['wall_s'] / 60:.2f} min wall, "
              f"{c['cpu_s'] / 60:.2f} min CPU (rc {c['rc']})", flush=True)
    text = table(cells, data, cores, machine)
    print("\n" + text)
    with open(os.path.join(args.runs, "results.json"), "w") as f:
        json.dump({"machine": machine, "cores": cores, "data": data, "cells": cells, "opts": args.opts}, f, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0 if all("top1" in c for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
