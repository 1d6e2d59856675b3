"""Training and multi-view evaluation engine.

Public API:
- ``train(cfg)``: train (one process, or every process of a torchrun launch), resuming
  automatically from the newest checkpoint in OUTPUT_DIR; validates and tests at the end.
- ``test(cfg)``: TEST.NUM_ENSEMBLE_VIEWS x TEST.NUM_SPATIAL_CROPS-view test of a checkpoint.
- ``train_one_epoch`` and ``evaluate``: the two loops, for use in notebooks and other drivers.
"""
from gcvideo.engine.metrics import combine_views, compute_metrics
from gcvideo.engine.tester import EvalResult, evaluate, test
from gcvideo.engine.trainer import NonFiniteLossError, TrainingStopped, train, train_one_epoch

__all__ = ["train", "test", "train_one_epoch", "evaluate", "EvalResult", "combine_views", "compute_metrics",
           "NonFiniteLossError", "TrainingStopped"]
