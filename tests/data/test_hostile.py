"""Hostile videos (issue 14): extreme sizes are per-video errors, any per-video failure in test
mode (decode, transform, memory) is a failed video and the others go on; training replaces them."""
import os

import pytest
import torch

import data_helpers as H
import video_faults as F
from gcvideo.config import ConfigError, get_cfg, validate_cfg
from gcvideo.data import VideoDecodeError, build_dataset, build_views_dataset
from gcvideo.data import clip_transforms as CT
from gcvideo.data.decoder import check_frame_size


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    out = {f"{w}x{h}": F.solid_video(str(d / f"v{w}x{h}.mp4"), w, h, num_frames=3) for w, h in
           ((4000, 2), (2, 4000), (2, 2))}
    out["one_frame"] = F.solid_video(str(d / "one.mp4"), 64, 48, num_frames=1)
    out["claims_100000"] = F.lying_header_avi(str(d / "lie.avi"), 40, claims=100000)
    out["good"] = H.write_index_video(str(d / "good.mp4"), 40)
    return out


def cfg_for(folder, rows, backend="pyav"):
    for split in ("train", "test"):
        with open(os.path.join(folder, f"{split}.csv"), "w") as f:
            f.write("".join(f"{p} {i}\n" for i, p in enumerate(rows)))
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = folder
    cfg.DATA.DECODER = backend
    cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE = 4, 2
    cfg.DATA.TRAIN_JITTER_SCALES, cfg.DATA.TRAIN_CROP_SIZE, cfg.DATA.TEST_CROP_SIZE = [64, 80], 64, 64
    cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS = 2, 3
    return cfg


def test_check_frame_size_hand_computed():
    check_frame_size("v.mp4", 1080, 1920, 4096 * 2304, 10.0)
    check_frame_size("v.mp4", 2, 2, 4096 * 2304, 10.0)
    check_frame_size("v.mp4", 0, 0, 1, 1.0)  # unknown: checked again on the decoded frames
    check_frame_size("v.mp4", 100, 1000, 10 ** 6, 10.0)  # exactly 10:1 is allowed
    with pytest.raises(VideoDecodeError, match=r"bad_size: 4000x2 frames have an aspect ratio of 2000:1, more "
                                               r"than DATA.MAX_ASPECT_RATIO = 10") as e:
        check_frame_size("v.mp4", 2, 4000, 4096 * 2304, 10.0)
    assert e.value.path == "v.mp4"
    with pytest.raises(VideoDecodeError, match=r"bad_size: 8192x4608 frames \(37.7 Mpixels\).*MAX_FRAME_PIXELS"):
        check_frame_size("v.mp4", 4608, 8192, 4096 * 2304, 10.0)


@pytest.mark.parametrize("backend", F.BACKENDS)
def test_extreme_videos_fail_alone_in_test_mode(hostile, tmp_path, backend):
    rows = [hostile[k] for k in ("4000x2", "good", "2x4000", "2x2", "one_frame", "claims_100000")]
    ds = build_dataset(cfg_for(str(tmp_path), rows, backend), "test")
    items = [ds[i] for i in range(len(rows))]
    for i in (0, 2):  # 4000x2 and 2x4000: a clear per-video error, a zero video of the usual shape
        assert items[i]["ok"] is False and items[i]["error"].startswith("bad_size: ")
        assert "aspect ratio of 2000:1" in items[i]["error"] and "DATA.MAX_ASPECT_RATIO" in items[i]["error"]
        assert items[i]["video"].shape == (6, 3, 4, 64, 64) and not items[i]["video"].any()
    for i in (1, 3, 4, 5):  # the good one, 2x2 (upscaled), one frame, a header claiming 100000 frames
        assert items[i]["ok"], items[i]["error"]
        assert items[i]["video"].shape == (6, 3, 4, 64, 64) and items[i]["video"].any()
    # 2x2 grey frames (about 40, 60, 80) stay uniform after upscaling; one frame: every view shows it
    for i in (3, 4):
        v = items[i]["video"].int()  # (V, 3, T, 64, 64)
        assert (v.amin(dim=(-1, -2)) == v.amax(dim=(-1, -2))).all() and 35 <= v.min() and v.max() <= 85
    assert len(items[4]["video"].unique()) == 1


def test_limits_are_config_keys(hostile, tmp_path):
    cfg = cfg_for(str(tmp_path), [hostile["good"]])
    cfg.DATA.MAX_FRAME_PIXELS = 176 * 128 - 1  # the good video's frames are 176 x 128
    item = build_dataset(cfg, "test")[0]
    assert not item["ok"] and item["error"].startswith("bad_size: 176x128 frames")
    cfg.DATA.MAX_FRAME_PIXELS, cfg.DATA.MAX_ASPECT_RATIO = 176 * 128, 1.3  # 176 / 128 = 1.375
    item = build_dataset(cfg, "test")[0]
    assert not item["ok"] and "aspect ratio of 1.375:1" in item["error"]
    for key, bad in (("MAX_FRAME_PIXELS", 0), ("MAX_ASPECT_RATIO", 0.5)):
        c = get_cfg()
        c.DATA[key] = bad
        with pytest.raises(ConfigError, match=f"DATA.{key}"):
            validate_cfg(c, check_files=False)


def test_memory_error_in_a_transform_is_a_failed_video(hostile, tmp_path, monkeypatch):
    """Test mode: MemoryError (or any error) while making one video's views fails that video only.
    Training: the video is replaced and reported in ``skipped`` like a broken one."""
    real = CT.make_views

    def boom(frames, *a, **kw):
        if frames.shape[1] == 48:  # the 64x48 one-frame video
            raise MemoryError("cannot allocate 12 GB")
        return real(frames, *a, **kw)

    monkeypatch.setattr(CT, "make_views", boom)
    again = str(tmp_path / "good_again.mp4")  # the good video under a second name: one path, one label
    os.symlink(hostile["good"], again)
    rows = [hostile["good"], hostile["one_frame"], again]
    cfg = cfg_for(str(tmp_path), rows)
    ds = build_dataset(cfg, "test")
    items = [ds[i] for i in range(3)]
    assert [it["ok"] for it in items] == [True, False, True]
    assert items[1]["error"] == "transform: MemoryError: cannot allocate 12 GB"

    real_train = CT.train_clip

    def boom_train(x, source_hw, *a, **kw):
        if source_hw[0] == 48:  # the one-frame video's frames (48 px high before any scaling)
            raise MemoryError("cannot allocate")
        return real_train(x, source_hw, *a, **kw)

    monkeypatch.setattr(CT, "train_clip", boom_train)
    item = build_dataset(cfg, "train")[1]
    assert item["ok"] and item["index"] in (0, 2) and item["video"].shape == (3, 4, 64, 64)
    skipped = item["skipped"].splitlines()
    assert skipped and set(skipped) == {f"{hostile['one_frame']}\ttransform: MemoryError: cannot allocate"}


def test_extreme_videos_are_replaced_in_training(hostile, tmp_path):
    rows = [hostile["4000x2"], hostile["2x4000"], hostile["good"]]
    ds = build_dataset(cfg_for(str(tmp_path), rows), "train")
    for i in (0, 1):
        item = ds[i]
        assert item["index"] == 2 and item["video"].shape == (3, 4, 64, 64)
        assert "bad_size: " in item["skipped"] and rows[i] in item["skipped"]


def test_views_dataset_applies_the_size_limits(hostile, tmp_path):
    """build_views_dataset (predict, analyze_nonlocal, visualize_attention) reads DATA.MAX_FRAME_PIXELS and
    DATA.MAX_ASPECT_RATIO as build_dataset does (the views used to keep VideoDataset's defaults)."""
    cfg = cfg_for(str(tmp_path), [hostile["good"]])
    assert build_views_dataset(cfg, [hostile["good"]], 1, 1)[0]["ok"]
    cfg.DATA.MAX_FRAME_PIXELS = 176 * 128 - 1  # the good video's frames are 176 x 128
    item = build_views_dataset(cfg, [hostile["good"]], 1, 1)[0]
    assert not item["ok"] and item["error"].startswith("bad_size: 176x128 frames")
    cfg.DATA.MAX_FRAME_PIXELS, cfg.DATA.MAX_ASPECT_RATIO = 176 * 128, 1.3  # 176 / 128 = 1.375
    item = build_views_dataset(cfg, [hostile["good"]], 1, 1)[0]
    assert not item["ok"] and "aspect ratio of 1.375:1" in item["error"]


def test_predict_gives_the_good_videos_their_result(hostile):
    """predict_videos on a 4000x2 video and a good one: one failed result, one prediction."""
    from gcvideo.analysis.predict import predict_videos

    class Mean(torch.nn.Module):
        def forward(self, x):  # (N, 3, T, H, W) -> (N, 2)
            m = x.float().mean(dim=(1, 2, 3, 4))
            return torch.stack([m, -m], dim=1)

    cfg = get_cfg()
    cfg.MODEL.NUM_CLASSES = 2
    cfg.DATA.NUM_FRAMES, cfg.DATA.SAMPLING_RATE, cfg.DATA.TEST_CROP_SIZE = 4, 2, 64
    res = predict_videos(Mean(), build_views_dataset(cfg, [hostile["4000x2"], hostile["good"]], 2, 3), ["a", "b"],
                         topk=2, device="cpu")
    assert res[0]["ok"] is False and res[0]["error"].startswith("bad_size: ") and res[0]["top"] == []
    assert res[1]["ok"] is True and len(res[1]["top"]) == 2


def test_evaluate_runs_through_hostile_videos(hostile, tmp_path):
    """The test loop (engine.tester.evaluate, as test_net.py uses it) gets every video, the
    extreme ones as failed: it can write its report."""
    from gcvideo.engine.device_prep import DevicePrep
    from gcvideo.engine.tester import build_eval_loader, evaluate

    class Mean(torch.nn.Module):
        def forward(self, x):  # (N, 3, T, H, W) -> (N, 2)
            m = x.float().mean(dim=(1, 2, 3, 4))
            return torch.stack([m, -m], dim=1)

    rows = [hostile["4000x2"], hostile["good"], hostile["2x4000"], hostile["claims_100000"]]
    cfg = cfg_for(str(tmp_path), rows)
    ds = build_dataset(cfg, "test")
    res = evaluate(Mean(), build_eval_loader(ds, batch_size=2, num_workers=0, pin_memory=False),
                   DevicePrep(torch.device("cpu"), False, cfg.DATA.MEAN, cfg.DATA.STD), num_classes=2)
    assert res.ok.tolist() == [False, True, False, True]
    assert res.errors[0].startswith("bad_size: ") and res.errors[2].startswith("bad_size: ")
