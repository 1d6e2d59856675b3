#!/usr/bin/env python
"""Step time per clip of Slow-only R50 with and without context blocks, on the CPU.

GCNet TPAMI (Cao et al. 2020), Table 10: +all GC costs 1.0015x the baseline's FLOPs
(39.35 vs 39.29 G); the target here is a forward+backward step time within 1.03x of
the baseline at 8x224x224.

    python bench/bench_context.py                                  # everything, ~10-20 min on 2 cores
    python bench/bench_context.py --variants fp32,fp32_cl --modes fwdbwd --repeats 9
    python bench/bench_context.py --models base,gc_all,gc_all_unfused --json /tmp/b.json
    python bench/bench_context.py --profile --models base,gc_all_orig,gc_all --variants fp32 --modes fwdbwd

All models of one (variant, mode) are measured in one process, one step of each model per
repeat in a shuffled order, so slow drifts of a shared CPU hit them alike. Reported: the median
time per model and, per model, the median over repeats of its time divided by the
baseline's time in the same repeat (the ratio the target is about); also the same ratio of
process CPU time, less sensitive to other jobs preempting this one on a shared machine.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = {  # name -> (config, overrides)
    "base": ("slow_r50_8x8", []),
    "gc_all": ("slow_r50_8x8_gc_all", []),
    "gc_all_unfused": ("slow_r50_8x8_gc_all", ["CONTEXT.FUSED", "False"]),
    # the fused path with torch ops only, without the C kernels of gcvideo/layers/fused/_gc_kernels.c
    "gc_all_torchops": ("slow_r50_8x8_gc_all", []),
    "gc5": ("slow_r50_8x8_gc5", []),
    # +all GC with gcvideo/layers/context.py as it was before the speed work (git rev ORIG_REV):
    # a fused attention-pooling Function, then autograd for the transform and the broadcast add
    "gc_all_orig": ("slow_r50_8x8_gc_all", []),
    "nl5": ("slow_r50_8x8_nl5", []),
}
VARIANTS = {  # name -> (autocast dtype or None, channels_last_3d)
    "fp32": (None, False),
    "fp32_cl": (None, True),
    "bf16": (torch.bfloat16, False),
    "bf16_cl": (torch.bfloat16, True),
    "fp16": (torch.float16, False),  # CUDA only
    "fp16_cl": (torch.float16, True),
}


ORIG_REV = "ce9f78c"


def _orig_context_module():
    """gcvideo/layers/context.py at ORIG_REV, imported under another name (needs git)."""
    import importlib.util
    import subprocess
    import tempfile

    src = subprocess.run(["git", "-C", ROOT, "show", f"{ORIG_REV}:gcvideo/layers/context.py"], check=True,
                         capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "context_orig.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("context_orig", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _in_shapes_of(module: torch.nn.Module, sd):
    """``sd`` reshaped to ``module``'s parameter shapes (the ORIG_REV LayerNorm holds (Cr, 1, 1, 1))."""
    shapes = {k: v.shape for k, v in module.state_dict().items()}
    return {k: v.reshape(shapes[k]) for k, v in sd.items()}


def _swap_in_orig(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every ContextBlock by the ORIG_REV class with the same weights (no ``residual``
    method, so the residual block composes it as relu(branch2(x) + shortcut), as before)."""
    orig = _orig_context_module()
    for name, m in list(model.named_modules()):
        if "context" in m._modules and type(m._modules["context"]).__name__ == "ContextBlock":
            b = m._modules["context"]
            nb = orig.ContextBlock(b.channels, pooling=b.pooling, transform=b.transform_kind, norm=b.norm_kind,
                                   fusion=b.fusion, fused=True,
                                   ratio=b.transform[0].out_channels / b.channels
                                   if b.transform_kind == "bottleneck" else 0.25)
            nb.load_state_dict(_in_shapes_of(nb, b.state_dict()))
            m._modules["context"] = nb
    return model


def build(name: str) -> torch.nn.Module:
    from gcvideo.config import load_cfg
    from gcvideo.models import build_model

    config, opts = MODELS[name]
    cfg = load_cfg(os.path.join(ROOT, "configs", "kinetics400", config + ".yaml"), opts, check_files=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    # Non-zero context transforms, so the blocks do real work in backward too (zero-init weights
    # would give the same timings, but make the check below meaningless).
    with torch.no_grad():
        for m in model.context_blocks():
            for p in m.parameters():
                if p.dim() > 1 and not p.any():
                    p.normal_(0, 0.01)
    return _swap_in_orig(model) if name.endswith("_orig") else model


def to_memory_format(model: torch.nn.Module, fmt) -> torch.nn.Module:
    """5-D parameters (conv kernels) to ``fmt`` (the ORIG_REV block holds 4-D LayerNorm weights, which ``model.to(memory_format=...)`` refuses)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 5:
                p.data = p.data.contiguous(memory_format=fmt)
    return model


def step_fn(model, x, target, mode: str, dtype):
    dev = x.device.type

    def run():
        if mode == "fwd":
            with torch.no_grad(), torch.autocast(dev, dtype=dtype, enabled=dtype is not None):
                model(x)
        else:
            for p in model.parameters():
                p.grad = None
            with torch.autocast(dev, dtype=dtype, enabled=dtype is not None):
                out = model(x)
            F.cross_entropy(out.float(), target).backward()
        if dev == "cuda":
            torch.cuda.synchronize()  # the step's kernels are done when the timer stops
    return run


def _without_kernels(run):
    """``run`` with the fused CPU kernels switched off (the torch-op path of the same Functions)."""
    from gcvideo.layers.fused import kernels

    def wrapped():
        saved = kernels.cpu_kernels
        kernels.cpu_kernels = lambda: None
        try:
            run()
        finally:
            kernels.cpu_kernels = saved
    return wrapped


def measure(models: List[str], variant: str, mode: str, repeats: int, warmup: int, thw,
            device: str = "cpu", batch: int = 1) -> Dict[str, List[float]]:
    dtype, cl = VARIANTS[variant]
    if dtype == torch.float16 and device != "cuda":
        raise SystemExit(f"variant {variant!r} needs --device cuda")
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # as in training (TRAIN.DETERMINISTIC False)
    torch.manual_seed(0)
    x = torch.randn(batch, 3, *thw, device=device).contiguous(memory_format=fmt)
    target = torch.arange(batch, device=device) % 400
    steps = {}
    for name in models:
        m = to_memory_format(build(name).to(device), fmt)
        m.train(mode == "fwdbwd")
        steps[name] = step_fn(m, x, target, mode, dtype)
        if name.endswith("_torchops"):
            steps[name] = _without_kernels(steps[name])
    for _ in range(warmup):
        for name in models:
            steps[name]()
    times = {name: [] for name in models}
    cpu = {name: [] for name in models}
    rng = random.Random(0)
    for r in range(repeats):
        order = list(models)
        rng.shuffle(order)  # a fresh order every repeat: no model always first, last or in between
        for name in order:
            c0, t0 = time.process_time(), time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return times, cpu


def _bootstrap_ci(values: List[float], n: int = 2000, q: float = 0.05):
    """90% percentile-bootstrap interval of the median."""
    import random

    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return [meds[int(q * n)], meds[int((1 - q) * n) - 1]]


def summarise(times: Dict[str, List[float]], cpu: Dict[str, List[float]], base: str = "base") -> Dict[str, dict]:
    out = {}
    for name, ts in times.items():
        d = {"median_s": statistics.median(ts), "min_s": min(ts), "times_s": ts, "cpu_s": cpu[name],
             "cpu_ratio_median_of_pairs": statistics.median(t / b for t, b in zip(cpu[name], cpu[base]))}
        if base in times:
            pairs = [t / b for t, b in zip(ts, times[base])]
            d["ratio_median_of_pairs"] = statistics.median(pairs)
            d["ratio_ci90"] = _bootstrap_ci(pairs)
            d["cpu_ratio_ci90"] = _bootstrap_ci([t / b for t, b in zip(cpu[name], cpu[base])])
            d["ratio_of_medians"] = d["median_s"] / statistics.median(times[base])
        out[name] = d
    return out


def profile(models: List[str], variant: str, mode: str, thw, steps: int = 6, top: int = 25) -> str:
    """Per-op self CPU time (torch.profiler), each model beside the baseline: where the extra time goes.

    One step of each model in turn, ``steps`` times (as in the timing runs), so that machine
    noise spreads over all models; ops the GC blocks replace show as negative differences."""
    from torch.profiler import ProfilerActivity, profile as tprofile

    dtype, cl = VARIANTS[variant]
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    x = torch.randn(1, 3, *thw).contiguous(memory_format=fmt)
    target = torch.tensor([3])
    runs = {}
    for name in models:
        m = to_memory_format(build(name), fmt)
        m.train(mode == "fwdbwd")
        runs[name] = step_fn(m, x, target, mode, dtype)
        runs[name]()
    per_model = {name: {} for name in models}  # op -> (ms per step, calls per step)
    for _ in range(steps):
        for name, run in runs.items():
            with tprofile(activities=[ProfilerActivity.CPU]) as prof:
                run()
            for e in prof.key_averages():
                ms, calls = per_model[name].get(e.key, (0.0, 0))
                per_model[name][e.key] = (ms + e.self_cpu_time_total / steps / 1e3, calls + e.count / steps)
    names = sorted({k for d in per_model.values() for k in d})
    lines = [f"per-op self CPU ms per step ({mode}, {variant}); sorted by the largest difference to {models[0]}",
             f"{'op':<44}" + "".join(f"{n:>17}" for n in models) + "   calls"]
    rows = []
    for k in names:
        vals = [per_model[n].get(k, (0.0, 0))[0] for n in models]
        diff = max((v - vals[0] for v in vals[1:]), key=abs, default=0.0)
        rows.append((diff, k, vals, [round(per_model[n].get(k, (0, 0))[1]) for n in models]))
    rows.sort(key=lambda r: -abs(r[0]))
    for diff, k, vals, calls in rows[:top]:
        lines.append(f"{k[:44]:<44}" + "".join(f"{v:17.1f}" for v in vals) + "   " + "/".join(map(str, calls)))
    lines.append(f"{'total':<44}" + "".join(f"{sum(v for v, _ in per_model[n].values()):17.1f}" for n in models))
    return "\n".join(lines)


STAGE_SHAPES = {  # R50 8x224x224, batch 1: (C, T, H, W) at each stage's output and GC blocks in +all GC
    "res3": ((512, 8, 28, 28), 4), "res4": ((1024, 8, 14, 14), 6), "res5": ((2048, 8, 7, 7), 3)}


def block_costs(variants: List[str], repeats: int, warmup: int) -> List[dict]:
    """Extra forward+backward time of one GC block at each stage, over the residual add + ReLU it
    sits in: relu(y + shortcut) (baseline) vs relu(GC(y) + shortcut) (the ORIG_REV implementation and
    the plain autograd reference path) vs ContextBlock.residual(y, shortcut) (now). Process CPU time,
    median over repeats, the four in a shuffled order every repeat."""
    from gcvideo.layers import ContextBlock

    orig = _orig_context_module()
    rows = []
    rng = random.Random(0)
    for variant in variants:
        dtype, cl = VARIANTS[variant]
        fmt = torch.channels_last_3d if cl else torch.contiguous_format
        for stage, ((c, t, h, w), count) in STAGE_SHAPES.items():
            torch.manual_seed(0)
            make = (lambda: torch.randn(1, c, t, h, w).contiguous(memory_format=fmt).to(dtype or torch.float32))
            y, s, g = make().requires_grad_(), make(), make()
            new = ContextBlock(c, 0.25, fused=True)
            with torch.no_grad():
                for p in new.parameters():
                    p.normal_(0, 0.02)
            ref = ContextBlock(c, 0.25, fused=False)
            old = orig.ContextBlock(c, 0.25, fused=True)
            ref.load_state_dict(new.state_dict())
            old.load_state_dict(_in_shapes_of(old, new.state_dict()))
            fns = {"baseline": lambda: torch.relu(y + s), "orig": lambda: torch.relu(old(y) + s),
                   "reference": lambda: torch.relu(ref(y) + s), "now": lambda: new.residual(y, s)}

            def step(f):
                y.grad = None
                for b in (new, ref, old):
                    for p in b.parameters():
                        p.grad = None
                with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                    out = f()
                out.backward(g)

            for _ in range(warmup):
                for f in fns.values():
                    step(f)
            ts = {k: [] for k in fns}
            for _ in range(repeats):
                order = list(fns)
                rng.shuffle(order)
                for k in order:
                    c0 = time.process_time()
                    step(fns[k])
                    ts[k].append(time.process_time() - c0)
            med = {k: statistics.median(v) * 1e3 for k, v in ts.items()}
            rows.append({"variant": variant, "stage": stage, "blocks": count, "baseline_ms": med["baseline"],
                         **{f"extra_{k}_ms": med[k] - med["baseline"] for k in ("orig", "reference", "now")}})
    return rows


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from gcvideo.layers.fused import kernels

    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}), GC CPU kernels "
            f"{'on' if kernels.cpu_kernels() is not None else 'off'}"
            + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))


def gemv_costs(repeats: int = 40) -> List[dict]:
    """Cold-cache ms of the attention-pooling matrix-vector products at each stage's shape, on the
    channels-last (L, C) view and on the contiguous (C, L) one, beside a plain read (sum) of the map."""
    big = torch.empty(64 << 18)  # 64 MB, written before every call to push the map out of the caches

    def cold(f):
        ts = []
        for _ in range(repeats):
            big.add_(1)
            t0 = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts) * 1e3

    rows = []
    for stage, ((c, t, h, w), _) in STAGE_SHAPES.items():
        n = t * h * w
        lc, cl_ = torch.randn(n, c), torch.randn(c, n)  # (L, C) channels-last view, (C, L) contiguous
        u, v = torch.randn(c), torch.randn(n)
        rows.append({"stage": stage, "logits_LC": cold(lambda: torch.mv(lc, u)),
                     "wsum_LC": cold(lambda: torch.mv(lc.t(), v)), "logits_CL": cold(lambda: torch.mv(cl_.t(), u)),
                     "wsum_CL": cold(lambda: torch.mv(cl_, v)), "read": cold(lambda: lc.sum())})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="base,gc_all,gc_all_unfused,nl5")
    ap.add_argument("--variants", default="fp32,fp32_cl,bf16,bf16_cl")
    ap.add_argument("--modes", default="fwdbwd,fwd", help="fwdbwd (train step without optimizer), fwd (eval)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--input", default="8,224,224", help="T,H,W")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: step times of a GPU (synchronised; TF32 convolutions as PyTorch's default)")
    ap.add_argument("--batch", type=int, default=1, help="clips per step")
    ap.add_argument("--glibc-default", action="store_true",
                    help="leave glibc malloc as it is (default: keep freed memory, as the training engine does on "
                         "CPUs; gcvideo/utils/malloc.py)")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--blocks", action="store_true",
                    help="time single GC blocks at the res3/res4/res5 shapes instead (CPU time, see block_costs)")
    ap.add_argument("--profile", action="store_true",
                    help="print the per-op profile of each model beside the baseline instead of timing")
    ap.add_argument("--gemv", action="store_true",
                    help="time the pooling matrix-vector products per layout at each stage's shape instead")
    args = ap.parse_args(argv)
    from gcvideo.utils.malloc import keep_freed_memory

    memory = "malloc: glibc default" if args.glibc_default else keep_freed_memory()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.gemv:
        print(f"# {machine()}; {memory}")
        print("cold-cache ms: torch.mv over the (L, C) channels-last view vs the (C, L) contiguous one; read = sum")
        print(f"{'stage':<5} {'logits LC':>10} {'wsum LC':>8} {'logits CL':>10} {'wsum CL':>8} {'read':>6}")
        for r in gemv_costs():
            print(f"{r['stage']:<5} {r['logits_LC']:10.3f} {r['wsum_LC']:8.3f} {r['logits_CL']:10.3f} "
                  f"{r['wsum_CL']:8.3f} {r['read']:6.3f}")
        return 0
    thw = tuple(int(v) for v in args.input.split(","))
    models = args.models.split(",")
    if "base" not in models:
        models = ["base"] + models
    if args.blocks:
        print(f"# {machine()}; {memory}")
        print("extra forward+backward CPU ms of one GC block over relu(y + shortcut); x blocks = in +all GC")
        print(f"{'variant':<8} {'stage':<5} {'blocks':>6} {'baseline':>9} {'orig':>8} {'reference':>10} {'now':>8}")
        tot = {}
        rows = block_costs(args.variants.split(","), args.repeats, args.warmup)
        for r in rows:
            print(f"{r['variant']:<8} {r['stage']:<5} {r['blocks']:>6} {r['baseline_ms']:9.2f} {r['extra_orig_ms']:8.2f} "
                  f"{r['extra_reference_ms']:10.2f} {r['extra_now_ms']:8.2f}")
            for k in ("orig", "reference", "now"):
                tot[(r["variant"], k)] = tot.get((r["variant"], k), 0.0) + r["blocks"] * r[f"extra_{k}_ms"]
        for v in args.variants.split(","):
            print(f"{v:<8} +all GC total extra ms per step: " + ", ".join(
                f"{k} {tot[(v, k)]:.0f}" for k in ("orig", "reference", "now")))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"machine": machine(), "blocks": rows}, f, indent=1)
        return 0
    if args.profile:
        for mode in args.modes.split(","):
            for variant in args.variants.split(","):
                print(profile(models, variant, mode, thw), flush=True)
        return 0
    results = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": machine() + "; " + memory,
               "command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + (argv or sys.argv[1:])),
               "input": list(thw), "repeats": args.repeats, "device": args.device, "batch": args.batch,
               "runs": []}
    print(f"# {results['date']}  {results['machine']}")
    print(f"# {results['command']}")
    print(f"{'mode':<7} {'variant':<8} {'model':<15} {'median s':>9} {'min s':>7} {'ratio':>7} {'ratio(med)':>10}"
          f" {'90% CI':>13} {'cpu ratio':>9} {'90% CI':>13}")
    for mode in args.modes.split(","):
        for variant in args.variants.split(","):
            times, cpu = measure(models, variant, mode, args.repeats, args.warmup, thw, args.device, args.batch)
            summary = summarise(times, cpu)
            results["runs"].append({"mode": mode, "variant": variant, "models": summary})
            for name in models:
                s = summary[name]
                print(f"{mode:<7} {variant:<8} {name:<15} {s['median_s']:9.3f} {s['min_s']:7.3f} "
                      f"{s['ratio_median_of_pairs']:7.3f} {s['ratio_of_medians']:10.3f} "
                      f"{s['ratio_ci90'][0]:6.3f}-{s['ratio_ci90'][1]:.3f} "
                      f"{s['cpu_ratio_median_of_pairs']:9.3f} {s['cpu_ratio_ci90'][0]:6.3f}-{s['cpu_ratio_ci90'][1]:.3f}",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
