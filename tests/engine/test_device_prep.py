"""DevicePrep (gcvideo/engine/device_prep.py): a batch onto the device, uint8 normalised there; and the
settings objects the engine's build_* functions make from a config (read once, shared by the loops)."""
import pytest
import torch

from engine_synthetic import tiny_cfg
from gcvideo.config import get_cfg
from gcvideo.engine.device_prep import DevicePrep, build_device_prep

MEAN, STD = [0.43, 0.45, 0.47], [0.22, 0.225, 0.23]
CPU = torch.device("cpu")


def _uint8_batch():
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 3, 4, 5, 6), generator=g, dtype=torch.uint8)  # (N, 3, T, H, W)


def test_uint8_batch_is_normalised_as_the_float64_reference():
    x = _uint8_batch()
    y = DevicePrep(CPU, False, MEAN, STD)(x)
    m = torch.tensor(MEAN, dtype=torch.float64).view(1, 3, 1, 1, 1)
    s = torch.tensor(STD, dtype=torch.float64).view(1, 3, 1, 1, 1)
    want = (x.double() / 255 - m) / s
    assert y.dtype == torch.float32 and y.shape == x.shape and y.is_contiguous()
    torch.testing.assert_close(y.double(), want, rtol=0, atol=2e-6)
    # (the check can fail: mean and std swapped per channel give another batch)
    assert (DevicePrep(CPU, False, MEAN[::-1], STD)(x).double() - want).abs().max() > 0.1


def test_channels_last_when_asked():
    x = _uint8_batch()
    plain, last = DevicePrep(CPU, False, MEAN, STD)(x), DevicePrep(CPU, True, MEAN, STD)(x)
    assert last.is_contiguous(memory_format=torch.channels_last_3d) and not plain.is_contiguous(
        memory_format=torch.channels_last_3d)
    n, c, t, h, w = x.shape
    assert last.stride() == (c * t * h * w, 1, h * w * c, w * c, c)
    assert torch.equal(last, plain)  # the same numbers in another layout


def test_float_batches_pass_through_unchanged():
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    y = DevicePrep(CPU, False, MEAN, STD)(x)
    assert y.dtype == torch.float64 and torch.equal(y, x)
    assert torch.equal(DevicePrep(CPU)(x.float()), x.float())  # no mean/std needed for float batches
    z = DevicePrep(CPU, True)(x)
    assert torch.equal(z, x) and z.is_contiguous(memory_format=torch.channels_last_3d)


def test_uint8_without_mean_and_std_is_refused():
    with pytest.raises(ValueError, match="uint8 video batch needs DATA.MEAN and DATA.STD"):
        DevicePrep(CPU, False)(_uint8_batch())
    with pytest.raises(ValueError, match="DATA.MEAN"):
        DevicePrep(CPU, False, MEAN)(_uint8_batch())


def test_built_from_the_config_keys():
    cfg = get_cfg()
    cfg.TRAIN.CHANNELS_LAST, cfg.DATA.MEAN, cfg.DATA.STD = False, MEAN, STD
    prep = build_device_prep(cfg, CPU)
    assert prep == DevicePrep(CPU, False, tuple(MEAN), tuple(STD))
    cfg.TRAIN.CHANNELS_LAST = True
    assert build_device_prep(cfg, "cpu").channels_last and build_device_prep(cfg, "cpu").device == CPU


def test_fit_settings_share_one_eval_settings_with_the_final_test(tmp_path):
    """build_fit_settings composes the objects: the training step, the validation and the final test
    take one DevicePrep; the checkpoint policy holds TRAIN.*'s checkpoint keys."""
    from gcvideo.engine.tester import TestSettings, build_eval_settings, build_test_settings
    from gcvideo.engine.trainer import CheckpointPolicy, build_fit_settings

    cfg = tiny_cfg(tmp_path / "run", "TRAIN.TEST_AT_END", True, "TRAIN.CHECKPOINT_ITERS", 3, "TRAIN.KEEP_LAST", 4, "TEST.BATCH_SIZE", 5,
                   "DATA.MEAN", MEAN)
    fs = build_fit_settings(cfg, CPU)
    assert fs.test is not None and fs.test.eval is fs.eval and fs.prep is fs.eval.prep
    assert fs.prep == DevicePrep(CPU, cfg.TRAIN.CHANNELS_LAST, tuple(MEAN), tuple(cfg.DATA.STD))
    assert fs.checkpoints == CheckpointPolicy(cfg.TRAIN.AUTO_RESUME, cfg.TRAIN.CHECKPOINT_PERIOD, 3, 4,
                                              cfg.TRAIN.KEEP_BEST)
    assert (fs.eval.batch_size, fs.eval.num_classes, fs.loader.num_workers) == (5, cfg.MODEL.NUM_CLASSES,
                                                                                cfg.DATA.NUM_WORKERS)
    ts = build_test_settings(cfg, build_eval_settings(cfg, CPU))
    assert isinstance(ts, TestSettings) and ts.views == (cfg.TEST.NUM_ENSEMBLE_VIEWS, cfg.TEST.NUM_SPATIAL_CROPS)
    assert ts.eval == fs.eval and ts.output_dir == str(tmp_path / "run")
    assert build_fit_settings(tiny_cfg(tmp_path / "b"), CPU).test is None  # (TRAIN.TEST_AT_END False)


def test_the_engine_exports_what_a_notebook_needs_to_run_the_loop():
    """train_one_epoch from the package alone (a notebook's driver): one step on a float batch."""
    import gcvideo.engine as engine
    from gcvideo.engine.optim import WarmupCosineSchedule

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 2 * 4 * 4, 5))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    schedule = WarmupCosineSchedule(opt, lr=0.0, max_epoch=1, warmup_epochs=0, warmup_start_factor=1.0,
                                    end_factor=1.0, iters_per_epoch=1)
    batch = {"video": torch.randn(4, 3, 2, 4, 4), "label": torch.randint(0, 5, (4,))}
    with torch.no_grad():
        want = torch.nn.functional.cross_entropy(model(batch["video"]), batch["label"]).item()
    stats = engine.train_one_epoch(model, None, opt, schedule, [batch], engine.DevicePrep(CPU),
                                   engine.EpochPosition(0, 1), engine.StepNumerics(torch.amp.GradScaler("cpu", enabled=False)),
                                   hooks=engine.StepHooks(log_period=1))
    assert stats["iters"] == 1 and stats["global_iter"] == 1 and abs(stats["loss"] - want) < 1e-6
