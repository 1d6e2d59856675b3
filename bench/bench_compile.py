#!/usr/bin/env python
"""Step time of torch.compile'd Slow-only R50 (baseline and +all GC) beside eager, on the CPU.

    python bench/bench_compile.py                                   # base,gc_all x fwdbwd,fwd
    python bench/bench_compile.py --models gc_all --modes fwd --input 8,112,112 --repeats 5

Eager runs the GC blocks' fused path (gcvideo/layers/fused: fused Functions and C kernels);
compiled runs trace the reference ops (the fused path steps aside under dynamo) and hand them
to ``--backend`` (inductor). Every model is compiled with ``fullgraph=True`` (a graph break is
an error). After compiling and warming up, eager and compiled steps of all models run in a
shuffled order every repeat in one process; printed: median step times, compiled / eager per
model, and each model over the baseline in the same repeat, eager and compiled.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from bench_context import build, machine, step_fn  # noqa: E402


def _median_ratio(a, b):
    return statistics.median(x / y for x, y in zip(a, b))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="base,gc_all")
    ap.add_argument("--modes", default="fwdbwd,fwd", help="fwdbwd (train step without optimizer), fwd (eval)")
    ap.add_argument("--backend", default="inductor")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--input", default="8,224,224", help="T,H,W")
    ap.add_argument("--channels-last", action="store_true", help="channels_last_3d model and input")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args(argv)
    from gcvideo.utils.malloc import keep_freed_memory

    memory = keep_freed_memory()
    thw = tuple(int(v) for v in args.input.split(","))
    models = args.models.split(",")
    fmt = torch.channels_last_3d if args.channels_last else torch.contiguous_format
    print(f"# {machine()}; {memory}; backend {args.backend}; input 1x3x{'x'.join(map(str, thw))}"
          f"{', channels_last_3d' if args.channels_last else ''}", flush=True)
    results = {}
    for mode in args.modes.split(","):
        torch.manual_seed(0)
        x = torch.randn(1, 3, *thw).contiguous(memory_format=fmt)
        target = torch.tensor([3])
        steps, compile_s = {}, {}
        for name in models:
            for kind in ("eager", "compiled"):
                m = build(name).to(memory_format=fmt).train(mode == "fwdbwd")
                if kind == "compiled":
                    m = torch.compile(m, backend=args.backend, fullgraph=True)
                steps[(name, kind)] = step_fn(m, x, target, mode, None)
                t0 = time.perf_counter()
                steps[(name, kind)]()  # compiles the compiled model
                compile_s[(name, kind)] = time.perf_counter() - t0
        for _ in range(args.warmup):
            for run in steps.values():
                run()
        times = {k: [] for k in steps}
        rng = random.Random(0)
        for _ in range(args.repeats):
            order = list(steps)
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                steps[k]()
                times[k].append(time.perf_counter() - t0)
        print(f"\n## {mode}: median s per step over {args.repeats} repeats; ratios are medians of per-repeat ratios")
        print(f"{'model':<10}{'eager s':>10}{'compiled s':>12}{'compiled/eager':>16}"
              f"{'eager/base':>12}{'compiled/base':>15}{'first call s':>14}")
        for name in models:
            e, c = times[(name, "eager")], times[(name, "compiled")]
            be, bc = times[(models[0], "eager")], times[(models[0], "compiled")]
            print(f"{name:<10}{statistics.median(e):>10.3f}{statistics.median(c):>12.3f}"
                  f"{_median_ratio(c, e):>16.3f}{_median_ratio(e, be):>12.3f}{_median_ratio(c, bc):>15.3f}"
                  f"{compile_s[(name, 'compiled')]:>14.1f}", flush=True)
        results[mode] = {f"{n}/{k}": v for (n, k), v in times.items()}
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "args": vars(args), "times_s": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
