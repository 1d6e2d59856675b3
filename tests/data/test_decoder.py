"""Decoders: exact frame indices, decord = PyAV pixels on real files, fallbacks, odd containers."""
import os

import av
import numpy as np
import pytest

import data_helpers as H
import video_faults as F
from gcvideo.data import decoder as D
from gcvideo.data.decoder import FrameCountChanged, VideoDecodeError, decode_frames, open_video

BACKENDS = ["decord", "pyav"]


def full_decode(path):
    """Reference: every frame of a plain sequential PyAV decode."""
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_indices_order_and_duplicates(index_videos, backend):
    idx = [5, 299, 0, 5, 150, 149, 251, 250, 249, 5]
    frames = decode_frames(index_videos["fps30"], idx, backend=backend)
    assert frames.shape == (len(idx), 128, 176, 3) and frames.dtype == np.uint8
    assert [H.read_index(f) for f in frames] == idx


@pytest.mark.parametrize("backend", BACKENDS)
def test_index_out_of_range(index_videos, backend):
    with pytest.raises(VideoDecodeError, match="bad_index"):
        decode_frames(index_videos["fps25"], [0, 250], backend=backend)


@pytest.mark.parametrize("name,frames,fps,size", [
    ("demo.mp4", 280, 28.0, (256, 340)),
    ("part_0.mp4", 32, 30.0, (256, 340)),
    ("realshort.mp4", 36, 45000 / 1499, (240, 320)),
    ("test.avi", 164, 25.0, (240, 320)),
    ("cricket_trim.gif", 20, 25.0, (112, 112)),
])
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_files_counts_and_rates(files_dir, name, frames, fps, size, backend):
    """Frame counts of a full decode (tests/data/files/README.md), rates, audio streams ignored."""
    path = os.path.join(files_dir, name)
    with open_video(path, backend) as r:
        assert r.num_frames == frames
        assert r.fps == pytest.approx(fps, rel=1e-6)
        last = r.read([frames - 1, 0])
    assert last.shape == (2,) + size + (3,)


@pytest.mark.parametrize("name", ["demo.mp4", "part_0.mp4", "realshort.mp4"])
def test_decord_equals_pyav_on_real_h264(files_dir, name):
    path = os.path.join(files_dir, name)
    ref = full_decode(path)
    rng = np.random.default_rng(0)
    idx = list(rng.integers(0, len(ref), 24)) + [len(ref) - 1, 0, 0]
    with open_video(path, "decord") as rd, open_video(path, "pyav") as ra:
        assert rd.backend == "decord" and rd.fallback == ""
        a, d = ra.read(idx), rd.read(idx)
    np.testing.assert_array_equal(a, d)
    np.testing.assert_array_equal(a, np.stack([ref[i] for i in idx]))


def test_pyav_reader_equals_full_decode_on_every_frame(files_dir):
    """The keyframe-jumping, non-reference-skipping PyAV reader returns what a full decode does."""
    path = os.path.join(files_dir, "demo.mp4")
    ref = full_decode(path)
    with open_video(path, "pyav") as r:
        assert r._impl.mode == "indexed"
        every3 = list(range(0, 280, 3))
        np.testing.assert_array_equal(r.read(every3), np.stack([ref[i] for i in every3]))
        # a second read on the same reader (decoder reset), sparse across the keyframes 187/230/268
        idx = [279, 190, 231, 5, 268]
        np.testing.assert_array_equal(r.read(idx), np.stack([ref[i] for i in idx]))


@pytest.mark.parametrize("name", ["test.avi", "cricket_trim.gif"])
def test_avi_and_gif_fall_back_and_match_full_decode(files_dir, name):
    path = os.path.join(files_dir, name)
    ref = full_decode(path)
    with open_video(path, "decord") as r:
        assert r.backend == "pyav" and r.fallback.startswith("decord:")
        idx = [len(ref) - 1, 3, 3, 0, len(ref) // 2]
        np.testing.assert_array_equal(r.read(idx), np.stack([ref[i] for i in idx]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_edit_list_hidden_frames_not_counted(index_videos, backend):
    """100 frames encoded, the first 7 hidden by an edit list: 93 frames, frame 0 shows 7.
    decord counts the hidden ones (first timestamp < 0), so it is not trusted there."""
    with open_video(index_videos["edit_list"], backend) as r:
        assert r.num_frames == 93
        assert r.backend == "pyav"
        if backend == "decord":
            assert "edit list" in r.fallback
        got = [H.read_index(f) for f in r.read([0, 1, 50, 92])]
    assert got == [7, 8, 57, 99]


@pytest.mark.parametrize("backend", BACKENDS)
def test_declared_count_larger_than_decodable(index_videos, backend):
    path = index_videos["short_data"]
    with open_video(path, backend) as r:
        announced = r.num_frames
        assert announced < 100  # PyAV keeps the packets that exist
        with pytest.raises(FrameCountChanged) as e:
            r.read([0, announced - 1])
        assert e.value.num_frames == r.num_frames < announced
        got = [H.read_index(f) for f in r.read([0, r.num_frames - 1])]
    assert got == [0, r.num_frames - 1]
    with pytest.raises(VideoDecodeError, match="bad_index"):
        decode_frames(path, [99], backend=backend)


def test_damaged_packets_decord_falls_back_to_pyav(index_videos):
    path = index_videos["damaged"]
    with open_video(path, "decord") as r:
        assert r.backend == "decord" and r.num_frames == 280
        try:
            frames = r.read([0, 100, 200, 279])
        except FrameCountChanged:
            frames = r.read([0, 100, 200, r.num_frames - 1])
        assert r.backend == "pyav" and "get_batch" in r.fallback
    assert frames.shape == (4, 256, 340, 3)


@pytest.mark.parametrize("backend", F.BACKENDS)
@pytest.mark.parametrize("kind,reason", [
    ("missing", "missing"), ("empty", "empty"), ("text", "unreadable"), ("truncated", "unreadable"),
    ("audio_only", "no_video_stream"), ("no_packets", "no_video_stream"), ("undecodable", "no_frames"),
])
def test_broken_files_raise_with_reason(broken, kind, reason, backend):
    with pytest.raises(VideoDecodeError) as e:
        decode_frames(broken[kind], [0], backend=backend)
    assert e.value.reason.startswith(reason + ":")
    assert e.value.path == broken[kind]


def test_reads_through_iopath(index_videos, monkeypatch):
    seen = []
    real = D.path_manager.get_local_path

    def spy(path, **kw):
        seen.append(path)
        return real(path, **kw)

    monkeypatch.setattr(D.path_manager, "get_local_path", spy)
    decode_frames(index_videos["fps25"], [3], backend="pyav")
    assert seen == [index_videos["fps25"]]


def test_unknown_backend(index_videos):
    with pytest.raises(ValueError, match="decoder backend"):
        decode_frames(index_videos["fps25"], [0], backend="opencv")


@pytest.mark.parametrize("backend", BACKENDS)
def test_variable_frame_rate(index_videos, backend):
    """Frame durations 1/60, 2/60, 3/60 s in turn (30 fps on average): indices are frame numbers."""
    path = index_videos["vfr"]
    with av.open(path) as c:
        pts = [f.pts for f in c.decode(video=0)]
    assert len(set(pts[i + 1] - pts[i] for i in range(len(pts) - 1))) > 1  # really variable
    with open_video(path, backend) as r:
        assert r.num_frames == 90
        assert 25 < r.fps < 35
        idx = [0, 1, 2, 3, 44, 89, 44]
        assert [H.read_index(f) for f in r.read(idx)] == idx


@pytest.mark.parametrize("threads", [0, 3])
def test_decoder_threads_same_pixels(files_dir, threads):
    path = os.path.join(files_dir, "demo.mp4")
    idx = [0, 50, 100, 279, 187, 5]
    ref = decode_frames(path, idx, backend="pyav", threads=1)
    for backend in BACKENDS:
        np.testing.assert_array_equal(decode_frames(path, idx, backend=backend, threads=threads), ref)


def _resize_ref(frames, size):
    """Reference for ``size``: full-size frames, then torchvision's antialiased bilinear resize."""
    import torch
    from torchvision.transforms.v2 import functional as TF

    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    return TF.resize(x, list(size), interpolation=TF.InterpolationMode.BILINEAR,
                     antialias=True).permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("size", [(128, 170), (320, 425), (224, 224), (100, 300)])
def test_read_with_size_matches_full_decode_then_resize(files_dir, backend, size):
    """size=(h, w) scales while converting (PyAV: swscale bilinear) or after (decord): within a
    few grey levels of full decode + antialiased bilinear resize; exact at the native size."""
    path = os.path.join(files_dir, "demo.mp4")
    ref = full_decode(path)
    idx = [0, 150, 279, 150]
    with open_video(path, backend) as r:
        got = r.read(idx, size=size)
        native = r.read(idx, size=(256, 340))
        plain = r.read(idx)
    want = _resize_ref([ref[i] for i in idx], size)
    assert got.shape == (4,) + size + (3,) and got.dtype == np.uint8
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) <= 16, (diff.mean(), np.percentile(diff, 99))
    np.testing.assert_array_equal(native, plain)
    np.testing.assert_array_equal(got[1], got[3])
    # the one-call form gives the reader's pixels
    np.testing.assert_array_equal(decode_frames(path, idx, backend=backend, size=size), got)


@pytest.mark.parametrize("size", [(0, 10), (10,), "ab", (1.5, 3)])
def test_read_with_bad_size(index_videos, size):
    with pytest.raises(ValueError, match="size"):
        decode_frames(index_videos["fps25"], [0], backend="pyav", size=size)
