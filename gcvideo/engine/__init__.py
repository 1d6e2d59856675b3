"""Training and multi-view evaluation engine.

Public API:
- ``train(cfg)``: train (one process, or every process of a torchrun launch), resuming
  automatically from the newest checkpoint in OUTPUT_DIR; validates and tests at the end.
- ``test(cfg)``: TEST.NUM_ENSEMBLE_VIEWS x TEST.NUM_SPATIAL_CROPS-view test of a checkpoint.
- ``train_one_epoch`` and ``evaluate``: the two loops, for use in notebooks and other drivers, with
  ``DevicePrep`` (batches onto the device) and the loop's ``EpochPosition``, ``StepNumerics``, ``StepHooks``.
"""
from gcvideo.engine.device_prep import DevicePrep
from gcvideo.engine.metrics import combine_views, compute_metrics
from gcvideo.engine.tester import EvalResult, evaluate, test
from gcvideo.engine.trainer import (EpochPosition, NonFiniteLossError, StepHooks, StepNumerics, TrainingStopped, train,
                                    train_one_epoch)

__all__ = ["train", "test", "train_one_epoch", "evaluate", "EvalResult", "combine_views", "compute_metrics",
           "NonFiniteLossError", "TrainingStopped", "DevicePrep", "EpochPosition", "StepNumerics", "StepHooks"]
