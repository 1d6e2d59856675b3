"""uint8 test views (DATA.EVAL_UINT8) normalised on the device give the same scores as float32 items."""
import os

import pytest
import torch

from gcvideo.config import get_cfg
from gcvideo.data import build_dataset
from gcvideo.engine.device_prep import DevicePrep
from gcvideo.engine.tester import build_eval_loader, evaluate
from gcvideo.models import build_model

FILES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "files")


@pytest.mark.parametrize("channels_last", [False, True])
def test_same_scores_as_float_items(tmp_path, channels_last):
    (tmp_path / "test.csv").write_text("".join(f"{os.path.join(FILES, n)} {i}\n" for i, n in
                                               enumerate(["demo.mp4", "missing.mp4", "test.avi"])))
    cfg = get_cfg()
    cfg.DATA.PATH_TO_DATA_DIR = str(tmp_path)
    cfg.DATA.TEST_CROP_SIZE, cfg.TEST.NUM_ENSEMBLE_VIEWS = 64, 2
    cfg.DATA.MEAN, cfg.DATA.STD = [0.43, 0.45, 0.47], [0.22, 0.225, 0.23]
    cfg.MODEL.WIDTH, cfg.MODEL.STAGE_DEPTHS, cfg.MODEL.NUM_CLASSES = 8, [1, 1, 1, 1], 5
    cfg.CONTEXT.TYPE, cfg.CONTEXT.LOCATION, cfg.CONTEXT.ZERO_INIT = "gc", [[], [0], [0], [0]], False
    torch.manual_seed(0)
    model = build_model(cfg)
    results = {}
    for uint8 in (True, False):
        cfg.DATA.EVAL_UINT8 = uint8
        ds = build_dataset(cfg, "test")
        assert ds[0]["video"].dtype == (torch.uint8 if uint8 else torch.float32)
        prep = DevicePrep(torch.device("cpu"), channels_last, cfg.DATA.MEAN, cfg.DATA.STD)
        res = evaluate(model, build_eval_loader(ds, 2, 0, False), prep, num_classes=5)
        results[uint8] = res
    a, b = results[True], results[False]
    assert a.ok.tolist() == b.ok.tolist() == [True, False, True]
    assert torch.equal(a.scores, b.scores) and a.scores[0].sum() > 0.99


def test_uint8_batch_needs_mean_and_std():
    x = torch.zeros(1, 3, 2, 4, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match="DATA.MEAN"):
        DevicePrep(torch.device("cpu"), False)(x)
    y = DevicePrep(torch.device("cpu"), True, [0.5] * 3, [0.25] * 3)(x + 255)
    assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y, torch.full_like(y, (1.0 - 0.5) / 0.25))
