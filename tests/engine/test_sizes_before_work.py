"""Sizes and learning rates are checked before any work: a config whose one item or one batch
would need more than DATA.MAX_ITEM_BYTES / DATA.MAX_BATCH_BYTES, or whose LR is not finite and
sane, is one error naming the keys and the estimate, and nothing is written to OUTPUT_DIR.

(The tiny engine configs run on a synthetic dataset that ignores the crop sizes, so before the
check these configs trained and wrote files instead of taking the machine's memory.)"""
import os
import sys

import pytest

from engine_synthetic import builder, tiny_cfg
import gcvideo.engine as engine
from gcvideo.config import ConfigError, load_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# tiny_cfg: DATA.NUM_FRAMES 4, TEST 2 clips x 1 crop, TEST.BATCH_SIZE 4, TRAIN.BATCH_SIZE 4, uint8 items,
# DATA.MAX_ASPECT_RATIO 10, jitter [32, 32], train crop 32
CASES = {
    # 2 clips x 4 frames = 8 frames at a 4000-pixel short side, up to 40000 long: 8*3*4000*40000 bytes;
    # 2 views of 3x4x4000x4000 uint8
    "test_crop": (["DATA.TEST_CROP_SIZE", 4000], "a test item", "MAX_ITEM_BYTES",
                  8 * 3 * 4000 * 40000 + 2 * 3 * 4 * 4000 ** 2),
    # 100000 clips x 4 frames at 32 x up to 320 pixels, and 100000 views of 3x4x32x32
    "views": (["TEST.NUM_ENSEMBLE_VIEWS", 100000], "a test item", "MAX_ITEM_BYTES",
              400000 * 3 * 32 * 320 + 100000 * 3 * 4 * 32 * 32),
    # a training item (100000 frames at 32 x 320 and one clip: 3.38 GB) fits; a test item's 2 clips do not
    "frames": (["DATA.NUM_FRAMES", 100000], "a test item", "MAX_ITEM_BYTES",
               200000 * 3 * 32 * 320 + 2 * 3 * 100000 * 32 * 32),
    # a test batch under a 100 MB bound: 4 videos x 30 views of 3x4x256x256 = 120 clips, uint8 + float32
    "batch": (["DATA.TEST_CROP_SIZE", 256, "TEST.NUM_ENSEMBLE_VIEWS", 10, "TEST.NUM_SPATIAL_CROPS", 3,
               "DATA.MAX_BATCH_BYTES", 10 ** 8], "a test batch", "MAX_BATCH_BYTES", 120 * 3 * 4 * 256 * 256 * 5),
}


def _gb(n):
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("mode", ["train", "test"])
def test_a_config_past_the_memory_bounds_is_refused_before_any_file(tmp_path, case, mode):
    opts, what, bound, estimate = CASES[case]
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as e:
        cfg = tiny_cfg(out, *opts)
        (engine.train if mode == "train" else engine.test)(cfg, dataset_builder=builder())
    msg = str(e.value)
    assert msg.startswith(f"{what} would need up to {_gb(estimate)} ("), msg
    assert f"more than DATA.{bound} = " in msg and f"or raise DATA.{bound}" in msg
    assert not out.exists()


def test_the_batch_bound_is_per_process(monkeypatch):
    """TRAIN.BATCH_SIZE is global: under torchrun each process holds BATCH_SIZE / WORLD_SIZE clips."""
    # 64 clips of 3x8x224x224 (uint8 + float32: 5 bytes a pixel) = 385 MB
    opts = ["TRAIN.BATCH_SIZE", 64, "SOLVER.REFERENCE_BATCH_SIZE", 64, "DATA.MAX_BATCH_BYTES", 3 * 10 ** 8,
            "TEST.BATCH_SIZE", 1, "TEST.NUM_ENSEMBLE_VIEWS", 1, "TEST.NUM_SPATIAL_CROPS", 1]
    with pytest.raises(ConfigError, match=rf"a training batch would need up to {64 * 3 * 8 * 224 * 224 * 5 / 1e9:.2f} "
                                          r"GB \(64 clips collated"):
        load_cfg(None, opts)
    monkeypatch.setenv("WORLD_SIZE", "2")
    load_cfg(None, opts)  # 32 clips a process


def test_the_kinetics_configs_pass_the_bounds_with_margin():
    """The 8x8 configs' largest estimate (a 30-view test batch, 0.94 GB) is under an eighth of the defaults."""
    for name in ("slow_r50_8x8_gc_all", "slow_r101_8x8", "slow_r50_8x8_nl5"):
        path = os.path.join(ROOT, "configs", "kinetics400", name + ".yaml")
        cfg = load_cfg(path, check_files=False)
        load_cfg(path, ["DATA.MAX_ITEM_BYTES", cfg.DATA.MAX_ITEM_BYTES // 8,
                        "DATA.MAX_BATCH_BYTES", cfg.DATA.MAX_BATCH_BYTES // 8], check_files=False)
        with pytest.raises(ConfigError, match=r"a test batch would need up to 0\.94 GB"):  # and the bound is real
            load_cfg(path, ["DATA.MAX_BATCH_BYTES", 9 * 10 ** 8], check_files=False)


@pytest.mark.parametrize("opts,expected", [
    (["SOLVER.BASE_LR", 1e300], r"SOLVER\.BASE_LR = 1e\+300 is not allowed: expected a finite learning rate "
                                r"in \(0, 10\]"),
    (["SOLVER.BASE_LR", ".inf"], r"SOLVER\.BASE_LR = inf is not allowed"),
    (["SOLVER.BASE_LR", ".nan"], r"SOLVER\.BASE_LR = nan is not allowed"),
    # 8 / 4 * 8 = 16 after the linear scaling to TRAIN.BATCH_SIZE 8 / SOLVER.REFERENCE_BATCH_SIZE 4 (it is 16)
    (["SOLVER.BASE_LR", 8.0, "TRAIN.BATCH_SIZE", 8], r"scaled to TRAIN\.BATCH_SIZE 8 / SOLVER\.REFERENCE_BATCH_SIZE "
                                                      r"4, is at most 10 \(it is 16\)"),
    (["SOLVER.WARMUP_START_FACTOR", 1e300], r"SOLVER\.WARMUP_START_FACTOR = 1e\+300 is not allowed: expected a "
                                            r"fraction in \[0, 1\]"),
    (["SOLVER.COSINE_END_FACTOR", -0.5], r"SOLVER\.COSINE_END_FACTOR = -0\.5 is not allowed"),
], ids=["huge", "inf", "nan", "scaled", "warmup", "cosine"])
def test_insane_learning_rates_are_refused_before_any_file(tmp_path, opts, expected):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=expected):
        train_cfg = tiny_cfg(out, *opts)
        engine.train(train_cfg, dataset_builder=builder())
    assert not out.exists()


def test_train_net_says_one_line_and_writes_nothing(tmp_path, capsys):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import train_net

    out = tmp_path / "run"
    y = tmp_path / "c.yaml"
    y.write_text(f"OUTPUT_DIR: {out}\nDATA:\n  PATH_TO_DATA_DIR: {tmp_path}\n")
    assert train_net.main(["--config", str(y), "DATA.TEST_CROP_SIZE", "4000"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: a test item would need up to "), err
    assert not out.exists()


def test_predict_refuses_views_past_the_item_bound_before_reading_anything(tmp_path, capsys):
    """tools/predict.py --views: float32 views of one video (build_views_dataset), checked before the
    checkpoint or any video is opened (neither exists here)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_tool", os.path.join(ROOT, "tools", "predict.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    y = tmp_path / "c.yaml"
    y.write_text("DATA:\n  NUM_FRAMES: 8\n  TEST_CROP_SIZE: 256\n")
    rc = tool.main([str(tmp_path / "v.mp4"), "--config", str(y), "--checkpoint", str(tmp_path / "none.pth"),
                    "--views", "100000x3"])
    # 800000 frames at 256 x up to 2560; one float32 clip of 8 of them; 300000 float32 views of 3x8x256x256
    total = 800000 * 3 * 256 * 2560 + 4 * 8 * 3 * 256 * 2560 + 300000 * 3 * 8 * 256 * 256 * 4
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"error: a video's views would need up to {total / 1e9:.2f} GB ("), err
    assert "lower --views, DATA.NUM_FRAMES, DATA.TEST_CROP_SIZE" in err[0]
