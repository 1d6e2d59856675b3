"""The test report names how its numbers were made: view protocol, head pooling, views and crop;
a test with another view protocol writes its own report folder instead of replacing the first."""
import json
import os

import torch

import gcvideo.engine as engine
from engine_synthetic import builder, tiny_cfg
from gcvideo.models import build_model


def test_report_names_protocol_head_and_views_and_keeps_both_reports(tmp_path, capsys):
    out = tmp_path / "run"
    cfg = tiny_cfg(out)
    (out / "checkpoints").mkdir(parents=True)
    torch.save(build_model(cfg).state_dict(), out / "checkpoints" / "checkpoint_epoch0001.pth")
    first = engine.test(cfg, dataset_builder=builder())
    cfg.defrost()
    cfg.TEST.VIEW_PROTOCOL = "pyslowfast"
    second = engine.test(cfg, dataset_builder=builder())
    assert first["report_dir"].endswith("test_checkpoint_epoch0001_2x1")  # the default's folder as before
    assert second["report_dir"].endswith("test_checkpoint_epoch0001_2x1_pyslowfast")
    reports = [json.load(open(os.path.join(r["report_dir"], "report.json"))) for r in (first, second)]
    assert [r["view_protocol"] for r in reports] == ["gcvideo", "pyslowfast"]
    for r in reports:
        assert r["head_pool"] == cfg.MODEL.HEAD_POOL and r["views_clips_crops"] == [2, 1]
        assert r["test_crop_size"] == cfg.DATA.TEST_CROP_SIZE
    text = open(os.path.join(second["report_dir"], "report.txt")).read()
    assert text.startswith(f"2x1 views (view_protocol pyslowfast, head_pool {cfg.MODEL.HEAD_POOL}, "
                           f"test_crop_size {cfg.DATA.TEST_CROP_SIZE}): top-1 ")
    assert "2x1 views (view_protocol pyslowfast" in capsys.readouterr().out
