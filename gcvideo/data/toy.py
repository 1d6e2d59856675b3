"""The toy motion dataset: small real h264 videos whose class is only visible over time.

Each video shows one textured object (square, triangle, L, plus or notched disc;
stripes, checks or rings in shades of a random colour that stands out from the
background) on a random, low-contrast textured background (smooth colour noise,
stripes or checks, plus pixel noise). The class is the object's motion:

    0 moving_left   1 moving_right   2 moving_up         3 moving_down
    4 rotating_cw   5 rotating_ccw   6 growing           7 shrinking

Size, position, speed, start angle, colours and textures are random, and
every object also drifts slowly (well below the slowest translation), so no
single frame tells the class. A horizontal flip swaps left/right and cw/ccw; a
time reversal swaps left/right, up/down, cw/ccw and growing/shrinking
(``FLIP_PAIRS`` / ``REVERSE_PAIRS``); training with those label-mapping
augmentations keeps a model from memorising backgrounds.

Videos declare 30 fps, so with DATA.TARGET_FPS 30 an 8x8 clip spans 64
consecutive frames; speeds are chosen so that an object moves 30-70 px (at
128 px; sizes and speeds scale with the frame size, 96 px by default), turns 160-320
degrees, or changes size by 1.8-2.6x within any 64 frames.

``make_toy_dataset(out_dir, ...)`` writes ``videos/{train,val}/NNNNNN.mp4``,
``train.csv`` / ``val.csv`` (PySlowFast ``path label``, paths relative to
``out_dir``), ``classes.txt`` (label map), ``label_pairs.json`` and
``toy_config.yaml`` (a config override with the label map and label pairs), and
``meta.json``. It is deterministic for a seed (same bytes on the same PyAV/x264)
and uses a process pool (encoding in one thread per process).
"""
from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional, Tuple

import numpy as np

from gcvideo.utils.errors import UsageError
from gcvideo.utils.io import atomic_write_text
from gcvideo.utils.parallel import parallel_imap

__all__ = ["TOY_CLASSES", "FLIP_PAIRS", "REVERSE_PAIRS", "make_toy_dataset", "render_video", "write_video",
           "video_label", "video_rng", "FPS"]

TOY_CLASSES = ["moving_left", "moving_right", "moving_up", "moving_down", "rotating_cw", "rotating_ccw",
               "growing", "shrinking"]
# Directed [from, to] label pairs (both directions listed).
FLIP_PAIRS = [[0, 1], [1, 0], [4, 5], [5, 4]]
REVERSE_PAIRS = [[0, 1], [1, 0], [2, 3], [3, 2], [4, 5], [5, 4], [6, 7], [7, 6]]
FPS = 30
_SPLIT_IDS = {"train": 1, "val": 2}
_FORMAT_VERSION = 3  # 2: low-contrast backgrounds, larger objects that stand out; 3: 96 px (was 128)
TOY_FORMAT_VERSION = _FORMAT_VERSION  # public: run_toy regenerates sets of an older version


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------
def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size, 3) float colour noise, bilinearly upsampled from a cells x cells grid."""
    grid = rng.uniform(0, 255, (cells + 1, cells + 1, 3)).astype(np.float32)
    t = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(t.astype(int), cells - 1)
    f = (t - i)[:, None]
    rows = grid[i] * (1 - f[..., None]) + grid[i + 1] * f[..., None]  # (size, cells+1, 3)
    cols = rows[:, i] * (1 - f.T[..., None]) + rows[:, i + 1] * f.T[..., None]  # (size, size, 3)
    return cols


def _pattern(kind: str, u: np.ndarray, v: np.ndarray, freq: float, angle: float) -> np.ndarray:
    """Two-tone pattern (bool) on coordinates (u, v)."""
    c, s = math.cos(angle), math.sin(angle)
    a = c * u + s * v
    b = -s * u + c * v
    if kind == "stripes":
        return np.sin(a * freq) > 0
    if kind == "checks":
        return (np.floor(a * freq / math.pi) + np.floor(b * freq / math.pi)) % 2 == 0
    return np.sin(np.sqrt(a * a + (b + 0.35) ** 2) * freq) > 0  # off-centre rings


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 textured background."""
    base = _smooth_noise(rng, size, int(rng.integers(2, 6)))
    kind = ["noise", "stripes", "checks"][int(rng.integers(3))]
    if kind != "noise":
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        mask = _pattern(kind, xx, yy, float(rng.uniform(12, 40)), float(rng.uniform(0, math.pi)))
        other = _colour(rng)
        mix = float(rng.uniform(0.15, 0.35))
        base = np.where(mask[..., None], base, base * (1 - mix) + other * mix)
    mean = base.mean((0, 1), keepdims=True)
    base = mean + (base - mean) * float(rng.uniform(0.35, 0.6))  # low-contrast background
    return base.astype(np.float32)


def _shape_alpha(kind: str, u: np.ndarray, v: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased coverage of a unit shape; ``px`` = object units per pixel."""
    if kind == "square":
        d = np.maximum(np.abs(u), np.abs(v)) - 0.8
    elif kind == "triangle":  # pointing up (v < 0 is up)
        d = np.maximum(np.maximum(v - 0.7, -0.866 * u + 0.5 * v - 0.35), 0.866 * u + 0.5 * v - 0.35)
        d = np.maximum(d, -v - 1.0)
    elif kind == "ell":
        bar1 = np.maximum(np.abs(u + 0.55) - 0.3, np.abs(v) - 0.9)
        bar2 = np.maximum(np.abs(u) - 0.85, np.abs(v - 0.6) - 0.3)
        d = np.minimum(bar1, bar2)
    elif kind == "plus":  # unequal arms, so a quarter turn is visible
        bar1 = np.maximum(np.abs(u) - 0.25, np.abs(v + 0.15) - 0.95)
        bar2 = np.maximum(np.abs(u - 0.15) - 0.8, np.abs(v) - 0.25)
        d = np.minimum(bar1, bar2)
    else:  # notched disc
        d = np.maximum(np.sqrt(u * u + v * v) - 0.9, -np.maximum(np.abs(u - 0.6) - 0.35, np.abs(v) - 0.2))
    return np.clip(0.5 - d / px, 0.0, 1.0)


def _motion(rng: np.random.Generator, label: int, num_frames: int, size: int):
    """Per-frame centre (x, y), angle (rad) and radius (px)."""
    s = size / 128.0
    t = np.arange(num_frames, dtype=np.float32)
    drift_dir = rng.uniform(0, 2 * math.pi)
    drift = rng.uniform(0, 0.12) * s
    dx, dy = drift * math.cos(drift_dir), drift * math.sin(drift_dir)
    angle0 = rng.uniform(0, 2 * math.pi)
    if label in (6, 7):  # growing / shrinking
        ratio = rng.uniform(1.8, 2.6) ** (num_frames / 64.0)
        r_small = rng.uniform(11, 16) * s
        r_big = r_small * ratio
        g = np.exp(np.linspace(0, math.log(ratio), num_frames, dtype=np.float32))
        r = r_small * g if label == 6 else r_big / g
        margin = r_big + abs(dx) * num_frames + 2
        cx0 = rng.uniform(min(margin, size / 2), max(size - margin, size / 2))
        cy0 = rng.uniform(min(margin, size / 2), max(size - margin, size / 2))
        return cx0 + dx * t, cy0 + dy * t, np.full_like(t, angle0), r
    radius = rng.uniform(15, 24) * s
    r = np.full_like(t, radius)
    if label in (4, 5):  # rotating (clockwise on screen = increasing angle, y points down)
        omega = math.radians(rng.uniform(2.5, 5.0)) * (1 if label == 4 else -1)
        margin = radius + 0.12 * s * num_frames + 2
        cx0 = rng.uniform(margin, size - margin)
        cy0 = rng.uniform(margin, size - margin)
        return cx0 + dx * t, cy0 + dy * t, angle0 + omega * t, r
    speed = rng.uniform(0.5, 1.1) * s
    travel = speed * (num_frames - 1)
    along0 = rng.uniform(radius + 1, max(size - radius - 1 - travel, radius + 1))
    across = rng.uniform(radius + 2, size - radius - 2)
    wobble = rng.uniform(-0.08, 0.08) * s * t
    along = along0 + speed * t
    if label in (0, 2):  # left / up: run the other way
        along = size - along
    if label in (0, 1):
        return along, across + wobble, np.full_like(t, angle0), r
    return across + wobble, along, np.full_like(t, angle0), r


def render_video(rng: np.random.Generator, label: int, num_frames: int, size: int) -> np.ndarray:
    """uint8 frames ``(num_frames, size, size, 3)`` of one toy video of class ``label``."""
    bg = _background(rng, size)
    shape = ["square", "triangle", "ell", "plus", "disc"][int(rng.integers(5))]
    tex = ["stripes", "checks", "rings"][int(rng.integers(3))]
    tex_freq = float(rng.uniform(5, 10))
    tex_angle = float(rng.uniform(0, math.pi))
    col_a, col_b = _colour(rng), _colour(rng)
    bg_mean = bg.mean((0, 1))
    if np.abs(col_a - bg_mean).mean() < 70:  # keep the object visible against the background
        col_a = np.where(bg_mean > 127, col_a * 0.3, 255 - (255 - col_a) * 0.3).astype(np.float32)
    col_b = (col_a * 0.55 + col_b * 0.45).astype(np.float32)  # texture of the object's own colour family
    noise_sigma = float(rng.uniform(0, 5))
    cx, cy, ang, rad = _motion(rng, label, num_frames, size)
    field = offsets = None
    if noise_sigma > 0:  # fresh-looking noise per frame: a random window of a larger noise field
        field = rng.standard_normal((2 * size, 2 * size, 3), dtype=np.float32) * np.float32(noise_sigma)
        offsets = rng.integers(0, size, (num_frames, 2))
    tones = np.stack([col_b, col_a])  # (2, 3): the texture's two colours, indexed by the pattern
    out = np.empty((num_frames, size, size, 3), dtype=np.uint8)  # (T, H, W, 3)
    frame = np.empty((size, size, 3), dtype=np.float32)  # (H, W, 3), one frame at a time (stays in cache)
    for i in range(num_frames):
        frame[:] = bg
        # the object, alpha-blended over its bounding box (only the box is rendered)
        half = 1.45 * rad[i] + 2
        y0, y1 = max(int(cy[i] - half), 0), min(int(cy[i] + half) + 1, size)
        x0, x1 = max(int(cx[i] - half), 0), min(int(cx[i] + half) + 1, size)
        if y1 > y0 and x1 > x0:
            inv = 1.0 / float(rad[i])
            x = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx[i]) * inv)[None, :]  # (1, w)
            y = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy[i]) * inv)[:, None]  # (h, 1)
            c, s = math.cos(ang[i]), math.sin(ang[i])
            u = c * x + s * y
            v = -s * x + c * y
            alpha = _shape_alpha(shape, u, v, 1.0 / rad[i])[..., None]  # (h, w, 1)
            obj = tones[_pattern(tex, u, v, tex_freq, tex_angle).view(np.uint8)]  # (h, w, 3): col_a or col_b
            box = frame[y0:y1, x0:x1]
            obj -= box
            obj *= alpha
            box += obj
        # pixel noise, then round to uint8
        if field is not None:
            a, b = int(offsets[i, 0]), int(offsets[i, 1])
            frame += field[a:a + size, b:b + size]
        np.add(frame, 0.5, out=frame)
        np.clip(frame, 0, 255, out=frame)
        out[i] = frame.astype(np.uint8)
    return out


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------
def write_video(path: str, frames: np.ndarray, fps: int = FPS, crf: int = 26, preset: str = "veryfast") -> None:
    """Write uint8 ``(T, H, W, 3)`` frames as h264 mp4 (one encoder thread), via temp file + rename."""
    import av
    from av.video.reformatter import VideoReformatter

    tmp = f"{path}.tmp-{os.getpid()}.mp4"
    try:
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.thread_count = 1
            # mbtree off: with it, single-threaded libx264 now and then encodes the same pixels
            # to different bytes from one run to the next (measured: ~1 video in 100 at 48 px)
            stream.options = {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": "mbtree=0"}
            # one reformatter for all frames: it keeps its swscale context (a new one per frame
            # cost three times the encoding itself)
            to_yuv = VideoReformatter()
            for i, img in enumerate(frames):
                # from_ndarray copies into an aligned frame buffer; converting to yuv420p here
                # rather than in the encoder keeps the bytes independent of where numpy put
                # ``frames`` (swscale picks SIMD paths by alignment: different rounding)
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
                frame = to_yuv.reformat(frame, format="yuv420p")
                frame.pts = i
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def video_label(index: int) -> int:
    """The class of video ``index`` of either split: the classes take turns, so they are balanced."""
    return index % len(TOY_CLASSES)


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator ``render_video`` draws video ``index`` of ``split`` ("train"/"val") from."""
    return np.random.default_rng([seed, _SPLIT_IDS[split], index])


def _job(args: Tuple[str, int, str, int, int, int, int]) -> Tuple[str, int]:
    path, seed, split, index, label, num_frames, size = args
    write_video(path, render_video(video_rng(seed, split, index), label, num_frames, size))
    return path, os.path.getsize(path)


def make_toy_dataset(out_dir: str, seed: int = 0, num_train: int = 600, num_val: int = 200, size: int = 96,
                     num_frames: int = 72, workers: Optional[int] = None, progress: bool = False) -> Dict:
    """Write the toy dataset to ``out_dir`` (see module docstring); returns its ``meta.json`` content.

    Classes are balanced (``video_label``: video i has class i % 8). If ``out_dir/meta.json`` already
    describes the same parameters, nothing is written again.
    """
    if size < 32 or num_frames < 8 or num_train < 1 or num_val < 0:
        raise UsageError(f"toy dataset: size={size} (>= 32), num_frames={num_frames} (>= 8), "
                         f"num_train={num_train} (>= 1), num_val={num_val} (>= 0)")
    out_dir = os.path.abspath(out_dir)
    params = {"version": _FORMAT_VERSION, "seed": int(seed), "num_train": int(num_train), "num_val": int(num_val),
              "size": int(size), "num_frames": int(num_frames), "fps": FPS, "classes": TOY_CLASSES}
    meta_path = os.path.join(out_dir, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            old = json.load(f)
        if all(old.get(k) == v for k, v in params.items()):
            return old
    jobs: List[Tuple] = []
    lines: Dict[str, List[str]] = {"train": [], "val": []}
    for split, count in (("train", num_train), ("val", num_val)):
        os.makedirs(os.path.join(out_dir, "videos", split), exist_ok=True)
        for i in range(count):
            label = video_label(i)
            rel = f"videos/{split}/{i:06d}.mp4"
            jobs.append((os.path.join(out_dir, rel), int(seed), split, i, label, num_frames, size))
            lines[split].append(f"{rel} {label}\n")
    workers = workers or min(len(jobs), os.cpu_count() or 1)
    total = 0
    for _, nbytes in parallel_imap(_job, jobs, workers, "toy videos", "video", progress, chunksize=4):
        total += nbytes
    atomic_write_text(os.path.join(out_dir, "train.csv"), "".join(lines["train"]))
    atomic_write_text(os.path.join(out_dir, "val.csv"), "".join(lines["val"]))
    atomic_write_text(os.path.join(out_dir, "classes.txt"), "".join(c + "\n" for c in TOY_CLASSES))
    pairs = {"FLIP_LABEL_PAIRS": FLIP_PAIRS, "REVERSE_LABEL_PAIRS": REVERSE_PAIRS}
    atomic_write_text(os.path.join(out_dir, "label_pairs.json"), json.dumps(pairs, indent=1) + "\n")
    atomic_write_text(os.path.join(out_dir, "toy_config.yaml"), toy_config_yaml(out_dir))
    meta = dict(params, bytes=total, files=len(jobs))
    atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    return meta


def toy_config_yaml(out_dir: str) -> str:
    """A config override (flat YAML) pointing at the toy set, with its label map and label pairs."""
    return (
        "# Data part of a config for the toy motion dataset (written by gcvideo.data.toy).\n"
        "MODEL:\n"
        f"  NUM_CLASSES: {len(TOY_CLASSES)}\n"
        "DATA:\n"
        f"  PATH_TO_DATA_DIR: {json.dumps(out_dir)}\n"
        f"  LABEL_MAP: {json.dumps(os.path.join(out_dir, 'classes.txt'))}\n"
        "  TEST_FILE: val.csv\n"
        "  TARGET_FPS: 30\n"
        "  RANDOM_FLIP: true\n"
        f"  FLIP_LABEL_PAIRS: {json.dumps(FLIP_PAIRS)}\n"
        "  REVERSE_PROB: 0.5\n"
        f"  REVERSE_LABEL_PAIRS: {json.dumps(REVERSE_PAIRS)}\n"
    )
