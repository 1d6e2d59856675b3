"""The toy motion dataset: files, determinism, motions that match the classes and label pairs."""
import hashlib
import json
import os

import numpy as np
import pytest

from gcvideo.config import load_cfg
from gcvideo.data import decode_frames
from gcvideo.data.annotations import load_annotations
from gcvideo.data.toy import (FLIP_PAIRS, FPS, REVERSE_PAIRS, TOY_CLASSES, _motion, make_toy_dataset,
                             render_video, video_label, video_rng, write_video)

TOY_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "configs", "toy", "slow_gc_toy.yaml")


def digest(folder):
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for f in sorted(files):
            if f.endswith(".mp4") or f.endswith(".csv"):
                h.update(f.encode())
                h.update(open(os.path.join(root, f), "rb").read())
    return h.hexdigest()


def test_files_and_labels(tiny_toy):
    assert open(os.path.join(tiny_toy, "classes.txt")).read().split() == TOY_CLASSES
    recs = load_annotations(os.path.join(tiny_toy, "train.csv"), num_classes=8)
    assert len(recs) == 16 and [r.label for r in recs] == [i % 8 for i in range(16)]
    assert len(load_annotations(os.path.join(tiny_toy, "val.csv"), num_classes=8)) == 8
    frames = decode_frames(recs[0].path, [0, 23])
    assert frames.shape == (2, 48, 48, 3)
    pairs = json.load(open(os.path.join(tiny_toy, "label_pairs.json")))
    assert pairs == {"FLIP_LABEL_PAIRS": FLIP_PAIRS, "REVERSE_LABEL_PAIRS": REVERSE_PAIRS}
    cfg = load_cfg(os.path.join(tiny_toy, "toy_config.yaml"))  # a valid override file
    assert cfg.MODEL.NUM_CLASSES == 8 and cfg.DATA.PATH_TO_DATA_DIR == tiny_toy
    assert cfg.DATA.FLIP_LABEL_PAIRS == FLIP_PAIRS and cfg.DATA.REVERSE_PROB == 0.5


def test_video_label_and_rng_make_the_files_of_the_set(tmp_path, tiny_toy):
    # what bench/toy_rotation_errors.py relies on: video i of a split is render_video(video_rng(...), video_label(i))
    recs = load_annotations(os.path.join(tiny_toy, "val.csv"), num_classes=8)
    assert [r.label for r in recs] == [video_label(i) for i in range(8)]
    for i in (4, 5):  # the rotating classes
        out = str(tmp_path / f"{i}.mp4")
        write_video(out, render_video(video_rng(3, "val", i), video_label(i), 24, 48))  # tiny_toy: seed 3
        assert open(out, "rb").read() == open(recs[i].path, "rb").read()


def test_label_pairs_are_the_motion_symmetries():
    name = {i: n for i, n in enumerate(TOY_CLASSES)}
    flip = {name[a]: name[b] for a, b in FLIP_PAIRS}
    assert flip == {"moving_left": "moving_right", "moving_right": "moving_left",
                    "rotating_cw": "rotating_ccw", "rotating_ccw": "rotating_cw"}
    rev = {name[a]: name[b] for a, b in REVERSE_PAIRS}
    assert rev["moving_up"] == "moving_down" and rev["growing"] == "shrinking" and len(rev) == 8


def test_deterministic_for_a_seed(tmp_path, tiny_toy):
    a = str(tmp_path / "a")
    make_toy_dataset(a, seed=3, num_train=16, num_val=8, size=48, num_frames=24, workers=2)
    assert digest(a) == digest(tiny_toy)  # same seed, other worker count: same bytes
    b = str(tmp_path / "b")
    make_toy_dataset(b, seed=4, num_train=16, num_val=8, size=48, num_frames=24, workers=1)
    assert digest(b) != digest(tiny_toy)
    # same parameters again: nothing rewritten
    before = os.path.getmtime(os.path.join(a, "videos", "train", "000000.mp4"))
    make_toy_dataset(a, seed=3, num_train=16, num_val=8, size=48, num_frames=24, workers=1)
    assert os.path.getmtime(os.path.join(a, "videos", "train", "000000.mp4")) == before


@pytest.mark.parametrize("size", [128, 96])
@pytest.mark.parametrize("label", range(8))
def test_motion_visible_within_an_8x8_window(label, size):
    """Within 64 frames (8x8 at 30 fps) at 128 px: >= 30 px travel, >= 150 degrees, >= 1.8x size;
    distances scale with the frame size (96 px, the default: >= 22.5 px)."""
    k = size / 128
    for seed in range(20):
        cx, cy, ang, rad = _motion(np.random.default_rng([seed, label]), label, 72, size)
        dx, dy = cx[63] - cx[0], cy[63] - cy[0]
        turn = np.degrees(ang[63] - ang[0])
        grow = rad[63] / rad[0]
        if label == 0:
            assert dx <= -30 * k and abs(dy) < 10 * k
        elif label == 1:
            assert dx >= 30 * k and abs(dy) < 10 * k
        elif label == 2:
            assert dy <= -30 * k and abs(dx) < 10 * k
        elif label == 3:
            assert dy >= 30 * k and abs(dx) < 10 * k
        elif label == 4:
            assert turn >= 150
        elif label == 5:
            assert turn <= -150
        elif label == 6:
            assert grow >= 1.7
        else:
            assert grow <= 1 / 1.7
        if label >= 4:
            assert abs(dx) < 10 * k and abs(dy) < 10 * k
        # the object stays inside the frame
        assert (cx - 0.8 * rad).min() > -2 and (cx + 0.8 * rad).max() < size + 2
        assert (cy - 0.8 * rad).min() > -2 and (cy + 0.8 * rad).max() < size + 2


def test_the_toy_configs_clips_see_the_motion():
    """A clip of configs/toy/slow_gc_toy.yaml spans (NUM_FRAMES - 1) x SAMPLING_RATE frames from its
    first to its last frame (40 with 6x8 clips): from any start frame, a translation covers >= 20 px
    (at 128 px), a rotation >= 100 degrees and a size change >= 1.45x within them (50 seeds a class;
    with 4x8 clips it would be 10 px and 50 degrees)."""
    cfg = load_cfg(TOY_CONFIG, check_files=False)
    n = (cfg.DATA.NUM_FRAMES - 1) * cfg.DATA.SAMPLING_RATE * FPS // cfg.DATA.TARGET_FPS
    for label in range(8):
        for seed in range(50):
            cx, cy, ang, rad = _motion(np.random.default_rng([seed, label]), label, 72, 128)
            for t0 in range(72 - n):
                if label < 2:
                    assert abs(cx[t0 + n] - cx[t0]) >= 20
                elif label < 4:
                    assert abs(cy[t0 + n] - cy[t0]) >= 20
                elif label < 6:
                    assert abs(np.degrees(ang[t0 + n] - ang[t0])) >= 100
                else:
                    grow = rad[t0 + n] / rad[t0]
                    assert max(grow, 1 / grow) >= 1.45


def test_rendered_object_moves():
    """Moving right: the changed pixels' centre moves right over the video."""
    frames = render_video(np.random.default_rng(1), 1, 64, 96).astype(np.float32)
    first, last = frames[:8].mean(0), frames[-8:].mean(0)
    bg = np.median(frames, axis=0)
    cols = np.arange(96)
    c0 = (np.abs(first - bg).sum((0, 2)) * cols).sum() / np.abs(first - bg).sum()
    c1 = (np.abs(last - bg).sum((0, 2)) * cols).sum() / np.abs(last - bg).sum()
    assert c1 - c0 > 15


@pytest.mark.parametrize("offset", [8, 16, 24])
def test_written_bytes_do_not_depend_on_array_alignment(tmp_path, offset):
    """The same frames at another address give the same file (swscale's SIMD paths round differently)."""
    video = render_video(np.random.default_rng([3, 2, 1]), 1, 12, 48)  # (T, H, W, 3)
    buf = np.empty(video.nbytes + 128, np.uint8)
    start = (-buf.ctypes.data) % 64
    aligned = buf[start:start + video.nbytes].reshape(video.shape)
    aligned[:] = video
    write_video(str(tmp_path / "a.mp4"), aligned)
    shifted = buf[start + offset:start + offset + video.nbytes].reshape(video.shape)
    shifted[:] = video
    write_video(str(tmp_path / "b.mp4"), shifted)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def _render_clip_at_once(rng, label, num_frames, size):
    """The generator's rendering as first written (whole-clip float buffer, np.where colours, noise
    after all objects): the bytes of every toy set made so far. ``render_video`` must match it."""
    import math

    from gcvideo.data.toy import _background, _colour, _pattern, _shape_alpha

    bg = _background(rng, size)
    shape = ["square", "triangle", "ell", "plus", "disc"][int(rng.integers(5))]
    tex = ["stripes", "checks", "rings"][int(rng.integers(3))]
    tex_freq, tex_angle = float(rng.uniform(5, 10)), float(rng.uniform(0, math.pi))
    col_a, col_b = _colour(rng), _colour(rng)
    bg_mean = bg.mean((0, 1))
    if np.abs(col_a - bg_mean).mean() < 70:
        col_a = np.where(bg_mean > 127, col_a * 0.3, 255 - (255 - col_a) * 0.3).astype(np.float32)
    col_b = (col_a * 0.55 + col_b * 0.45).astype(np.float32)
    noise_sigma = float(rng.uniform(0, 5))
    cx, cy, ang, rad = _motion(rng, label, num_frames, size)
    video = np.empty((num_frames, size, size, 3), dtype=np.float32)
    video[:] = bg
    for i in range(num_frames):
        half = 1.45 * rad[i] + 2
        y0, y1 = max(int(cy[i] - half), 0), min(int(cy[i] + half) + 1, size)
        x0, x1 = max(int(cx[i] - half), 0), min(int(cx[i] + half) + 1, size)
        if y1 <= y0 or x1 <= x0:
            continue
        inv = 1.0 / float(rad[i])
        x = ((np.arange(x0, x1, dtype=np.float32) + 0.5 - cx[i]) * inv)[None, :]
        y = ((np.arange(y0, y1, dtype=np.float32) + 0.5 - cy[i]) * inv)[:, None]
        c, s = math.cos(ang[i]), math.sin(ang[i])
        u, v = c * x + s * y, -s * x + c * y
        alpha = _shape_alpha(shape, u, v, 1.0 / rad[i])[..., None]
        obj = np.where(_pattern(tex, u, v, tex_freq, tex_angle)[..., None], col_a, col_b)
        box = video[i, y0:y1, x0:x1]
        obj -= box
        obj *= alpha
        box += obj
    if noise_sigma > 0:
        field = rng.standard_normal((2 * size, 2 * size, 3), dtype=np.float32) * np.float32(noise_sigma)
        offsets = rng.integers(0, size, (num_frames, 2))
        for i in range(num_frames):
            a, b = int(offsets[i, 0]), int(offsets[i, 1])
            video[i] += field[a:a + size, b:b + size]
    np.add(video, 0.5, out=video)
    np.clip(video, 0, 255, out=video)
    return video.astype(np.uint8)


@pytest.mark.parametrize("label", range(8))
def test_frame_at_a_time_rendering_gives_the_same_frames(label):
    for index in (label, label + 8):  # objects partly outside the frame included (growing, at 48 px)
        a = render_video(np.random.default_rng([5, 1, index]), label, 30, 48)
        b = _render_clip_at_once(np.random.default_rng([5, 1, index]), label, 30, 48)
        assert a.dtype == np.uint8 and np.array_equal(a, b)


def test_one_reformatter_per_video_gives_the_bytes_of_one_per_frame(tmp_path):
    """write_video keeps one swscale context for all frames; the file equals the per-frame conversion's."""
    import av

    frames = render_video(np.random.default_rng([3, 2, 7]), 4, 16, 48)
    write_video(str(tmp_path / "a.mp4"), frames)
    with av.open(str(tmp_path / "b.mp4"), "w", format="mp4") as container:  # the first writer's loop
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 48, 48, "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "26", "preset": "veryfast", "threads": "1", "x264-params": "mbtree=0"}
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format="yuv420p")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()


def test_flipped_and_reversed_training_items_carry_the_label_of_what_they_show(tmp_path):
    """The toy config's label-mapping augmentations, end to end through the dataset: for the
    translation classes the object's measured motion in each training item (after its random flip
    and time reversal) is the direction its label names; a dataset that kept the label would be
    right about half the time."""
    import torch

    from gcvideo.data import build_dataset

    data = str(tmp_path / "toy")
    make_toy_dataset(data, seed=1, num_train=16, num_val=0, size=96, num_frames=40, workers=1)
    cfg = load_cfg(TOY_CONFIG, ["DATA.PATH_TO_DATA_DIR", data, "DATA.LABEL_MAP", os.path.join(data, "classes.txt"),
                                "DATA.TRAIN_JITTER_SCALES", "[96, 96]", "DATA.TRAIN_CROP_SIZE", "96",
                                "DATA.DECODER", "pyav"])
    ds = build_dataset(cfg, "train")
    k = cfg.DATA.NUM_SAMPLES  # clips per item (2 in the toy config: a clip and its time reversal)
    right, mapped, clips = 0, 0, 0
    items = [(epoch, i) for epoch in range(4) for i in range(16) if video_label(i) < 4]  # moving_left/right/up/down
    for epoch, i in items:
        ds.set_epoch(epoch)
        item = ds[i]
        videos = item["video"].view(k, *item["video"].shape[-4:])  # (K, 3, T, H, W) uint8
        labels = item["label"].view(k).tolist() if k > 1 else [item["label"]]
        for video, label in zip(videos, labels):
            g = video.float().mean(0)  # (T, H, W)
            d = (g - g.median(0).values).abs()  # the moving object against the still background
            grid = torch.arange(g.shape[-1], dtype=torch.float32)
            cx = (d.sum(1) * grid).sum(1) / d.sum((1, 2))  # (T,) centroid x
            cy = (d.sum(2) * grid).sum(1) / d.sum((1, 2))
            dx, dy = float(cx[-1] - cx[0]), float(cy[-1] - cy[0])
            shown = (1 if dx > 0 else 0) if abs(dx) > abs(dy) else (3 if dy > 0 else 2)
            right += shown == label
            mapped += label != ds.records[i].label
            clips += 1
    assert clips == k * len(items)
    assert mapped >= clips // 4  # flips and reversals did change labels
    assert right >= 0.9 * clips, f"{right} of {clips} clips show their label's motion"
