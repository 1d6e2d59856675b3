"""Frame indices of training and test clips, hand-computed (docs/data.md formulas), at 25 and 30 fps."""
import math

import numpy as np
import pytest

from gcvideo.data.sampling import (clip_indices, last_start, sample_step, view_clip_indices, view_clip_starts,
                                   train_clip_indices)

# 8x8 at TARGET_FPS 30
T, R, F = 8, 8, 30


def test_step_and_window():
    assert sample_step(30, R, F) == 8.0
    assert sample_step(25, R, F) == pytest.approx(20 / 3)
    assert sample_step(float("nan"), R, F) == 8.0  # unknown fps counts as TARGET_FPS
    assert last_start(300, T, 8.0) == 236  # 300 - 64
    assert last_start(250, T, 20 / 3) == 196  # floor(250 - 53.33)
    assert last_start(32, T, 8.0) == 0


def test_clip_indices_30fps():
    assert clip_indices(0, T, 8.0, 300) == [0, 8, 16, 24, 32, 40, 48, 56]
    assert clip_indices(236, T, 8.0, 300) == [236, 244, 252, 260, 268, 276, 284, 292]


def test_clip_indices_25fps():
    # floor(k * 20/3): 0, 6.67, 13.33, 20, 26.67, 33.33, 40, 46.67 (20 and 40 exactly, not 19/39)
    assert clip_indices(0, T, 20 / 3, 250) == [0, 6, 13, 20, 26, 33, 40, 46]
    assert clip_indices(196, T, 20 / 3, 250) == [196, 202, 209, 216, 222, 229, 236, 242]


def test_same_seconds_at_25_and_30_fps():
    for fps, n in ((25, 250), (30, 300)):
        idx = clip_indices(0, T, sample_step(fps, R, F), n)
        seconds = (idx[-1] - idx[0]) / fps
        assert abs(seconds - 56 / 30) < 1 / fps  # 7 steps of 8 frames at 30 fps = 1.867 s


def test_short_video_repeats_last_frame():
    # part_0.mp4-like: 32 frames at 30 fps, window 64
    assert clip_indices(0, T, 8.0, 32) == [0, 8, 16, 24, 31, 31, 31, 31]
    rng = np.random.default_rng(0)
    assert train_clip_indices(32, 30.0, T, R, F, rng) == [0, 8, 16, 24, 31, 31, 31, 31]
    assert view_clip_indices(32, 30.0, T, R, F, 3) == [[0, 8, 16, 24, 31, 31, 31, 31]] * 3


def test_train_start_is_uniform_integer_in_range():
    rng = np.random.default_rng(5)
    expected_start = int(np.random.default_rng(5).integers(0, 237))
    idx = train_clip_indices(300, 30.0, T, R, F, rng)
    assert idx == [expected_start + 8 * k for k in range(8)]
    starts = {train_clip_indices(250, 25.0, T, R, F, np.random.default_rng(s))[0] for s in range(3000)}
    assert min(starts) == 0 and max(starts) == 196 and len(starts) == 197


def test_view_clip_starts_hand_computed():
    # 25 fps, 250 frames: M = 196, a_i = floor(i * 196 / 9 + 1/2)
    assert view_clip_starts(250, T, 20 / 3, 10) == [0, 22, 44, 65, 87, 109, 131, 152, 174, 196]
    # 30 fps, 300 frames: M = 236, a_i = floor(i * 236 / 9 + 1/2)
    assert view_clip_starts(300, T, 8.0, 10) == [0, 26, 52, 79, 105, 131, 157, 184, 210, 236]
    # one clip: the centre
    assert view_clip_starts(300, T, 8.0, 1) == [118]
    assert view_clip_starts(250, T, 20 / 3, 1) == [98]
    assert view_clip_starts(300, T, 8.0, 2) == [0, 236]


def test_view_clip_indices_cover_start_to_end():
    clips = view_clip_indices(250, 25.0, T, R, F, 10)
    assert clips[0] == [0, 6, 13, 20, 26, 33, 40, 46]
    assert clips[3] == [65, 71, 78, 85, 91, 98, 105, 111]
    assert clips[-1] == [196, 202, 209, 216, 222, 229, 236, 242]
    clips = view_clip_indices(300, 30.0, T, R, F, 10)
    assert clips[-1][-1] == 292 and clips[0][0] == 0


def test_non_integer_fps():
    # realshort.mp4: 30.02 fps, 36 frames; step 8.005 -> floors 0, 8, 16, 24, 32, then the last frame
    assert clip_indices(0, T, sample_step(45000 / 1499, R, F), 36) == [0, 8, 16, 24, 32, 35, 35, 35]
    # NTSC 29.97: step 7.992 -> floor(k * 7.992)
    s = sample_step(30000 / 1001, R, F)
    assert clip_indices(0, T, s, 120) == [math.floor(k * s + 1e-6) for k in range(8)] == [0, 7, 15, 23, 31, 39, 47, 55]
