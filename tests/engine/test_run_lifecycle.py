"""A run as a user meets it (issue 35): mistakes refused before any work, Ctrl-C, a finished run
rerun, the best checkpoint, the test split of a PySlowFast-style folder."""
import os

import pytest

from engine_synthetic import builder, tiny_cfg
from gcvideo.config import ConfigError
from gcvideo.engine import train


def test_label_map_of_another_class_count_is_refused_before_any_work(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("run\njump\nswim\nclimb\n")  # 4 classes
    out = tmp_path / "run"
    cfg = tiny_cfg(out, "DATA.LABEL_MAP", str(labels), num_classes=6)
    built = []
    with pytest.raises(ConfigError, match=r"lists 4 classes but MODEL\.NUM_CLASSES = 6: set MODEL\.NUM_CLASSES 4"):
        train(cfg, dataset_builder=lambda c, split: built.append(split))
    assert built == [] and not out.exists()  # no data read, nothing written
