"""SGD with weight-decay groups, linear LR scaling, and the warmup + cosine schedule.

Schedule (in epochs t, fractional within an epoch, as PySlowFast's ``cosine``
policy with linear warmup):

    cos(t)  = lr_end + (lr - lr_end) * (1 + cos(pi * t / MAX_EPOCH)) / 2
    lr(t)   = lr_start + (cos(W) - lr_start) * t / W      for t < W = WARMUP_EPOCHS
    lr(t)   = cos(t)                                       otherwise

with ``lr = BASE_LR * TRAIN.BATCH_SIZE / SOLVER.REFERENCE_BATCH_SIZE`` (linear
scaling with the global batch: the videos of one optimizer step, all processes and
TRAIN.ACCUM_STEPS micro-batches together; an iteration is one optimizer step), ``lr_start = WARMUP_START_FACTOR * lr`` and
``lr_end = COSINE_END_FACTOR * lr``.
"""
from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn as nn
from fvcore.common.config import CfgNode

from gcvideo.config import OPTIMIZERS

__all__ = ["scaled_lr", "param_groups", "build_optimizer", "WarmupCosineSchedule", "build_schedule"]

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def scaled_lr(base_lr: float, batch_size: int, reference_batch_size: int) -> float:
    """``base_lr`` (for ``reference_batch_size`` clips) scaled linearly to the global ``batch_size``."""
    return base_lr * batch_size / reference_batch_size


def param_groups(model: nn.Module, weight_decay: float, zero_wd_norm_bias: bool) -> List[Dict]:
    """Two groups: decayed weights, and (if asked) norm-layer parameters and biases without decay."""
    no_decay_ids = set()
    if zero_wd_norm_bias:
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                if isinstance(module, _NORM_TYPES) or name == "bias":
                    no_decay_ids.add(id(p))
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if id(p) in no_decay_ids else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "name": "decay"}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "name": "no_decay"})
    return groups


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZING_METHOD over ``param_groups``, at the linearly scaled base LR."""
    s = cfg.SOLVER
    groups = param_groups(model, s.WEIGHT_DECAY, s.ZERO_WD_NORM_BIAS)
    lr = scaled_lr(s.BASE_LR, cfg.TRAIN.BATCH_SIZE, s.REFERENCE_BATCH_SIZE)
    method = s.OPTIMIZING_METHOD
    # foreach: one multi-tensor update over all parameters instead of a loop over them (torch picks it
    # on GPUs only; on the CPU it takes the toy step from 128 to 121 ms, bench/results/toy.md)
    if method == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=s.MOMENTUM, nesterov=s.NESTEROV and s.MOMENTUM > 0,
                               weight_decay=s.WEIGHT_DECAY, foreach=True)
    if method == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(s.BETAS), weight_decay=s.WEIGHT_DECAY, foreach=True)
    raise ValueError(f"SOLVER.OPTIMIZING_METHOD = {method!r}; expected one of {list(OPTIMIZERS)}")


class WarmupCosineSchedule:
    """Sets the LR of every optimizer group from the training progress (one call per iteration)."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, lr: float, max_epoch: float,
                 warmup_epochs: float, warmup_start_factor: float, end_factor: float,
                 iters_per_epoch: int):
        self.optimizer = optimizer
        self.lr, self.max_epoch, self.warmup_epochs = lr, float(max_epoch), float(warmup_epochs)
        self.start_factor, self.end_factor = warmup_start_factor, end_factor
        self.iters_per_epoch = iters_per_epoch
        self.last_iter = -1

    def lr_at(self, t: float) -> float:
        """Learning rate at ``t`` epochs of progress."""
        lr_end = self.end_factor * self.lr

        def cosine(x: float) -> float:
            return lr_end + (self.lr - lr_end) * (1 + math.cos(math.pi * x / self.max_epoch)) / 2

        if t < self.warmup_epochs:
            start = self.start_factor * self.lr
            return start + (cosine(self.warmup_epochs) - start) * t / self.warmup_epochs
        return cosine(t)

    def step(self, global_iter: int) -> float:
        """Set the LR for iteration ``global_iter`` (0-based, counted over all epochs)."""
        self.last_iter = global_iter
        lr = self.lr_at(global_iter / self.iters_per_epoch)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        return lr

    def state_dict(self) -> Dict:
        return {"lr": self.lr, "max_epoch": self.max_epoch, "warmup_epochs": self.warmup_epochs,
                "warmup_start_factor": self.start_factor, "end_factor": self.end_factor,
                "iters_per_epoch": self.iters_per_epoch, "last_iter": self.last_iter}

    def load_state_dict(self, state: Dict) -> None:
        # The schedule follows the (possibly changed) config; only the position is restored.
        self.last_iter = int(state.get("last_iter", -1))


def build_schedule(cfg: CfgNode, optimizer: torch.optim.Optimizer, iters_per_epoch: int) -> WarmupCosineSchedule:
    s = cfg.SOLVER
    return WarmupCosineSchedule(optimizer, lr=scaled_lr(s.BASE_LR, cfg.TRAIN.BATCH_SIZE, s.REFERENCE_BATCH_SIZE),
                                max_epoch=s.MAX_EPOCH,
                                warmup_epochs=s.WARMUP_EPOCHS, warmup_start_factor=s.WARMUP_START_FACTOR,
                                end_factor=s.COSINE_END_FACTOR, iters_per_epoch=iters_per_epoch)
