"""A tiny dataset that follows the gcvideo.data item contract (docs/DESIGN.md), for engine tests.

Class c is a bright square at a class-specific position, plus noise drawn from
(seed, epoch, index): the same item is the same tensor for the same epoch, in
any process, before or after a restart.
"""
from __future__ import annotations

import os
from typing import Iterable

import torch
from torch.utils.data import Dataset

from gcvideo.config import load_cfg


class SyntheticVideos(Dataset):
    def __init__(self, num_videos: int, num_classes: int, frames: int = 4, size: int = 32, views: int = 1,
                 mode: str = "train", failed: Iterable[int] = (), skipped: Iterable[int] = (), seed: int = 0,
                 nan_epoch: int = -1, signal_at=None):
        self.n, self.k, self.t, self.s, self.v = num_videos, num_classes, frames, size, views
        self.mode, self.failed, self.skipped, self.seed = mode, set(failed), set(skipped), seed
        self.nan_epoch = nan_epoch  # every clip of this epoch is NaN
        # (epoch, n, signal, marker[, rank]): send ``signal`` to this process (of that rank only, if
        # given) at the n-th item of ``epoch``, once (the marker file records that it happened and
        # holds the process id)
        self.signal_at = signal_at
        self.epoch, self.count = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self.count = epoch, 0

    def __len__(self) -> int:
        return self.n

    def label(self, index: int) -> int:
        return index % self.k

    def _clip(self, index: int, view: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + index * 31 + view)
        x = 0.3 * torch.randn(3, self.t, self.s, self.s, generator=g)  # (3, T, H, W)
        c = self.label(index)
        q = self.s // 4
        r, col = (c // 4) % 4, c % 4
        x[:, :, r * q:(r + 1) * q, col * q:(col + 1) * q] += 1.5
        if self.epoch == self.nan_epoch:
            x[:] = float("nan")
        return x

    def __getitem__(self, index: int) -> dict:
        label = self.label(index)
        item = {"label": label, "index": index, "path": f"video_{index:04d}.mp4", "ok": True, "error": "",
                "skipped": ""}
        self.count += 1
        if self.signal_at is not None:
            epoch, n, sig, marker, *rank = self.signal_at
            if self.epoch == epoch and self.count == n and not os.path.exists(marker) and \
                    (not rank or int(os.environ.get("RANK", "0")) == rank[0]):
                with open(marker, "w") as f:
                    f.write(str(os.getpid()))
                os.kill(os.getpid(), sig)
        if self.mode == "train":
            item["video"] = self._clip(index, 0)
            if index in self.skipped:
                item["skipped"] = f"broken_{index:04d}.mp4\tcannot decode"
            return item
        if index in self.failed:
            item.update(ok=False, error="cannot decode: synthetic failure",
                        video=torch.zeros(self.v, 3, self.t, self.s, self.s))
            return item
        item["video"] = torch.stack([self._clip(index, v) for v in range(self.v)])  # (V, 3, T, H, W)
        return item


def tiny_cfg(output_dir: str, *opts, num_classes: int = 4):
    """A small, fast, deterministic config for engine tests."""
    base = ["OUTPUT_DIR", str(output_dir), "MODEL.WIDTH", 8, "MODEL.STAGE_DEPTHS", [1, 1, 1, 1],
            "MODEL.NUM_CLASSES", num_classes, "DATA.NUM_FRAMES", 4, "DATA.TRAIN_JITTER_SCALES", [32, 32],
            "DATA.TRAIN_CROP_SIZE", 32, "DATA.TEST_CROP_SIZE", 32, "DATA.NUM_WORKERS", 0,
            "TRAIN.BATCH_SIZE", 4, "TRAIN.CHANNELS_LAST", False, "TRAIN.LOG_PERIOD", 1,
            "TRAIN.TEST_AT_END", False, "TRAIN.EVAL_PERIOD", 0, "TRAIN.DETERMINISTIC", True,
            "SOLVER.MAX_EPOCH", 2, "SOLVER.WARMUP_EPOCHS", 1.0, "SOLVER.BASE_LR", 0.05,
            "SOLVER.REFERENCE_BATCH_SIZE", 4, "TEST.NUM_ENSEMBLE_VIEWS", 2, "TEST.NUM_SPATIAL_CROPS", 1,
            "DEVICE", "cpu"]
    opts = [str(o) if not isinstance(o, str) else o for o in list(base) + list(opts)]
    given = dict(zip(opts[0::2], opts[1::2]))
    if float(given["SOLVER.WARMUP_EPOCHS"]) >= float(given["SOLVER.MAX_EPOCH"]):  # e.g. MAX_EPOCH 1
        opts += ["SOLVER.WARMUP_EPOCHS", str(float(given["SOLVER.MAX_EPOCH"]) / 2)]  # must end before training
    return load_cfg(None, opts)


def builder(num_videos: int = 16, val_videos: int = 6, views: int = 2, **kw):
    """dataset_builder(cfg, split) over SyntheticVideos."""
    def build(cfg, split):
        k = cfg.MODEL.NUM_CLASSES
        if split == "train":
            return SyntheticVideos(num_videos, k, mode="train", seed=cfg.SEED, **kw.get("train", {}))
        v = 1 if split == "val" else views
        return SyntheticVideos(val_videos, k, views=v, mode="test", seed=cfg.SEED + 1, **kw.get("test", {}))
    return build
