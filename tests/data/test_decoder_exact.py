"""Exact frames, always: damaged slices, stream-copy cuts, lying headers; every backend is
compared with a sequential PyAV decode keyed by presentation timestamp (video_faults)."""
import os

import numpy as np
import pytest

import data_helpers as H
import video_faults as F
from gcvideo.data.decoder import VideoDecodeError, decode_frames, open_video

BACKENDS = ["decord", "pyav"]


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    return F.make_faults(str(tmp_path_factory.mktemp("faults")))


def test_fault_files_are_what_they_claim(faults):
    """The damage really is there: rejected packets / decoded frames of the reference decode."""
    ref, n, rejected = F.sequential_by_pts(faults["nonref_header"])
    assert (n, rejected, len(ref)) == (120, 1, 119) and faults["nonref"] not in ref
    ref, n, rejected = F.sequential_by_pts(faults["ref_idr"])
    assert n == 120 and rejected == 1 and len(ref) < 119  # frames depending on it are lost too
    ref, n, rejected = F.sequential_by_pts(faults["ref_payload"])
    assert (n, rejected, len(ref)) == (120, 0, 120)
    clean, _, _ = F.sequential_by_pts(faults["base"])
    assert not np.array_equal(ref[faults["ref"]], clean[faults["ref"]])  # concealed errors


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_slice_never_shifts_frames(faults, backend):
    """One non-reference frame's packet is rejected. Asking for it is an error naming the file;
    every other frame comes back exactly (a sequential count would shift them all by one)."""
    path, bad = faults["nonref_header"], faults["nonref"]
    ref, _, _ = F.sequential_by_pts(path)
    with open_video(path, backend) as r:
        assert r.num_frames == 120
        for idx in ([bad], [bad - 1, bad, bad + 1], [0, bad, 119]):
            with pytest.raises(VideoDecodeError) as e:
                r.read(idx)
            assert e.value.reason.startswith("damaged:") and e.value.path == path
            assert str(bad) in e.value.reason
        idx = [bad + 1, bad - 1, 0, bad + 10, 119, bad + 1]  # the same reader, after the errors
        got = r.read(idx)
    np.testing.assert_array_equal(got, np.stack([ref[i] for i in idx]))
    assert [H.read_index(f) for f in got] == idx
    got = decode_frames(path, list(range(bad + 1, bad + 6)), backend=backend)
    assert [H.read_index(f) for f in got] == list(range(bad + 1, bad + 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_damaged_reference_slice_exact_or_error(faults, backend):
    """A reference frame's slice turned into a bad IDR NAL unit (FFmpeg: "A non-intra slice in an
    IDR NAL unit", "decode_slice_header error"; the demuxer even takes it for a keyframe): each
    frame read is the reference decode's frame at that index or an error, and always an error
    where the reference has no frame; every frame before the first lost one is served."""
    path, bad = faults["ref_idr"], faults["ref"]
    ref, _, _ = F.sequential_by_pts(path)
    first_lost = min(i for i in range(120) if i not in ref)
    served = errors = 0
    for i in sorted(set(range(0, 120, 9)) | {bad - 1, bad, bad + 1, bad + 2, 119}):
        try:
            got = decode_frames(path, [i], backend=backend)[0]
        except VideoDecodeError as e:
            assert e.reason.startswith("damaged:") and e.path == path
            assert i >= first_lost, f"frame {i} decodes in the reference, yet {backend} raised {e.reason}"
            errors += 1
            continue
        assert i in ref, f"frame {i} does not decode in the reference, yet {backend} returned one"
        np.testing.assert_array_equal(got, ref[i])
        served += 1
    assert errors >= 1 and served >= bad // 9 + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_concealed_damage_is_what_a_sequential_decode_gives(faults, backend):
    path, bad = faults["ref_payload"], faults["ref"]
    ref, _, _ = F.sequential_by_pts(path)
    idx = [bad, bad + 3, 0, 119, bad - 1]
    np.testing.assert_array_equal(decode_frames(path, idx, backend=backend), np.stack([ref[i] for i in idx]))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,count,first", [("cut", 63, 37), ("lie_avi", 40, 0), ("vfr", 60, 0)])
def test_odd_files_equal_sequential_decode(faults, backend, kind, count, first):
    """Stream-copy cut (an edit list hides 12 leading frames), an AVI whose headers claim 100000
    frames, variable frame rate: count and pixels of a sequential decode."""
    path = faults[kind]
    ref, n, _ = F.sequential_by_pts(path)
    assert n == len(ref) == count
    idx = sorted(np.random.default_rng(0).choice(count, 12, replace=False).tolist()) + [count - 1, 0]
    with open_video(path, backend) as r:
        assert r.num_frames == count
        got = r.read(idx)
    np.testing.assert_array_equal(got, np.stack([ref[i] for i in idx]))
    assert [H.read_index(f) for f in got] == [first + i for i in idx]
    with pytest.raises(VideoDecodeError, match="bad_index"):
        decode_frames(path, [count], backend=backend)


class _Index:
    """Stand-in for the PyAV packet index in index_mismatch's hand-computed cases."""
    indexed, container_format, demux_error = True, "mov,mp4", ""

    def __init__(self, times):
        self._t = np.array(times, dtype=float)
        self.num_frames = len(times)

    def frame_times(self):
        return self._t


def test_index_mismatch_hand_computed():
    from gcvideo.data.decoder import index_mismatch

    idx = _Index([0.0, 0.1, 0.2, 0.4])  # smallest gap 0.1 s: tolerance 0.05 s
    assert index_mismatch("x", 4, [0.0, 0.1, 0.249, 0.4], idx) == ""
    assert "frame 2 at 0.2510 s" in index_mismatch("x", 4, [0.0, 0.1, 0.251, 0.4], idx)
    assert "counts 5 frames" in index_mismatch("x", 5, None, idx)
    # decord's times relative to its first frame: a constant offset is fine only with relative=True
    assert index_mismatch("x", 4, [1.0, 1.1, 1.2, 1.4], idx, relative=True) == ""
    assert "frame 0" in index_mismatch("x", 4, [1.0, 1.1, 1.2, 1.4], idx)
    idx.indexed, idx.container_format = False, "avi"
    assert "avi container has no packet timestamps" in index_mismatch("x", 4, None, idx)


def test_decord_used_only_where_verified_and_fallback_logged_once(faults, files_dir, caplog, monkeypatch):
    from gcvideo.data import decoder as D

    monkeypatch.setattr(D, "_logged_fallbacks", set())  # earlier tests of this process logged theirs
    with open_video(faults["base"], "decord") as r:
        assert r.backend == "decord" and r.fallback == ""
    for path, why in ((faults["cut"], "edit list"), (faults["lie_avi"], "no packet timestamps"),
                      (os.path.join(files_dir, "test.avi"), "")):
        caplog.clear()
        with caplog.at_level("WARNING", logger="gcvideo.data.decoder"):
            for _ in range(3):
                with open_video(path, "decord") as r:
                    assert r.backend == "pyav" and r.fallback.startswith("decord: ") and why in r.fallback
        logged = [rec.getMessage() for rec in caplog.records if path in rec.getMessage()]
        assert len(logged) == 1 and "decord not used" in logged[0] and r.fallback[len("decord: "):] in logged[0]


def test_decord_frame_table_checked_against_the_packet_index(faults, monkeypatch):
    """A decord frame table one frame off (same count) is not trusted."""
    import decord

    real = decord.VideoReader.get_frame_timestamp

    def shifted(self, idx):
        ts = real(self, idx)
        ts[len(ts) // 2:] += 1 / 30
        return ts

    monkeypatch.setattr(decord.VideoReader, "get_frame_timestamp", shifted)
    with open_video(faults["base"], "decord") as r:
        assert r.backend == "pyav" and "not verified: decord puts frame" in r.fallback


def test_pyav_is_the_default():
    from gcvideo.config import ConfigError, get_cfg, validate_cfg

    cfg = get_cfg()
    assert cfg.DATA.DECODER == "pyav" and cfg.DATA.DECODE_DEVICE == "cpu"
    assert open_video.__defaults__[0] == "pyav"
    cfg.DATA.DECODE_DEVICE = "cuda"
    with pytest.raises(ConfigError, match="DATA.DECODE_DEVICE"):
        validate_cfg(cfg, check_files=False)
    cfg.DATA.DECODER = "torchcodec"
    with pytest.raises(ConfigError, match="DATA.NUM_WORKERS 0"):
        validate_cfg(cfg, check_files=False)
    cfg.DATA.NUM_WORKERS, cfg.DATA.PIN_MEMORY = 0, False
    validate_cfg(cfg, check_files=False)


def test_check_videos_reports_damaged_frames(faults):
    from gcvideo.data.check import check_video

    assert check_video(faults["base"], full=True) == ""
    assert check_video(faults["nonref_header"], full=True).startswith("damaged: frame(s) [")
    assert check_video(faults["cut"], "decord", full=True) == ""
