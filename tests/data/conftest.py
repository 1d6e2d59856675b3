"""Session fixtures of the data tests: a tiny toy dataset, broken videos, index-stamped videos."""
import os

import pytest

import data_helpers as H


@pytest.fixture(scope="session")
def files_dir():
    return H.FILES


@pytest.fixture(scope="session")
def tiny_toy(tmp_path_factory):
    """A toy dataset of 16 train / 8 val videos, 48 px, 24 frames (about a second to make)."""
    from gcvideo.data.toy import make_toy_dataset

    out = str(tmp_path_factory.mktemp("toy"))
    make_toy_dataset(out, seed=3, num_train=16, num_val=8, size=48, num_frames=24, workers=1)
    return out


@pytest.fixture(scope="session")
def broken(tmp_path_factory):
    """kind -> path, every kind of broken video (see data_helpers.make_broken)."""
    return H.make_broken(str(tmp_path_factory.mktemp("broken")))


@pytest.fixture(scope="session")
def index_videos(tmp_path_factory):
    """Videos whose frame k shows k: 30 fps and 25 fps (300/250 frames, GOP 250), an edit list
    hiding 7 frames, a file whose index announces more frames than decode, damaged packets."""
    d = tmp_path_factory.mktemp("index")
    out = {
        "fps30": H.write_index_video(str(d / "fps30.mp4"), 300, fps=30),
        "fps25": H.write_index_video(str(d / "fps25.mp4"), 250, fps=25),
        "edit_list": H.write_index_video(str(d / "edit_list.mp4"), 100, start=-7),
        "vfr": H.write_index_video(str(d / "vfr.mp4"), 90, vfr=True),
    }
    fs = H.write_index_video(str(d / "faststart.mp4"), 100, faststart=True, gop=25)
    data = open(fs, "rb").read()
    with open(d / "short_data.mp4", "wb") as f:  # index says 100 frames, data for about half
        f.write(data[:int(len(data) * 0.6)])
    out["short_data"] = str(d / "short_data.mp4")
    # damaged packets in the middle of a real Kinetics clip
    import numpy as np
    demo = bytearray(open(os.path.join(H.FILES, "demo.mp4"), "rb").read())
    rng = np.random.default_rng(1)
    for off in (150000, 300000, 450000):
        demo[off:off + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    with open(d / "damaged.mp4", "wb") as f:
        f.write(bytes(demo))
    out["damaged"] = str(d / "damaged.mp4")
    return out
