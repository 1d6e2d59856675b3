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
    d = tmp_path_factory.mktemp("faults")
    base = H.write_index_video(str(d / "base.mp4"), 120, gop=250)
    nal = F.frames_by_nal(base)
    nonref = min(i for i in range(40, 80) if nal[i] & 0x60 == 0)
    ref = min(i for i in range(40, 80) if nal[i] & 0x60 and nal[i] & 0x1F == 1)
    out = {"base": base, "nonref": nonref, "ref": ref}
    F.damage_slice(base, str(d / "nonref_header.mp4"), nonref, "header")
    F.damage_slice(base, str(d / "ref_idr.mp4"), ref, "idr")
    F.damage_slice(base, str(d / "ref_payload.mp4"), ref, "payload")
    for k in ("nonref_header", "ref_idr", "ref_payload"):
        out[k] = str(d / f"{k}.mp4")
    gop25 = H.write_index_video(str(d / "gop25.mp4"), 100, gop=25)
    out["cut"] = F.remux_cut(gop25, str(d / "cut.mp4"), 37)
    out["lie_avi"] = F.lying_header_avi(str(d / "lie.avi"), 40, claims=100000)
    out["vfr"] = H.write_index_video(str(d / "vfr.mp4"), 60, vfr=True)
    return out


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
