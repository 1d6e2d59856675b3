"""The PyAV reader's memory is bounded by what a read needs, not by the file: it indexes packets
(timestamps, offsets, sizes) without their data and demuxes only the packets of the clip."""
import os

import numpy as np

import data_helpers as H
from gcvideo.data.decoder import open_video

MB = 1 << 20


def test_peak_rss_flat_in_file_size(tmp_path):
    """A 20 MB and a 100 MB file (the same stream, four times longer): reading an 8-frame clip from
    the middle of each in a fresh process peaks within 16 MB of each other (the reader that kept
    every packet in memory: +80 MB, the size difference)."""
    small = H.write_large_video(str(tmp_path / "small.mp4"), 20 * MB)
    big = H.write_large_video(str(tmp_path / "big.mp4"), 100 * MB)
    grown = os.path.getsize(big) - os.path.getsize(small)
    assert grown > 70 * MB
    a, b = H.peak_rss_of_read(small), H.peak_rss_of_read(big)
    assert a["read"] == b["read"] == 8 and b["num_frames"] > 4 * a["num_frames"] - 30
    assert b["peak"] - a["peak"] < 16 * MB, (a, b, grown)


def test_large_file_clips_exact(tmp_path):
    """Every GOP of the generated file repeats GOP 0 frame for frame (frame i shows noise frame
    i % 30), so a clip read anywhere (seeks, jumps between keyframes) equals GOP 0's frames."""
    path = H.write_large_video(str(tmp_path / "v.mp4"), 12 * MB, width=160, height=120)  # ~5 GOPs
    with open_video(path) as r:
        n = r.num_frames
        assert n >= 120
        gop0 = r.read(list(range(30)))  # (30, H, W, 3)
        assert len({f.tobytes() for f in gop0}) == 30
        for idx in ([n - 1], [n // 2 + 2 * i for i in range(8)], [31, 95, 3, n - 30, 62, 62]):
            np.testing.assert_array_equal(r.read(idx), gop0[[i % 30 for i in idx]])
