"""The toy motion dataset: files, determinism, motions that match the classes and label pairs."""
import hashlib
import json
import os

import numpy as np
import pytest

from gcvideo.config import load_cfg
from gcvideo.data import decode_frames
from gcvideo.data.annotations import load_annotations
from gcvideo.data.toy import (FLIP_PAIRS, REVERSE_PAIRS, TOY_CLASSES, _motion, make_toy_dataset, render_video,
                             write_video)


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


@pytest.mark.parametrize("label", range(8))
def test_motion_visible_within_an_8x8_window(label):
    """Within 64 frames (8x8 at 30 fps) at 128 px: >= 30 px travel, >= 150 degrees, >= 1.8x size."""
    for seed in range(20):
        cx, cy, ang, rad = _motion(np.random.default_rng([seed, label]), label, 72, 128)
        dx, dy = cx[63] - cx[0], cy[63] - cy[0]
        turn = np.degrees(ang[63] - ang[0])
        grow = rad[63] / rad[0]
        if label == 0:
            assert dx <= -30 and abs(dy) < 10
        elif label == 1:
            assert dx >= 30 and abs(dy) < 10
        elif label == 2:
            assert dy <= -30 and abs(dx) < 10
        elif label == 3:
            assert dy >= 30 and abs(dx) < 10
        elif label == 4:
            assert turn >= 150
        elif label == 5:
            assert turn <= -150
        elif label == 6:
            assert grow >= 1.7
        else:
            assert grow <= 1 / 1.7
        if label >= 4:
            assert abs(dx) < 10 and abs(dy) < 10
        # the object stays inside the frame
        assert (cx - 0.8 * rad).min() > -2 and (cx + 0.8 * rad).max() < 130
        assert (cy - 0.8 * rad).min() > -2 and (cy + 0.8 * rad).max() < 130


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
