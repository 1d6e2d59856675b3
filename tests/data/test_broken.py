"""Broken videos: replaced in training (reported in `skipped`), marked failed in testing; the tracker;
accuracy over all / decodable videos."""
import os

import pytest
import torch

import video_faults as F
from gcvideo.config import get_cfg
from gcvideo.data import BrokenVideoTracker, TooManyBrokenVideos, build_dataset, parse_skipped

KINDS = {"missing": "missing", "empty": "empty", "text": "unreadable", "truncated": "unreadable",
         "audio_only": "no_video_stream", "no_packets": "no_video_stream", "undecodable": "no_frames"}


@pytest.fixture(scope="module")
def mixed_csv(broken, files_dir, tmp_path_factory):
    """Rows 0..6: one of each broken kind; rows 7..9: good real videos."""
    d = tmp_path_factory.mktemp("mixed")
    good = [os.path.join(files_dir, n) for n in ("part_0.mp4", "realshort.mp4", "test.avi")]
    rows = [broken[k] for k in KINDS] + good
    (d / "train.csv").write_text("".join(f"{p} {i}\n" for i, p in enumerate(rows)))
    (d / "test.csv").write_text("".join(f"{p} {i}\n" for i, p in enumerate(rows)))
    return str(d), rows


def small_cfg(folder, decoder="decord"):
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = folder
    cfg.DATA.DECODER = decoder
    cfg.DATA.TRAIN_JITTER_SCALES, cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE = [64, 80], 64, 64
    cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = 2, 1
    return cfg


@pytest.mark.parametrize("decoder", F.BACKENDS)
def test_train_replaces_each_broken_kind(mixed_csv, decoder):
    folder, rows = mixed_csv
    ds = build_dataset(small_cfg(folder, decoder), "train")
    for i, kind in enumerate(KINDS):
        item = ds[i]
        assert item["ok"] and item["video"].shape == (3, 8, 64, 64)
        assert item["index"] >= 7 and item["path"] == rows[item["index"]]  # a good video took its place
        assert item["label"] == item["index"]
        skipped = parse_skipped(item["skipped"])
        assert skipped[0] == (rows[i], skipped[0][1]) and skipped[0][1].startswith(KINDS[kind] + ":")
        assert all(p in rows[:7] for p, _ in skipped)  # any further failed replacements are listed too
        # deterministic replacement
        again = ds[i]
        assert again["index"] == item["index"] and again["skipped"] == item["skipped"]
        torch.testing.assert_close(again["video"], item["video"], rtol=0, atol=0)
    assert ds[8]["skipped"] == "" and ds[8]["index"] == 8


@pytest.mark.parametrize("decoder", F.BACKENDS)
def test_test_mode_marks_failed_never_substitutes(mixed_csv, decoder):
    folder, rows = mixed_csv
    ds = build_dataset(small_cfg(folder, decoder), "test")
    for i, kind in enumerate(KINDS):
        item = ds[i]
        assert item["ok"] is False and item["error"].startswith(KINDS[kind] + ":")
        assert item["index"] == i and item["path"] == rows[i] and item["label"] == i
        assert item["video"].shape == (2, 3, 8, 64, 64) and not item["video"].any()
    for i in (7, 8, 9):
        item = ds[i]
        assert item["ok"] and item["error"] == "" and item["video"].abs().sum() > 0


@pytest.mark.parametrize("decoder", F.BACKENDS)
def test_damaged_edit_list_and_short_data_still_usable(index_videos, tmp_path, decoder):
    rows = [index_videos[k] for k in ("damaged", "edit_list", "short_data")]
    (tmp_path / "train.csv").write_text("".join(f"{p} 0\n" for p in rows))
    (tmp_path / "test.csv").write_text("".join(f"{p} 0\n" for p in rows))
    cfg = small_cfg(str(tmp_path), decoder)
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    for i in range(3):
        assert train[i]["skipped"] == "" and train[i]["index"] == i
        assert test[i]["ok"], test[i]["error"]


def test_tracker_logs_once_writes_list_and_stops(tmp_path, caplog):
    t = BrokenVideoTracker(str(tmp_path), num_videos=100, max_fraction=0.05)
    batch = ["a.mp4\tmissing: file does not exist", "", "b.mp4\tempty: file is 0 bytes\na.mp4\tmissing: x"]
    with caplog.at_level("WARNING"):
        new = t.update(batch)
        t.add_skipped("b.mp4\tempty: file is 0 bytes")
    assert new == [("a.mp4", "missing: file does not exist"), ("b.mp4", "empty: file is 0 bytes")]
    assert t.num_broken == 2 and sum("a.mp4" in r.message for r in caplog.records) == 1
    listed = (tmp_path / "broken_videos.txt").read_text()
    assert listed == "a.mp4\tmissing: file does not exist\nb.mp4\tempty: file is 0 bytes\n"
    t.update("\n".join(f"v{i}.mp4\tno_frames: x" for i in range(3)))  # 5 of 100 = 5%: still allowed
    assert t.num_broken == 5
    with pytest.raises(TooManyBrokenVideos, match=r"6 of 100 videos.*broken_videos.txt"):
        t.update("v9.mp4\tunreadable: y")
    assert "v9.mp4" in (tmp_path / "broken_videos.txt").read_text()
    # resume: the list is read back and counted
    t2 = BrokenVideoTracker(str(tmp_path), num_videos=1000, max_fraction=0.05)
    assert t2.num_broken == 6 and t2.update("a.mp4\tmissing: again") == []
    # count-only tracker (processes other than rank 0)
    t3 = BrokenVideoTracker(None, num_videos=10, max_fraction=0.0)
    with pytest.raises(TooManyBrokenVideos):
        t3.update("x.mp4\tmissing: x")


@pytest.mark.parametrize("decoder", F.BACKENDS)
def test_tracker_with_dataset_items(mixed_csv, tmp_path, caplog, decoder):
    """Every backend: each broken video logged once and listed, the run stopped past the limit."""
    folder, rows = mixed_csv
    ds = build_dataset(small_cfg(folder, decoder), "train")
    t = BrokenVideoTracker(str(tmp_path), num_videos=len(ds), max_fraction=1.0)
    with caplog.at_level("WARNING", logger="gcvideo.data.broken"):
        for _ in range(2):  # two epochs: the same videos again
            for i in range(len(ds)):
                t.update(ds[i]["skipped"])
    assert set(t.broken) == set(rows[:7])
    for p in rows[:7]:
        assert sum(p in r.getMessage() and "broken video skipped" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(TooManyBrokenVideos):
        BrokenVideoTracker(str(tmp_path), num_videos=len(ds), max_fraction=0.5).check()
