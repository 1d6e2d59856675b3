#!/usr/bin/env python
"""Data pipeline throughput, side by side in one process (one CPU core, one decoder thread).

    python bench/bench_decode.py [--clips 4] [--train-items 24] [--rounds 3] [--feed 100 200 400]
                                 [--out bench/results/decode.md]

1. Training clips per second per core (8x8 at 30 fps, short-side jitter 256-320, 224 crop,
   flip; CPU time of this process, so other processes on the machine do not count):
   gcvideo's training item (``VideoDataset``, every decoder backend installed, K = 1 and 2
   clips per decode, uint8 clips as the workers return them by default, plus float32 items)
   against pytorchvideo 0.1.5's ``LabeledVideoDataset`` with its random clip sampler (PyAV
   decoder; the same augmentation applied with torchvision.transforms.v2, since pytorchvideo's
   own transforms do not import with this torchvision) and against PySlowFast's Kinetics
   decoding path (``pyav_decode`` + ``temporal_sampling`` + ``tensor_normalize`` +
   ``spatial_sampling``, written here from facebookresearch/SlowFast slowfast/datasets/
   decoder.py, utils.py and transform.py). Clips: Kinetics-like originals made here with PyAV
   (340x256, 30 fps, 300 frames, x264 medium crf 23, keyframes 250 apart, 3 B-frames), the
   real Kinetics clip tests/data/files/demo.mp4, and both after ``reencode_video`` with
   ``tools/prepare_kinetics.py``'s defaults. Methods run interleaved, ``--rounds`` times.
2. Keyframe interval table for the prepared copies: training clips/s per core (default
   backend, K = 1) and bytes, intervals 1/8/16/32/250, with the default encoder settings and
   with x264's defaults.
3. 30-view test cost per video: gcvideo's decode-once item against decoding every view
   separately the way PySlowFast's loader does (one item per view: open, seek, decode to the
   clip's end, convert every frame of the window to RGB), and a lean per-view variant.
4. Capacity: clips/s per core and the cores that feed N clips/s.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import av  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402

from gcvideo.config import get_cfg  # noqa: E402
from gcvideo.data.annotations import VideoRecords  # noqa: E402
from gcvideo.data.clip_transforms import TrainClips  # noqa: E402
from gcvideo.data.dataset import VideoDataset  # noqa: E402
from gcvideo.data.decoder import BACKENDS, DecodeOptions, open_video  # noqa: E402
from gcvideo.data.prepare import PREPARE_DEFAULTS, reencode_video  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402
from gcvideo.data.sampling import ClipSampling, view_clip_indices  # noqa: E402
from gcvideo.data.transforms import crop_offsets, make_views, normalize, resize_short_side, to_tchw  # noqa: E402
from gcvideo.utils.io import atomic_write_text  # noqa: E402

MEAN, STD = [0.45] * 3, [0.225] * 3
JITTER, CROP, T, RATE, FPS = (256, 320), 224, 8, 8, 30
# CPU time of this process: the cost on one core, unaffected by other processes sharing the machine.
CLOCK = time.process_time


def make_kinetics_like(path: str, seed: int, frames: int = 300, width: int = 340, height: int = 256) -> str:
    """A 10 s 340x256 h264 clip: textured scene with panning camera and a moving object."""
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(seed)
    small = rng.uniform(0, 255, (24, 32, 3)).astype(np.float32)
    big = torch.nn.functional.interpolate(torch.from_numpy(small).permute(2, 0, 1)[None], size=(height * 2, width * 2),
                                          mode="bicubic", align_corners=False)[0].permute(1, 2, 0).numpy()
    big = np.clip(big + rng.normal(0, 12, big.shape), 0, 255).astype(np.uint8)
    tmp = path + ".tmp.mp4"
    with av.open(tmp, "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"g": "250", "crf": "23", "preset": "medium"}
        for i in range(frames):
            y = int(height / 2 + height / 3 * np.sin(i / 45 + seed))
            x = int((i * 1.3 + 40 * seed) % width)
            img = np.ascontiguousarray(big[y:y + height, x:x + width])
            oy, ox = int(100 + 60 * np.sin(i / 20)), int((i * 2) % (width - 40))
            img[oy:oy + 40, ox:ox + 40] = 255 - img[oy:oy + 40, ox:ox + 40]
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in s.encode(f):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------
# 30-view test items
# ---------------------------------------------------------------------------
def decode_once_item(path: str, backend: str, clips=10, crops=3, size=256):
    """gcvideo's test item: one open, one read of the union, resize once, all crops."""
    with open_video(path, backend, 1) as r:
        views = view_clip_indices(r.num_frames, r.fps, 8, 8, 30, clips)
        flat = sorted({i for c in views for i in c})
        frames = r.read(flat)  # (K, H, W, 3)
    row = {f: k for k, f in enumerate(flat)}
    return make_views(frames, [[row[i] for i in c] for c in views], size, crops, MEAN, STD)


def per_view(path: str, clip_idx: int, crop_idx: int, clips=10, crops=3, size=256, lean=False):
    """One view decoded on its own, as PySlowFast's loader does (one item per view): open the
    container, seek to the keyframe before the clip, decode to the clip's end, convert every
    frame of the clip window to RGB (``frame.to_rgb().to_ndarray()``, PySlowFast's
    ``pyav_decode``), take the 8 sampled frames, resize, crop this view's crop, normalise.
    ``lean=True``: a stricter baseline that converts only the 8 sampled frames (one reused
    swscale context)."""
    from av.video.reformatter import VideoReformatter
    with av.open(path) as c:
        stream = c.streams.video[0]
        stream.codec_context.thread_count = 1
        fps = float(stream.average_rate)
        n = stream.frames
        idx = view_clip_indices(n, fps, 8, 8, 30, clips)[clip_idx]
        tb = stream.time_base
        start_pts = int(idx[0] / fps / tb)
        end_pts = int(idx[-1] / fps / tb)
        c.seek(max(start_pts - 1024, 0), any_frame=False, backward=True, stream=stream)
        want = set(idx)
        ref = VideoReformatter()
        got = {}
        for frame in c.decode(stream):
            if frame.pts < start_pts:
                continue
            k = int(round(float(frame.pts * tb) * fps))
            if lean:
                if k in want:
                    got[k] = ref.reformat(frame, format="rgb24").to_ndarray()
            else:
                got[k] = frame.to_ndarray(format="rgb24")
            if frame.pts >= end_pts:
                break
    frames = np.stack([got.get(i, got[max(got)]) for i in idx])  # (T, H, W, 3)
    x = resize_short_side(to_tchw(frames), size)  # (T, 3, h, w)
    top, left = crop_offsets(x.shape[-2], x.shape[-1], size, crops)[crop_idx]
    return normalize(x[..., top:top + size, left:left + size], MEAN, STD)  # (3, T, size, size)


def per_view_item(path: str, clips=10, crops=3, lean=False):
    return [per_view(path, ci, si, clips, crops, lean=lean) for ci in range(clips) for si in range(crops)]


# ---------------------------------------------------------------------------
# Training clips: gcvideo
# ---------------------------------------------------------------------------
def gcvideo_items(paths, backend: str, k: int, uint8: bool = True) -> VideoDataset:
    """gcvideo's training dataset over ``paths`` (the config defaults: 8x8, jitter 256-320, crop 224, flip)."""
    recs = VideoRecords(paths, [0] * len(paths), list(range(1, len(paths) + 1)))
    return VideoDataset(recs, sampling=ClipSampling(T, RATE, FPS), decode=DecodeOptions(backend),
                        transform=TrainClips(jitter_scales=JITTER, crop=CROP, mean=MEAN, std=STD, num_samples=k,
                                             uint8=uint8))


def run_gcvideo(ds: VideoDataset, n: int, epoch: int) -> int:
    """``n`` items (K clips each); returns the clips made."""
    ds.set_epoch(epoch)
    for i in range(n):
        item = ds[i % len(ds)]
        assert item["ok"] and not item["skipped"], item["skipped"]
    return n * ds.transform.num_samples


# ---------------------------------------------------------------------------
# Training clips: pytorchvideo 0.1.5 (LabeledVideoDataset + random clip sampler, PyAV)
# ---------------------------------------------------------------------------
def v2_augment(video: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """pytorchvideo's usual Kinetics chain with torchvision v2 ops: UniformTemporalSubsample(8),
    RandomShortSideScale(256, 320), RandomCrop(224), RandomHorizontalFlip, /255, Normalize.
    float ``(3, T', H, W)`` in [0, 255] -> ``(3, 8, 224, 224)``."""
    t = video.shape[1]
    idx = torch.linspace(0, t - 1, T).clamp(0, t - 1).long()
    x = video.index_select(1, idx).permute(1, 0, 2, 3)  # (8, 3, H, W)
    x = TF.resize(x, [rng.randint(*JITTER)], antialias=True)  # short side
    h, w = x.shape[-2:]
    top, left = rng.randint(0, h - CROP), rng.randint(0, w - CROP)
    x = x[..., top:top + CROP, left:left + CROP]
    if rng.random() < 0.5:
        x = x.flip(-1)
    x = TF.normalize(x / 255.0, MEAN, STD)
    return x.permute(1, 0, 2, 3).contiguous()  # (3, 8, 224, 224)


def run_pytorchvideo(paths, n: int, seed: int) -> int:
    from pytorchvideo.data import LabeledVideoDataset, make_clip_sampler

    torch.manual_seed(seed)
    ds = LabeledVideoDataset([(paths[i % len(paths)], {"label": 0}) for i in range(n)],
                             make_clip_sampler("random", T * RATE / FPS), torch.utils.data.SequentialSampler,
                             decode_audio=False, decoder="pyav")
    rng = random.Random(seed)
    made = 0
    for item in ds:
        v2_augment(item["video"], rng)
        made += 1
    assert made == n
    return made


# ---------------------------------------------------------------------------
# Training clips: PySlowFast's Kinetics path (slowfast/datasets/decoder.py, utils.py, transform.py)
# ---------------------------------------------------------------------------
def slowfast_start_end(video_size: float, clip_size: float, clip_idx: int, num_clips: int):
    """get_start_end_idx: a random (clip_idx -1) or the clip_idx-th of num_clips windows."""
    delta = max(video_size - clip_size, 0)
    start = random.uniform(0, delta) if clip_idx == -1 else delta * clip_idx / num_clips
    return start, start + clip_size - 1


def slowfast_decode(path: str) -> torch.Tensor:
    """pyav_decode + decode (clip_idx -1): seek to the window's start pts minus a margin of 1024,
    decode to its end pts, every frame to RGB, then 8 frames by temporal_sampling (linspace)."""
    container = av.open(path)
    stream = container.streams.video[0]
    stream.codec_context.thread_count = 1
    fps = float(stream.average_rate)
    frames_length, duration = stream.frames, stream.duration
    clip_size = RATE * T / FPS * fps
    start_idx, end_idx = slowfast_start_end(frames_length, clip_size, -1, 10)
    timebase = duration / frames_length
    start_pts, end_pts = int(start_idx * timebase), int(end_idx * timebase)
    container.seek(max(start_pts - 1024, 0), any_frame=False, backward=True, stream=stream)
    frames = {}
    for frame in container.decode(video=0):  # pyav_decode_stream, buffer_size 0
        if frame.pts < start_pts:
            continue
        frames[frame.pts] = frame
        if frame.pts > end_pts:
            break
    container.close()
    video = torch.as_tensor(np.stack([frames[p].to_rgb().to_ndarray() for p in sorted(frames)]))  # (N, H, W, 3)
    s, e = slowfast_start_end(video.shape[0], clip_size, 0, 1)
    idx = torch.linspace(s, e, T).clamp(0, video.shape[0] - 1).long()  # temporal_sampling
    return video.index_select(0, idx)  # (8, H, W, 3) uint8


def slowfast_augment(frames: torch.Tensor) -> torch.Tensor:
    """kinetics.py: tensor_normalize, permute to (C, T, H, W), spatial_sampling(-1): short-side jitter
    with F.interpolate (bilinear), random crop, horizontal flip (numpy's global RNG, as PySlowFast)."""
    x = (frames.float() / 255.0 - torch.tensor(MEAN)) / torch.tensor(STD)  # tensor_normalize, (T, H, W, 3)
    x = x.permute(3, 0, 1, 2)  # (3, T, H, W)
    size = int(round(np.random.uniform(*JITTER)))  # random_short_side_scale_jitter
    h, w = x.shape[-2:]
    nh, nw = (size, int(math.floor(float(w) / h * size))) if w > h else (int(math.floor(float(h) / w * size)), size)
    x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    top, left = np.random.randint(0, nh - CROP + 1), np.random.randint(0, nw - CROP + 1)  # random_crop
    x = x[:, :, top:top + CROP, left:left + CROP]
    if np.random.uniform() < 0.5:  # horizontal_flip
        x = x.flip(-1)
    return x


def run_slowfast(paths, n: int, seed: int) -> int:
    random.seed(seed)
    np.random.seed(seed)
    for i in range(n):
        slowfast_augment(slowfast_decode(paths[i % len(paths)]))
    return n


# ---------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------
def measure(methods: dict, rounds: int) -> dict:
    """name -> clips per CPU second; the methods run interleaved, ``rounds`` times each."""
    cpu = {m: 0.0 for m in methods}
    clips = {m: 0 for m in methods}
    for r in range(rounds):
        for name, fn in methods.items():
            t = CLOCK()
            clips[name] += fn(r)
            cpu[name] += CLOCK() - t
    return {m: clips[m] / cpu[m] for m in methods}


def prepared(paths, cache: str, tag: str, encode) -> list:
    """``paths`` re-encoded by reencode_video (tools/prepare_kinetics.py) as ``encode`` says, cached under ``tag``."""
    out = []
    for p in paths:
        q = os.path.join(cache, f"{os.path.splitext(os.path.basename(p))[0]}_{tag}.mp4")
        if not os.path.exists(q):
            reencode_video(p, q, encode)
        out.append(q)
    return out


def shell(cmd: str) -> str:
    try:
        return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=4, help="generated 10 s clips")
    ap.add_argument("--train-items", type=int, default=24, help="training clips per method, clip set and round")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every method")
    ap.add_argument("--repeats", type=int, default=2, help="30-view items per clip and method")
    ap.add_argument("--feed", type=float, nargs="*", default=[100, 200, 400], help="clips/s to feed (capacity)")
    ap.add_argument("--skip-views", action="store_true", help="leave out the 30-view section")
    ap.add_argument("--default-backend", default=get_cfg().DATA.DECODER,
                    help="the backend the targets and the capacity line use (default: DATA.DECODER's default)")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "gcvideo_bench_decode"),
                    help="where the generated clips are kept")
    ap.add_argument("--out", default="", help="also write the markdown report here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    os.makedirs(args.cache, exist_ok=True)
    originals = [make_kinetics_like(os.path.join(args.cache, f"k_like_{i}.mp4"), i) for i in range(args.clips)]
    demo = [os.path.join(ROOT, "tests", "data", "files", "demo.mp4")]
    lines = []

    def out(s=""):
        print(s, flush=True)
        lines.append(s)

    n, rounds = args.train_items, args.rounds
    load = os.getloadavg()
    out("# Data pipeline throughput (bench/bench_decode.py)\n")
    out(f"Command: `python bench/bench_decode.py {' '.join(argv if argv is not None else sys.argv[1:])}`  ")
    cpu = shell("lscpu | grep 'Model name' | sed 's/.*: *//'") or platform.processor()
    out(f"Machine: {cpu}, "
        f"{os.cpu_count()} cores; load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}; "
        f"one thread (torch.set_num_threads(1), decoder threads 1); PyAV {av.__version__}, torch {torch.__version__}. "
        "Rates are clips per CPU-second of this process (per core).\n")
    defaults = asdict(PREPARE_DEFAULTS)
    out(f"Prepared copies: reencode_video with prepare_kinetics' defaults {defaults} "
        "(short side 320 is never an upscale, so the copies stay 340x256).\n")
    prep = prepared(originals, args.cache, "prepared", PREPARE_DEFAULTS)
    prep_demo = prepared(demo, args.cache, "prepared", PREPARE_DEFAULTS)
    sets = {"originals": originals, "demo.mp4": demo, "prepared originals": prep, "prepared demo.mp4": prep_demo}
    size = {k: sum(os.path.getsize(p) for p in v) for k, v in sets.items()}

    # ---- 1. training clips
    out("## 1. Training clips per second per core (8x8, jitter 256-320, crop 224, flip)\n")
    backends = []
    for b in BACKENDS:
        try:
            with open_video(demo[0], b, 1) as r:
                if r.backend == b:
                    backends.append(b)
        except Exception as e:  # a backend whose library is missing here
            out(f"(backend {b} left out: {type(e).__name__}: {str(e)[:120]})")
    methods = {}
    results = {}
    for set_name, paths in sets.items():
        m = {}
        for b in backends:
            for k in (1, 2):
                ds = gcvideo_items(paths, b, k)
                m[f"gcvideo {b}, K={k}"] = (lambda ds: lambda r: run_gcvideo(ds, n // ds.transform.num_samples, r))(ds)
        ds = gcvideo_items(paths, args.default_backend, 1, uint8=False)
        m[f"gcvideo {ds.decode.decoder}, K=1, float32 items"] = (lambda ds: lambda r: run_gcvideo(ds, n, r))(ds)
        m["pytorchvideo LabeledVideoDataset (PyAV)"] = lambda r, paths=paths: run_pytorchvideo(paths, n, r)
        m["PySlowFast pyav_decode + spatial_sampling"] = lambda r, paths=paths: run_slowfast(paths, n, r)
        results[set_name] = measure(m, rounds)
        methods = list(m)
    out("| method | " + " | ".join(f"{s} ({size[s] / 1e6:.1f} MB)" for s in sets) + " |")
    out("|---|" + "---|" * len(sets))
    for name in methods:
        out(f"| {name} | " + " | ".join(f"{results[s][name]:.1f}" for s in sets) + " |")
    out("\ngcvideo rows: uint8 clips (DATA.TRAIN_UINT8, the default; float conversion and normalisation "
        "run on the device), K clips per decode (DATA.NUM_SAMPLES); the float32 row normalises in the worker "
        "like the two peers. The peers make float32 normalised clips.")
    default = f"gcvideo {args.default_backend}, K=1"
    ptv = "pytorchvideo LabeledVideoDataset (PyAV)"

    # ---- 2. keyframe interval table
    out(f"\n## 2. Keyframe interval of the prepared copies (generated originals, gcvideo {args.default_backend}, "
        "K=1)\n")
    out("| encoder settings | keyframe interval | clips/s per core | x originals' clips/s | bytes | x originals' bytes |")
    out("|---|---|---|---|---|---|")
    variants = {}
    for label, extra in ((f"prepare defaults ({defaults.get('x264_options')})", defaults.get("x264_options")),
                         ("the same without x264_options", None)):
        for g in (1, 8, 16, 32, 250):
            encode = replace(PREPARE_DEFAULTS, gop=g, x264_options=extra or {})
            variants[(label, g)] = prepared(originals, args.cache, f"{'tuned' if extra else 'plain'}_g{g}", encode)
    gmethods = {"originals": lambda r: run_gcvideo(gcvideo_items(originals, args.default_backend, 1), n, r)}
    for key, paths in variants.items():
        gmethods[key] = (lambda paths: lambda r: run_gcvideo(gcvideo_items(paths, args.default_backend, 1), n, r))(paths)
    grates = measure(gmethods, rounds)
    for key, paths in variants.items():
        b = sum(os.path.getsize(p) for p in paths)
        out(f"| {key[0]} | {key[1]} | {grates[key]:.1f} | {grates[key] / grates['originals']:.2f} | "
            f"{b / 1e6:.2f} MB | {b / size['originals']:.2f} |")
    out(f"| originals (x264 medium, 3 B-frames) | 250 | {grates['originals']:.1f} | 1.00 | "
        f"{size['originals'] / 1e6:.2f} MB | 1.00 |")

    # ---- 3. 30-view items
    res = {}
    if not args.skip_views:
        out("\n## 3. 30-view test item (10 clips x 3 crops of 256, 8x8) per video\n")
        out("CPU ms per video (median).\n")
        out("| method | opens | ms / video (generated) | ms / video (demo.mp4) |")
        out("|---|---|---|---|")
        vb = args.default_backend
        for name, fn in ((f"decode-once, {vb}", lambda p: decode_once_item(p, vb)),
                         ("per view, PySlowFast style (PyAV)", per_view_item),
                         ("per view, lean (PyAV, 8 frames converted)", lambda p: per_view_item(p, lean=True))):
            t_gen, t_demo = [], []
            for _ in range(args.repeats):
                for p in originals:
                    t = CLOCK()
                    fn(p)
                    t_gen.append(CLOCK() - t)
                t = CLOCK()
                fn(demo[0])
                t_demo.append(CLOCK() - t)
            res[name] = (statistics.median(t_gen), statistics.median(t_demo))
            out(f"| {name} | {30 if 'per view' in name else 1} | {1000 * res[name][0]:.0f} | "
                f"{1000 * res[name][1]:.0f} |")

    # ---- 4. capacity and targets
    best = results["prepared originals"][default]
    orig = results["originals"][default]
    out("\n## 4. Capacity (this machine, one core per DataLoader worker)\n")
    out(f"gcvideo default ({default}): {orig:.1f} clips/s per core on the originals, {best:.1f} on the prepared "
        f"copies, {results['prepared originals'][default.replace('K=1', 'K=2')]:.1f} with K=2 on the prepared copies.")
    for feed in args.feed:
        out(f"* {feed:.0f} clips/s need {math.ceil(feed / orig)} cores on the originals, {math.ceil(feed / best)} on "
            f"the prepared copies, {math.ceil(feed / results['prepared originals'][default.replace('K=1', 'K=2')])} "
            "with K=2 on the prepared copies.")
    out("\n## Targets\n")
    k2 = results["originals"][default.replace("K=1", "K=2")] / orig
    out(f"* default backend vs pytorchvideo per core on the originals: **{orig / results['originals'][ptv]:.2f}x** "
        f"(target 3x); on demo.mp4 {results['demo.mp4'][default] / results['demo.mp4'][ptv]:.2f}x")
    out(f"* K=2 vs K=1 clips/s (originals): **{k2:.2f}x** (target 1.8x)")
    out(f"* prepared copies vs originals: **{best / orig:.2f}x** the clips/s at "
        f"**{size['prepared originals'] / size['originals']:.2f}x** the bytes (target 2.5x at <= 2x); demo.mp4: "
        f"{results['prepared demo.mp4'][default] / results['demo.mp4'][default]:.2f}x at "
        f"{size['prepared demo.mp4'] / size['demo.mp4']:.2f}x")
    if res:
        once, sf = res[f"decode-once, {vb}"], res["per view, PySlowFast style (PyAV)"]
        out(f"* 30-view item vs per-view decoding: **{sf[0] / once[0]:.1f}x** (generated), {sf[1] / once[1]:.1f}x "
            "(demo.mp4) (target 5x)")
    load = os.getloadavg()
    out(f"\nLoad average at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}.")
    if args.out:
        atomic_write_text(args.out, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
