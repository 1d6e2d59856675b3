"""gcvideo.models.weights_file: any weights file -> a flat state dict, one entry point."""
import os

import pytest
import torch

import gcvideo.models
from gcvideo.models.weights_file import WeightsFile, read_weights_file


def test_read_weights_file_unwraps_and_keeps_the_writers_meta(tmp_path):
    a, b = torch.arange(6.0).reshape(2, 3), torch.ones(4, dtype=torch.int64)
    path = str(tmp_path / "w.pyth")  # PySlowFast's layout: model_state, DataParallel prefix, cfg text
    torch.save({"model_state": {"module.a": a, "module.b": b}, "cfg": "MODEL:\n  ARCH: slow\n", "epoch": 3}, path)
    got = read_weights_file(path)
    assert isinstance(got, WeightsFile) and got.source == path and got.skipped == []
    assert list(got.state_dict) == ["a", "b"]
    assert torch.equal(got.state_dict["a"], a) and torch.equal(got.state_dict["b"], b)
    assert got.meta == {"cfg": "MODEL:\n  ARCH: slow\n"}  # plain metadata only, not the epoch
    mem = read_weights_file({"state_dict": {"a": a}})  # an in-memory checkpoint reads the same way
    assert mem.source == "<state dict>" and torch.equal(mem.state_dict["a"], a)


def test_models_files_are_not_named_like_the_engines_training_checkpoints():
    # training checkpoints: gcvideo/engine; weights into a model: pretrained.py; files: weights_file.py
    folder = os.path.dirname(gcvideo.models.__file__)
    assert [f for f in os.listdir(folder) if f.startswith("checkpoint")] == []
    assert {"pretrained.py", "weights_file.py"} <= set(os.listdir(folder))


def test_the_checkpoint_errors_say_what_went_wrong(tmp_path):
    """CheckpointError: cannot be used; CorruptCheckpointError: does not read; CheckpointMismatchError:
    reads but does not fit the model; InflationError: its 2D-inflation case (not the other way round)."""
    from gcvideo.config import get_cfg
    from gcvideo.models import (CheckpointMismatchError, InflationError, build_model, build_model_from_checkpoint,
                                inflate_state_dict)
    from gcvideo.utils.io import CheckpointError, CorruptCheckpointError

    assert issubclass(CheckpointMismatchError, CheckpointError) and issubclass(CheckpointMismatchError, ValueError)
    assert issubclass(InflationError, CheckpointMismatchError)
    assert not issubclass(CheckpointMismatchError, InflationError)
    assert not issubclass(CorruptCheckpointError, CheckpointMismatchError)
    cfg = get_cfg()
    cfg.MODEL.WIDTH, cfg.MODEL.STAGE_DEPTHS = 8, [1, 1, 1, 1]
    other = cfg.clone()
    other.MODEL.NUM_CLASSES = 7
    path = str(tmp_path / "seven.pth")
    torch.save(build_model(other).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="class count") as e:  # a 3D checkpoint: no inflation
        build_model_from_checkpoint(cfg, path)
    assert type(e.value) is CheckpointMismatchError
    with pytest.raises(InflationError, match="no weights for backbone key"):
        inflate_state_dict({"conv1.weight": torch.zeros(8, 3, 7, 7), "layer1.0.conv1.weight": torch.zeros(2, 8, 1, 1)},
                           build_model(cfg))
