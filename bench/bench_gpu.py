#!/usr/bin/env python
"""Model-only training step on a GPU: clips/s, peak memory and model FLOPs utilisation.

Synthetic clips (N, 3, 8, 224, 224), one full training step each (forward, cross-entropy,
backward, SGD-momentum update; the fp16 grad scaler with fp16), for baseline, +all GC and
+5 NL Slow-only R50 in fp32 / bf16 / fp16 autocast with channels_last_3d, eager and
``torch.compile``. Utilisation = fvcore multiply-adds per clip x 2 (FLOPs) x 3 (forward +
backward) x clips/s / the GPU's dense bf16 matrix rate (``--peak-tflops``, H200: ~790 measured,
990 datasheet).

    python bench/bench_gpu.py --json runs/gpu_bench.json                    # the whole grid
    python bench/bench_gpu.py --models base,gc_all --precisions bf16 --compile both
    python bench/bench_gpu.py --device cpu --batch 1 --size 32 --steps 2 --warmup 1   # CPU dry run

Every model of one setting is measured in one process, one after the other, with CUDA events
around each step (median of ``--steps``). ``--profile FILE`` adds a torch.profiler table of the
best baseline setting's kernels (what limits it).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_context  # noqa: E402
from gcvideo.analysis.flops import count_flops  # noqa: E402

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def build(name: str, device: torch.device, channels_last: bool = True) -> torch.nn.Module:
    """bench_context's model of that name (non-zero context transforms), on ``device``."""
    model = bench_context.build(name).to(device)
    return model.to(memory_format=torch.channels_last_3d) if channels_last else model


def train_step(model, optimizer, scaler, x, y, dtype):
    """One training step; nothing in it waits for the GPU."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        logits = model(x)  # (N, K)
    loss = F.cross_entropy(logits.float(), y)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def time_steps(step, device: torch.device, steps: int, warmup: int) -> List[float]:
    """Seconds per step: CUDA events around each step on a GPU, wall time on the CPU."""
    for _ in range(warmup):
        step()
    if device.type != "cuda":
        out = []
        for _ in range(steps):
            t = time.perf_counter()
            step()
            out.append(time.perf_counter() - t)
        return out
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
    for start, end in events:
        start.record()
        step()
        end.record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) / 1e3 for s, e in events]


def measure(name: str, precision: str, compiled: bool, device: torch.device, batch: int, size: int,
            steps: int, warmup: int, peak_tflops: float, macs_per_clip: int) -> Dict:
    dtype = PRECISIONS[precision]
    model = build(name, device)
    net = torch.compile(model) if compiled else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = torch.randn(batch, 3, 8, size, size, device=device).contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 400, (batch,), device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    times = time_steps(lambda: train_step(net, optimizer, scaler, x, y, dtype), device, steps, warmup)
    step_s = statistics.median(times)
    clips_s = batch / step_s
    flops_s = macs_per_clip * 2 * 3 * clips_s
    row = {"model": name, "precision": precision, "compile": compiled, "batch": batch, "size": size,
           "step_ms": 1e3 * step_s, "clips_per_s": clips_s, "tflops": flops_s / 1e12,
           "mfu": flops_s / (peak_tflops * 1e12), "wall_s": time.perf_counter() - t0,
           "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None}
    del net, model, optimizer
    return row


def profile_best(rows: List[Dict], device: torch.device, path: str, size: int) -> None:
    """torch.profiler table of the fastest baseline setting's kernels, written to ``path``."""
    best = max((r for r in rows if r["model"] == "base"), key=lambda r: r["clips_per_s"])
    model = build("base", device)
    net = torch.compile(model) if best["compile"] else model
    dtype = PRECISIONS[best["precision"]]
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    x = torch.randn(best["batch"], 3, 8, size, size, device=device).contiguous(memory_format=torch.channels_last_3d)
    y = torch.randint(0, 400, (best["batch"],), device=device)
    for _ in range(3):
        train_step(net, optimizer, scaler, x, y, dtype)
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA]
                                                    if device.type == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(3):
            train_step(net, optimizer, scaler, x, y, dtype)
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    with open(path, "w") as f:
        f.write(f"# best baseline setting: {best['precision']}, compile={best['compile']}, batch {best['batch']}\n")
        f.write(prof.key_averages().table(sort_by=key, row_limit=30))
    print(f"profile of the best baseline setting written to {path}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="base,gc_all,nl5")
    ap.add_argument("--precisions", default="fp32,bf16,fp16")
    ap.add_argument("--compile", default="both", choices=["eager", "compiled", "both"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--size", type=int, default=224, help="crop size H = W (8 frames)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="dense bf16 matrix rate of the GPU")
    ap.add_argument("--json", default="", help="write the rows here")
    ap.add_argument("--profile", default="", help="write a kernel table of the best baseline setting here")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, "
              f"cuDNN {torch.backends.cudnn.version()}, CUDA {torch.version.cuda}")
    models = args.models.split(",")
    precisions = [p for p in args.precisions.split(",") if device.type == "cuda" or p != "fp16"]
    modes = {"eager": [False], "compiled": [True], "both": [False, True]}[args.compile]
    macs = {m: count_flops(build(m, torch.device("cpu"), channels_last=False), (1, 3, 8, args.size, args.size)).total
            for m in models}
    rows = []
    print(f"{'model':8s} {'prec':5s} {'mode':8s} {'step ms':>8s} {'clips/s':>8s} {'TFLOP/s':>8s} {'MFU':>6s} "
          f"{'mem GiB':>8s} {'x base':>7s}")
    for compiled in modes:
        for precision in precisions:
            base_ms: Optional[float] = None
            for m in models:
                try:
                    r = measure(m, precision, compiled, device, args.batch, args.size, args.steps, args.warmup,
                                args.peak_tflops, macs[m])
                except Exception as e:  # one failing setting must not hide the others
                    print(f"{m:8s} {precision:5s} {'compiled' if compiled else 'eager':8s} FAILED: "
                          f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                    rows.append({"model": m, "precision": precision, "compile": compiled, "error": str(e)[:2000]})
                    continue
                base_ms = r["step_ms"] if m == "base" else base_ms
                r["ratio_to_base"] = r["step_ms"] / base_ms if base_ms else None
                rows.append(r)
                mem = f"{r['peak_mem_gib']:8.1f}" if r["peak_mem_gib"] is not None else f"{'-':>8s}"
                ratio = f"{r['ratio_to_base']:7.3f}" if r["ratio_to_base"] else f"{'-':>7s}"
                print(f"{m:8s} {precision:5s} {'compiled' if compiled else 'eager':8s} {r['step_ms']:8.1f} "
                      f"{r['clips_per_s']:8.1f} {r['tflops']:8.1f} {100 * r['mfu']:5.1f}% {mem} {ratio}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"device": str(device), "torch": torch.__version__, "args": vars(args), "macs": macs,
                       "rows": rows}, f, indent=1)
    if args.profile and any("step_ms" in r and r["model"] == "base" for r in rows):
        profile_best([r for r in rows if "step_ms" in r], device, args.profile, args.size)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
