"""The test loop's progress bar counts videos (with their views), as each batch completes."""
import io

import torch

from gcvideo.engine import tester
from gcvideo.models import build_model
from gcvideo.utils.progress import progress_bar

from engine_synthetic import builder, tiny_cfg


def test_test_progress_counts_videos_as_each_batch_completes(tmp_path, monkeypatch):
    """7 synthetic videos of 2 views in batches of 4 (TEST.BATCH_SIZE): the bar's total is 7 videos,
    it stands at 4 then 7 (not 0/2 batches), its unit is the video and it shows the views."""
    bars, seen = [], []

    def recording_bar(**kw):
        bar = progress_bar(**kw, file=io.StringIO())
        update = bar.update
        bar.update = lambda n=1: (update(n), seen.append(bar.n))
        bars.append(bar)
        return bar

    monkeypatch.setattr(tester, "progress_bar", recording_bar)
    cfg = tiny_cfg(tmp_path, "TEST.BATCH_SIZE", 4)
    dataset = builder(val_videos=7, views=2)(cfg, "test")
    torch.manual_seed(0)
    settings = tester.build_test_settings(cfg, tester.build_eval_settings(cfg, torch.device("cpu")))
    out = tester.run_test(build_model(cfg), dataset, settings, "progress")
    assert out["metrics"]["all"]["videos"] == 7
    [bar] = bars
    assert (bar.total, bar.n, bar.unit) == (7, 7, "video")
    assert seen == [4, 7]
    text = bar.fp.getvalue()
    assert "7/7" in text and ("video/s" in text or "s/video" in text) and "2 views each" in text
