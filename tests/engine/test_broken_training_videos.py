"""Broken training videos: the loader's replacements are listed in broken_videos.txt, and too many stop the run."""
import pytest

from engine_synthetic import builder, tiny_cfg
from gcvideo.engine import train


def test_broken_training_videos_are_listed_and_stop_the_run(tmp_path):
    from gcvideo.data import TooManyBrokenVideos

    out = tmp_path / "run"
    cfg = tiny_cfg(out, "SOLVER.MAX_EPOCH", 1, "DATA.MAX_BROKEN_FRACTION", 0.2)
    train(cfg, dataset_builder=builder(train={"skipped": [3, 5]}))  # 2 of 16 broken: under 20%
    listed = (out / "broken_videos.txt").read_text().splitlines()
    assert sorted(listed) == ["broken_0003.mp4\tcannot decode", "broken_0005.mp4\tcannot decode"]
    cfg = tiny_cfg(tmp_path / "run2", "SOLVER.MAX_EPOCH", 1, "DATA.MAX_BROKEN_FRACTION", 0.1)
    with pytest.raises(TooManyBrokenVideos, match="MAX_BROKEN_FRACTION"):
        train(cfg, dataset_builder=builder(train={"skipped": [1, 2, 3, 4]}))
