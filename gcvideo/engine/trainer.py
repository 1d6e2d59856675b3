"""Training: ``train(cfg)`` sets a run up and loops over epochs; ``train_one_epoch`` is one epoch.

The same code runs one CPU process, one GPU, or ``torchrun`` over many machines
(DDP; nccl on GPUs, gloo on CPUs). Restarting the same command resumes from the
newest complete checkpoint in OUTPUT_DIR; with TRAIN.DETERMINISTIC a run killed
mid-epoch ends with the same weights as an uninterrupted one, because the
checkpoint holds the position inside the epoch and every RNG state, the sampler
order depends only on (SEED, epoch), and data augmentation only on
(SEED, epoch, index).

A run is four steps (``train``): set-up (every check that can fail before any file is
written: data, model, initial weights, the test annotation), the output folder (lock,
leftovers, config.yaml: ``output_dir.py``), resume, fit (the epochs), and the final multi-view
test; SIGTERM / Ctrl-C are handled by ``signals.py``.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from gcvideo.config import dump_cfg
from gcvideo.data.broken import BrokenVideoTracker
from gcvideo.data.dataset import build_dataset, collate_train
from gcvideo.data.mixup import build_mixup
from gcvideo.engine import distributed as du
from gcvideo.engine.run_checkpoints import (RunPosition, TrainingObjects, best_checkpoint_path, checkpoint_dir,
                                            get_rng_state, list_checkpoints, load_latest_checkpoint,
                                            restore_training_state, rng_state_of, save_checkpoint, set_rng_state,
                                            training_state)
from gcvideo.engine.loader import TrainLoader
from gcvideo.engine.logger import RunLogger, format_duration
from gcvideo.engine.device_prep import DevicePrep
from gcvideo.engine.memory_format import model_channels_last
from gcvideo.engine.output_dir import claim_output_dir
from gcvideo.engine.optim import WarmupCosineSchedule, build_optimizer, build_schedule, scaled_lr
from gcvideo.engine.precision import autocast, autocast_dtype, print_slow_bf16_warning
from gcvideo.engine.signals import StopSignals, TrainingStopped
from gcvideo.engine.tester import (EvalSettings, LoaderSettings, TestSettings, build_eval_loader, build_eval_settings,
                                   build_test_set, build_test_settings, class_names, earlier_report, evaluate,
                                   run_test)
from gcvideo.layers.losses import build_criterion
from gcvideo.models import build_model, load_pretrained
from gcvideo.utils.device import select_device
from gcvideo.utils.errors import UserError
from gcvideo.utils.io import atomic_save, load_checkpoint_file
from gcvideo.utils.cpu_tuning import tune_cpu
from gcvideo.utils.reproducibility import seed_everything, set_determinism
from gcvideo.utils.torch_private import BatchNormBase

__all__ = ["train", "train_one_epoch", "EpochMeters", "EpochPosition", "StepNumerics", "StepHooks", "FitSettings",
           "CheckpointPolicy", "build_checkpoint_policy", "build_fit_settings", "build_run", "NonFiniteLossError",
           "TrainingStopped", "precise_bn"]

DatasetBuilder = Callable[[CfgNode, str], Dataset]


class NonFiniteLossError(UserError, RuntimeError):
    """The loss became NaN or infinite; training stopped before the weights were updated."""


@dataclass
class EpochMeters:
    """Running sums of one epoch; mid-epoch checkpoints hold them, so that a resumed epoch's
    mean loss covers all its iterations."""
    loss_sum: float = 0.0
    iters: int = 0
    data_s: float = 0.0
    time_s: float = 0.0

    def summary(self) -> Dict[str, float]:
        return {"loss": self.loss_sum / max(self.iters, 1), "data_share": self.data_s / max(self.time_s, 1e-9),
                "iters": self.iters, "time_s": self.time_s}


def _non_finite(what: str, epoch: int, it: int, iters_per_epoch: int, global_iter: int) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"{what} at epoch {epoch + 1}, iteration {it + 1} of {iters_per_epoch} (global iteration "
        f"{global_iter + 1}); stopping before the weights change. Lower SOLVER.BASE_LR or set "
        "SOLVER.CLIP_GRAD_NORM and restart")


# ---------------------------------------------------------------------------
# One epoch
# ---------------------------------------------------------------------------
@dataclass
class EpochPosition:
    """Which iterations a ``train_one_epoch`` call runs: ``start_iter..iters_per_epoch-1`` of ``epoch``
    (0-based), the run's ``global_iter`` before them of ``total_iters`` (None: this epoch's), and
    ``meters``, the epoch's sums so far (a resumed epoch; None: from zero)."""
    epoch: int
    iters_per_epoch: int
    start_iter: int = 0
    global_iter: int = 0
    total_iters: Optional[int] = None
    meters: Optional[EpochMeters] = None


@dataclass
class StepNumerics:
    """How a step computes: the grad scaler (enabled for fp16 only), the autocast dtype (None: fp32),
    the gradient-norm clip (0: none) and the micro-batches a step accumulates (TRAIN.ACCUM_STEPS)."""
    scaler: torch.amp.GradScaler
    amp_dtype: Optional[torch.dtype] = None
    clip_norm: float = 0.0
    accum_steps: int = 1


@dataclass
class StepHooks:
    """What the loop reports to: ``logger`` (a JSON line every ``log_period`` iterations, the progress
    bar), ``stop_requested()`` (SIGTERM seen), ``on_skipped(lines)`` (the ``path<TAB>reason`` lines of
    videos the loader replaced; every process gets all of them), ``on_step(iters_done, global_iter,
    meters, stop)`` (after each step: checkpoints, SIGTERM)."""
    logger: Optional[RunLogger] = None
    log_period: int = 10
    stop_requested: Callable[[], bool] = lambda: False
    on_skipped: Optional[Callable[[List[str]], None]] = None
    on_step: Optional[Callable[[int, int, EpochMeters, bool], None]] = None


def train_one_epoch(model: nn.Module, criterion: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
                    optimizer: torch.optim.Optimizer, schedule: WarmupCosineSchedule, loader: Iterable[Dict],
                    prep: DevicePrep, position: EpochPosition, numerics: StepNumerics,
                    batch_transform: Optional[Callable[..., Tuple[torch.Tensor, torch.Tensor]]] = None,
                    hooks: Optional[StepHooks] = None) -> Dict:
    """Train the iterations of ``position`` (one optimizer step per ``loader`` batch).

    ``criterion(logits, target)``: the loss (``gcvideo.layers.losses.build_criterion``; None: plain
    cross-entropy); ``prep(video)``: the batch's clips on the device (``DevicePrep``);
    ``batch_transform(x, labels, epoch=, it=)``: clips and targets of a step on the device (Mixup/CutMix,
    ``gcvideo.data.mixup.build_mixup``; its draws depend on the step only, so a resumed run repeats them);
    ``hooks``: logging, stop requests, skipped videos, the step hook (``StepHooks``). Returns the epoch's
    mean loss and timings, ``global_iter`` and ``stop`` (SIGTERM seen in the last iteration).
    With ``numerics.accum_steps`` K > 1 each batch runs as K micro-batches whose gradients add up to the
    whole batch's (TRAIN.ACCUM_STEPS, ``_micro_batches``).
    """
    epoch, iters_per_epoch, start_iter, global_iter = (position.epoch, position.iters_per_epoch,
                                                       position.start_iter, position.global_iter)
    scaler, amp_dtype, clip_norm, accum_steps = numerics.scaler, numerics.amp_dtype, numerics.clip_norm, \
        numerics.accum_steps
    hooks = hooks if hooks is not None else StepHooks()
    logger, log_period, stop_requested, on_skipped, on_step = (hooks.logger, hooks.log_period, hooks.stop_requested,
                                                               hooks.on_skipped, hooks.on_step)
    meters, total_iters = position.meters, position.total_iters
    world = du.get_world_size()
    criterion = criterion if criterion is not None else F.cross_entropy
    meters = meters if meters is not None else EpochMeters()
    total_iters = total_iters or iters_per_epoch
    model.train()
    bar = None if logger is None else \
        logger.progress_bar(iters_per_epoch, start_iter, f"epoch {epoch + 1}/{-(-total_iters // iters_per_epoch)}")
    window = {"loss": 0.0, "n": 0, "data": 0.0, "time": 0.0, "clips": 0}
    stop, run_time, run_iters = False, 0.0, 0
    tic = time.perf_counter()
    for it, batch in enumerate(loader, start=start_iter):
        # 1. time spent waiting for the loader
        t_data = time.perf_counter() - tic
        du.step_started(global_iter)  # this process's heartbeat: a stalled rank gets named
        # 2. learning rate of this iteration (warmup, then cosine)
        lr = schedule.step(global_iter)
        optimizer.zero_grad(set_to_none=True)
        clips, loss = batch["video"].shape[0], None
        for video, label, share, last in _micro_batches(batch, accum_steps):  # one (the batch) unless accumulating
            # 3. clips and labels to the device: (B, 3, T, H, W), (B,) (B = videos x DATA.NUM_SAMPLES;
            #    uint8 clips are normalised there)
            x = prep(video)
            y = label.to(prep.device, non_blocking=True)
            if batch_transform is not None:  # Mixup/CutMix (within the micro-batch): mixed clips, targets (B, K)
                x, y = batch_transform(x, y, epoch=epoch, it=it)
            with _grad_sync(model, last):  # DDP all-reduces the gradients after the last micro-batch only
                # 4. forward and the loss (in autocast when mixed precision is on)
                with autocast(prep.device, amp_dtype):
                    logits = model(x)  # (B, K)
                micro_loss = _weighted(criterion(logits.float(), y), share)
                # 5. backward; gradients add up over micro-batches; the weights do not change yet
                scaler.scale(micro_loss).backward()
            loss = micro_loss.detach() if loss is None else loss + micro_loss.detach()
        # gradient norm of the whole batch's gradient (clipped if asked)
        scaler.unscale_(optimizer)  # no-op without fp16
        if clip_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        # 6. the step's one read to the host (and one all-reduce with several processes): loss, gradient
        #    norm, stop request, videos skipped as broken
        skipped = [s for s in batch.get("skipped", []) if s]
        flags = torch.cat([torch.stack([loss.detach(), grad_norm.detach()]).double(),
                           torch.tensor([float(stop_requested()), float(len(skipped))], dtype=torch.float64,
                                        device=loss.device)])
        flags = du.all_reduce_sum(flags) if world > 1 else flags
        loss_sum, norm_sum, stop_sum, skipped_sum = flags.cpu().tolist()
        mean_loss, stop, n_skipped = loss_sum / world, stop_sum > 0, int(skipped_sum)
        # 7. a NaN / infinite loss or gradient stops training before the weights change (with fp16 the
        #    grad scaler skips steps with non-finite gradients instead)
        if not math.isfinite(mean_loss):
            raise _non_finite(f"loss is {mean_loss}", epoch, it, iters_per_epoch, global_iter)
        if not scaler.is_enabled() and not math.isfinite(norm_sum):
            raise _non_finite(f"gradient norm is {norm_sum / world} (loss {mean_loss:.4g})", epoch, it,
                              iters_per_epoch, global_iter)
        scaler.step(optimizer)
        scaler.update()
        global_iter += 1
        # 8. broken videos the loader replaced: every process learns them
        if n_skipped and on_skipped is not None:
            for lines in du.all_gather_object(skipped):
                on_skipped(lines)
        # 9. meters, JSON log line, progress bar
        t_iter = time.perf_counter() - tic
        meters.loss_sum, meters.iters = meters.loss_sum + mean_loss, meters.iters + 1
        meters.data_s, meters.time_s = meters.data_s + t_data, meters.time_s + t_iter
        run_time, run_iters = run_time + t_iter, run_iters + 1
        window = {"loss": window["loss"] + mean_loss, "n": window["n"] + 1, "data": window["data"] + t_data,
                  "time": window["time"] + t_iter, "clips": window["clips"] + clips * world}
        eta = (total_iters - global_iter) * run_time / run_iters
        if logger is not None and ((it + 1) % log_period == 0 or it + 1 == iters_per_epoch):
            logger.log_iter({"epoch": epoch + 1, "iter": it + 1, "global_iter": global_iter,
                             "epoch_progress": epoch + (it + 1) / iters_per_epoch,
                             "loss": window["loss"] / window["n"], "lr": lr,
                             "clips_per_s": window["clips"] / window["time"],
                             "data_share": window["data"] / window["time"], "eta_s": eta})
            window = {"loss": 0.0, "n": 0, "data": 0.0, "time": 0.0, "clips": 0}
        if bar is not None:
            bar.set_postfix_str(f"loss {mean_loss:.3f} lr {lr:.4g} {clips * world / t_iter:.1f} clips/s "
                                f"data {100 * meters.data_s / meters.time_s:.0f}% eta {format_duration(eta)}",
                                refresh=False)
            bar.update(1)
        # 10. the caller's step hook: checkpoints, SIGTERM
        if on_step is not None:
            try:
                on_step(it + 1, global_iter, meters, stop)
            except BaseException:
                if bar is not None:
                    bar.close()
                raise
        tic = time.perf_counter()
    if bar is not None:
        bar.close()
    return {**meters.summary(), "global_iter": global_iter, "stop": stop}


def _micro_batches(batch: Dict[str, Any], accum_steps: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor, float, bool]]:
    """``(video, label, share, last)`` for each of the ``accum_steps`` micro-batches of ``batch``: rows
    cut in order (``tensor_split``), ``share`` = rows / batch rows, so that sum(share x micro-batch mean
    loss) is the batch's mean loss and the summed gradients are its gradient; ``last`` marks the one
    after which the gradients are complete. Without accumulation: the batch itself, share 1."""
    video, label = batch["video"], batch["label"]  # (B, 3, T, H, W), (B,)
    if accum_steps == 1:
        yield video, label, 1.0, True
        return
    rows = video.shape[0]
    if rows < accum_steps:
        raise ValueError(f"a batch of {rows} rows cannot be cut into {accum_steps} micro-batches")
    for j, (v, y) in enumerate(zip(video.tensor_split(accum_steps), label.tensor_split(accum_steps))):
        yield v, y, v.shape[0] / rows, j == accum_steps - 1


def _weighted(loss: torch.Tensor, share: float) -> torch.Tensor:
    """``share`` x ``loss`` (the loss itself for a whole batch: no extra op, the same bits)."""
    return loss if share == 1.0 else loss * share


def _grad_sync(model: nn.Module, last: bool) -> contextlib.AbstractContextManager:
    """DDP's ``no_sync()`` before the last micro-batch (the gradients stay local and add up; the last
    backward all-reduces their sum); nothing for a plain model or the last micro-batch."""
    no_sync = getattr(model, "no_sync", None)  # (DDP, also through torch.compile's wrapper)
    return contextlib.nullcontext() if last or no_sync is None else no_sync()


def compiled(model: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(model)`` (mode default) when ``enabled``, else ``model`` itself. The compiled
    wrapper shares ``model``'s parameters and buffers; checkpoints, exports and FLOP counts keep using
    ``model`` (its state dict has no ``_orig_mod.`` prefixes). The first step of each input shape and
    mode (train / eval) compiles: seconds to minutes; it pays on GPUs, not on CPUs (docs/training.md)."""
    return torch.compile(model) if enabled else model


def _bn_modules(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, BatchNormBase) and m.track_running_stats]


@torch.no_grad()
def precise_bn(model: nn.Module, loader: DataLoader, num_batches: int, prep: DevicePrep,
               amp_dtype: Optional[torch.dtype], accum_steps: int = 1) -> int:
    """Recompute BN running statistics as the plain average over ``num_batches`` training batches.

    Runs ``forward_features`` (the BN layers; no dropout, so no RNG is used) in train
    mode, then averages the statistics over processes. Returns the batches used. With
    ``accum_steps`` K > 1 each batch runs as the training step's K micro-batches (each one
    batch of the average), so precise BN needs no more memory than the step.
    """
    bns = _bn_modules(model)
    if not bns:
        return 0
    saved = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches seen
    was_training = model.training
    model.train()
    used = 0
    for batch in loader:
        if used >= num_batches:
            break
        for video in batch["video"].tensor_split(accum_steps):  # the step's micro-batches (rows cut in order)
            with autocast(prep.device, amp_dtype):
                model.forward_features(prep(video))
        used += 1
    for bn, m in zip(bns, saved):
        bn.momentum = m
        if du.get_world_size() > 1:
            for buf in (bn.running_mean, bn.running_var):
                du.all_reduce_sum(buf).div_(du.get_world_size())
    model.train(was_training)
    return used


# ---------------------------------------------------------------------------
# Whole run
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class CheckpointPolicy:
    """When training checkpoints are written, kept and resumed from (TRAIN.*)."""
    auto_resume: bool  # resume from the newest checkpoint in OUTPUT_DIR (TRAIN.AUTO_RESUME)
    period: int  # every N epochs, and at the end (TRAIN.CHECKPOINT_PERIOD)
    iters: int  # every N iterations inside an epoch; 0: never (TRAIN.CHECKPOINT_ITERS)
    keep_last: int  # the newest N are kept (TRAIN.KEEP_LAST)
    keep_best: bool  # checkpoint_best.pth: the best validation top-1 (TRAIN.KEEP_BEST)


def build_checkpoint_policy(cfg: CfgNode) -> CheckpointPolicy:
    t = cfg.TRAIN
    return CheckpointPolicy(auto_resume=t.AUTO_RESUME, period=t.CHECKPOINT_PERIOD, iters=t.CHECKPOINT_ITERS,
                            keep_last=t.KEEP_LAST, keep_best=t.KEEP_BEST)


@dataclass(frozen=True)
class FitSettings:
    """What the run's steps after the set-up use (``build_fit_settings``): a few plain values and the
    objects that the checkpoints, the validation and the final test take."""
    output_dir: str
    config_text: str  # the resolved config as YAML (config.yaml, checkpoints)
    seed: int
    max_epoch: int
    batch_size: int  # global (TRAIN.BATCH_SIZE)
    lr: float  # SOLVER.BASE_LR scaled to the global batch
    clip_norm: float  # SOLVER.CLIP_GRAD_NORM; 0: no clipping
    accum_steps: int  # micro-batches per optimizer step (TRAIN.ACCUM_STEPS)
    compile: bool  # torch.compile the training and evaluation steps (TRAIN.COMPILE)
    log_period: int
    eval_period: int
    precise_bn_batches: int
    max_broken_fraction: float
    checkpoints: CheckpointPolicy
    eval: EvalSettings  # validation; its ``prep`` and ``loader`` serve the training batches too
    test: Optional[TestSettings]  # the final test (None: TRAIN.TEST_AT_END off)

    @property
    def prep(self) -> DevicePrep:
        return self.eval.prep

    @property
    def loader(self) -> LoaderSettings:
        return self.eval.loader


def build_fit_settings(cfg: CfgNode, device: torch.device) -> FitSettings:
    t, s, d = cfg.TRAIN, cfg.SOLVER, cfg.DATA
    ev = build_eval_settings(cfg, device)
    return FitSettings(
        output_dir=cfg.OUTPUT_DIR, config_text=dump_cfg(cfg), seed=cfg.SEED, max_epoch=s.MAX_EPOCH,
        batch_size=t.BATCH_SIZE, lr=scaled_lr(s.BASE_LR, t.BATCH_SIZE, s.REFERENCE_BATCH_SIZE),
        clip_norm=s.CLIP_GRAD_NORM, accum_steps=t.ACCUM_STEPS, compile=t.COMPILE, log_period=t.LOG_PERIOD,
        eval_period=t.EVAL_PERIOD, precise_bn_batches=t.PRECISE_BN_BATCHES, max_broken_fraction=d.MAX_BROKEN_FRACTION,
        checkpoints=build_checkpoint_policy(cfg), eval=ev,
        test=build_test_settings(cfg, ev) if t.TEST_AT_END else None)


@dataclass
class _Run:
    """What the set-up builds, before any file is written."""
    device: torch.device
    rank: int
    world: int
    amp_dtype: Optional[torch.dtype]
    cpu_note: str
    train_set: Dataset
    val_set: Optional[Dataset]
    test_set: Optional[Dataset]
    sampler: du.TrainSampler
    loader: TrainLoader  # the training batches (and precise BN's), one DataLoader for the run
    model: nn.Module  # the plain module: checkpoints, precise BN, and what DDP and torch.compile wrap
    eval_model: nn.Module  # validation and the final test: ``model``, or torch.compile(model) (TRAIN.COMPILE)
    optimizer: torch.optim.Optimizer
    schedule: WarmupCosineSchedule
    scaler: torch.amp.GradScaler
    settings: FitSettings
    init_note: str = ""
    criterion: Optional[nn.Module] = None  # the training loss (MODEL.LOSS); None: cross-entropy
    batch_transform: Optional[Callable[..., Tuple[torch.Tensor, torch.Tensor]]] = None  # MIXUP.*; None: off

    @property
    def main(self) -> bool:
        return self.rank == 0


@dataclass
class _Position:
    """Where training continues: 0-based epoch, iterations of it done, and the epoch's meters."""
    epoch: int = 0
    iter: int = 0
    global_iter: int = 0
    meters: Optional[EpochMeters] = None
    checkpoint: Optional[str] = None  # the checkpoint resumed from
    best: Dict[str, float] = field(default_factory=dict)  # the best validation so far: {"top1", "epoch"}


def train(cfg: CfgNode, *, dataset_builder: Optional[DatasetBuilder] = None) -> Dict:
    """Train the model of ``cfg`` (resuming automatically), validate, and test at the end.

    ``dataset_builder(cfg, split)`` defaults to ``gcvideo.data.build_dataset``.
    Returns (on every process) ``{"epochs", "global_iter", "checkpoint", "val", "test"}``.
    """
    device = select_device(cfg.DEVICE)
    stops = StopSignals()  # SIGTERM / Ctrl-C: one line saying what is saved, no traceback
    with du.process_group(device.type, cfg.DIST.TIMEOUT), stops.installed():
        # (the steps run in their own function: its locals, the DDP/SyncBN model among them, are
        # freed before the process groups are destroyed)
        return _train_steps(cfg, device, dataset_builder or build_dataset, stops)


def _train_steps(cfg: CfgNode, device: torch.device, builder: DatasetBuilder, stops: StopSignals) -> Dict:
    # 1. set-up: data, model, initial weights, every file the run needs -- all before any is written
    run = build_run(cfg, device, builder)
    fs = run.settings
    # 2. the output folder: lock (rank 0), leftovers of earlier runs, config.yaml
    with claim_output_dir(fs.output_dir, fs.config_text):
        stops.note = f"before training; the checkpoints in {checkpoint_dir(fs.output_dir)} are as they were"
        # 3. resume: weights, optimizer, position, RNG states
        pos = _resume(run, fs.output_dir if fs.checkpoints.auto_resume else None, fs.seed)
        if pos.epoch >= fs.max_epoch:  # a finished run started again: its test only if it has none yet
            fit = {"global_iter": pos.global_iter, "checkpoint": pos.checkpoint, "val": []}
            if _say_finished(pos, fs):
                return {"epochs": fs.max_epoch, **fit, "test": None}
        else:
            # 4. the epochs
            fit = _fit(run, pos, fs, stops)
        # 5. the full multi-view test of the final weights
        test_result = _final_test(run, fit["checkpoint"], fs.test, stops) if fs.test is not None else None
    return {"epochs": fs.max_epoch, "global_iter": fit["global_iter"], "checkpoint": fit["checkpoint"],
            "val": fit["val"], "test": test_result}


def _say_finished(pos: _Position, fs: FitSettings) -> bool:
    """Rank 0 says that the run finished at ``pos`` and where its report is, or that its final test is
    still to run. True when it is complete (nothing to train, its report written or no test at the end)."""
    tag, run_main = os.path.splitext(os.path.basename(pos.checkpoint or ""))[0], du.is_main_process()
    found = (earlier_report(fs.output_dir, tag, fs.test.views, fs.test.setup["view_protocol"])
             if fs.test is not None and run_main else None)
    report = du.broadcast_object(found)  # rank 0's view of a shared folder decides for every process
    again = f"python tools/test_net.py OUTPUT_DIR {fs.output_dir}"
    if run_main:
        if fs.test is not None and report is None:
            print(f"training finished at epoch {pos.epoch} ({pos.checkpoint}); running its final test", flush=True)
        elif report is None:
            print(f"run finished at epoch {pos.epoch}: {pos.checkpoint}; to test it: {again}", flush=True)
        else:
            print(f"run finished at epoch {pos.epoch}; report: {report}; to test again: {again} (a new report "
                  "folder; this one is kept)", flush=True)
    return fs.test is None or report is not None


def _accum_note(batch_size: int, world: int, accum_steps: int) -> str:
    """How a process makes its share of the global batch, for the log ("" without accumulation)."""
    if accum_steps == 1:
        return ""
    return (f" ({world} x {accum_steps} micro-batches of {batch_size // (world * accum_steps)} videos, "
            "gradients accumulated; BN statistics per micro-batch)")


def _precision_name(setting: str, amp_dtype: Optional[torch.dtype]) -> str:
    """What the step runs in, for the log: "bf16", "fp16" or "fp32", with "(auto)" when resolved from "auto"."""
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp_dtype, "fp32")
    return f"{name} (auto)" if setting == "auto" else name


def build_run(cfg: CfgNode, device: torch.device, builder: DatasetBuilder) -> _Run:
    """Datasets, sampler, model (initial weights), optimizer and the run's settings; raises before
    anything is written (a label map of another class count than MODEL.NUM_CLASSES, annotation errors,
    a training set smaller than one global batch, an unreadable or unfitting TRAIN.INIT_FROM, a missing
    test annotation or label map)."""
    t = cfg.TRAIN
    rank, world = du.get_rank(), du.get_world_size()
    class_names(cfg.DATA.LABEL_MAP, cfg.MODEL.NUM_CLASSES)  # a label map of another class count: refused here
    set_determinism(t.DETERMINISTIC, device)
    cpu_note = tune_cpu(t.CPU_THREADS, t.CPU_KEEP_FREED_MEMORY, cfg.DATA.NUM_WORKERS, device)
    settings = build_fit_settings(cfg, device)  # (the values below come from it, read from the config once)
    amp_dtype = autocast_dtype(settings.eval.mixed_precision, device)
    print_slow_bf16_warning(settings.eval.mixed_precision, device)
    # -- data (annotation errors, fewer clips than one global batch), and the test set used at the end
    train_set = builder(cfg, "train")
    sampler = du.TrainSampler(len(train_set), settings.batch_size, rank, world, settings.seed)
    loader = TrainLoader(train_set, sampler, sampler.local_batch, settings.loader.for_device(device),
                         seed=settings.seed, rank=rank, collate_fn=collate_train)  # K clips per video (DATA.NUM_SAMPLES) as K rows
    val_set = builder(cfg, "val") if settings.eval_period > 0 else None
    test_set = build_test_set(cfg, builder, why="TRAIN.TEST_AT_END is on but ",
                              hint=", or set TRAIN.TEST_AT_END False") if settings.test is not None else None
    # -- model (same initial weights on every process); TRAIN.INIT_FROM unless a checkpoint will be resumed
    seed_everything(settings.seed)
    model = build_model(cfg)
    init_note = ""
    if t.INIT_FROM:  # also when resuming: the checkpoints may all turn out damaged (then it is the start)
        report = load_pretrained(model, t.INIT_FROM, purpose="finetune")
        init_note = f"initialised from {t.INIT_FROM}:\n{getattr(report, 'summary', lambda: report)()}"
    if t.SYNC_BN and world > 1:
        model = du.convert_sync_batchnorm(model, device.type)
    model.to(device)
    if settings.prep.channels_last:
        model_channels_last(model)
    # -- optimizer, schedule, grad scaler
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer, sampler.iters_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    return _Run(device=device, rank=rank, world=world, amp_dtype=amp_dtype, cpu_note=cpu_note,
                train_set=train_set, val_set=val_set, test_set=test_set, sampler=sampler, loader=loader, model=model,
                eval_model=compiled(model, settings.compile),
                optimizer=optimizer, schedule=schedule, scaler=scaler, settings=settings, init_note=init_note,
                criterion=build_criterion(cfg), batch_transform=build_mixup(cfg, rank))


def _resume(run: _Run, output_dir: Optional[str], seed: int) -> _Position:
    """Load the newest complete checkpoint of ``output_dir`` (None: start afresh). Rank 0 picks it and
    every process loads that one: a stale view of a shared folder on one machine must not make it
    start over while the others resume."""
    pos, rng = _Position(), None
    if output_dir is not None:
        found = load_latest_checkpoint(output_dir) if run.main else None
        path = du.broadcast_object(found[0] if found else None)
        if path is not None:
            path, ck = found if run.main else (path, load_checkpoint_file(path))
            pos, rng = _load_training_state(run, path, ck)
    if pos.global_iter == 0 and run.init_note and run.main:
        print(run.init_note, flush=True)
    seed_everything(seed * 1000 + run.rank)  # per-process RNG streams (dropout) from here on
    if rng is not None:
        set_rng_state(rng)
    return pos


def _training_objects(run: _Run) -> TrainingObjects:
    """What the checkpoints save: the plain model (not its DDP / compiled wrapper), optimizer, schedule, scaler."""
    return TrainingObjects(run.model, run.optimizer, run.schedule, run.scaler)


def _load_training_state(run: _Run, path: str, ck: Dict[str, Any]) -> Tuple[_Position, Dict]:
    saved = restore_training_state(_training_objects(run), path, ck, run.sampler.iters_per_epoch)
    pos = _Position(saved.next_epoch, saved.next_iter, saved.global_iter,
                    EpochMeters(**saved.meters) if saved.meters else None, path, saved.best)
    if run.main and pos.epoch < run.settings.max_epoch:  # (a finished run says so instead)
        print(f"resuming from {path}: epoch {pos.epoch + 1}, iteration {pos.iter}", flush=True)
    return pos, rng_state_of(ck, run.rank)


def _fit(run: _Run, pos: _Position, fs: FitSettings, stops: StopSignals) -> Dict:
    """Epochs ``pos.epoch..max_epoch-1``: train, precise BN, validate, checkpoint, log."""
    model, ipe = run.model, run.sampler.iters_per_epoch
    ddp = DistributedDataParallel(model, device_ids=[run.device.index] if run.device.type == "cuda" else None) \
        if run.world > 1 else model
    step_model = run.eval_model if ddp is model else compiled(ddp, fs.compile)  # (one compiled module per wrapper)
    logger = RunLogger(fs.output_dir, enabled=run.main, resume_iter=pos.global_iter)
    broken = BrokenVideoTracker(output_dir=fs.output_dir if run.main else None, num_videos=len(run.train_set),
                                max_fraction=fs.max_broken_fraction, videos=_video_paths(run.train_set))
    state = {"global_iter": pos.global_iter, "best": dict(pos.best)}

    def save(next_epoch: int, next_iter: int, meters: Optional[EpochMeters] = None, regular: bool = True,
             best: bool = False) -> Optional[str]:
        """The position's checkpoint (``regular``) and/or the TRAIN.KEEP_BEST copy (``best``)."""
        rngs = du.all_gather_object(get_rng_state())
        path = None
        if run.main:
            position = RunPosition(next_epoch, next_iter, state["global_iter"], ipe,
                                   asdict(meters) if meters is not None else {}, dict(state["best"]))
            ck = training_state(_training_objects(run), position, world_size=run.world, config_text=fs.config_text,
                                rngs=rngs)
            path = save_checkpoint(fs.output_dir, ck, fs.checkpoints.keep_last) if regular else None
            if best:
                atomic_save(ck, best_checkpoint_path(fs.output_dir))
        du.barrier()
        return path

    def stop_with_checkpoint(epoch: int, done: int, meters: EpochMeters) -> None:
        path = save(epoch, done, meters)
        name = stops.name or "SIGTERM"  # (a signal to another process of the group)
        logger.info(f"{name}: saved {path}; run the same command again to resume")
        raise TrainingStopped(128 + signal.Signals[name])

    def on_step(epoch: int, done: int, global_iter: int, meters: EpochMeters, stop: bool) -> None:
        # checkpoint every TRAIN.CHECKPOINT_ITERS iterations; on SIGTERM/SIGINT save and exit (a stop in the
        # epoch's last iteration is saved after the loop, as "all iterations of the epoch done")
        state["global_iter"] = global_iter
        if done < ipe and stop:
            stop_with_checkpoint(epoch, done, meters)
        if done < ipe and fs.checkpoints.iters and done % fs.checkpoints.iters == 0:
            save(epoch, done, meters)

    logger.info(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {run.world} x "
                f"{run.device.type}, {len(run.train_set)} clips, {ipe} iterations/epoch, global batch "
                f"{fs.batch_size}{_accum_note(fs.batch_size, run.world, fs.accum_steps)}, LR {fs.lr:.4g}, precision {_precision_name(fs.eval.mixed_precision, run.amp_dtype)}; "
                f"output {fs.output_dir}"
                + (f"; {run.cpu_note}" if run.cpu_note else ""))
    numerics = StepNumerics(run.scaler, run.amp_dtype, fs.clip_norm, fs.accum_steps)
    val_results: List[Dict] = []
    last_ckpt = None
    with stops.deferring(f"at once, without saving; the newest checkpoint in {checkpoint_dir(fs.output_dir)} is "
                         "kept: run the same command again to resume from it"):
        try:
            for epoch in range(pos.epoch, fs.max_epoch):
                start = pos.iter if epoch == pos.epoch else 0
                meters = (pos.meters if epoch == pos.epoch else None) or EpochMeters()
                # 1. one epoch of training, from the resumed position
                try:
                    stats = train_one_epoch(
                        step_model, run.criterion, run.optimizer, run.schedule, run.loader.epoch(epoch, start),
                        fs.prep, EpochPosition(epoch, ipe, start, state["global_iter"], fs.max_epoch * ipe, meters),
                        numerics, run.batch_transform,
                        StepHooks(logger, fs.log_period, lambda: bool(stops.name), broken.update,
                                  lambda *a, e=epoch: on_step(e, *a)))
                except NonFiniteLossError as e:
                    raise NonFiniteLossError(f"{e}; {_resume_note(fs.output_dir, fs.checkpoints.auto_resume, run.main)}") from None
                state["global_iter"] = stats["global_iter"]
                if stats["stop"]:  # a stop in the epoch's last iteration: the resumed run does the epoch's end
                    stop_with_checkpoint(epoch, ipe, meters)
                record = {"epoch": epoch + 1, "global_iter": state["global_iter"], "loss": stats["loss"],
                          "lr": run.optimizer.param_groups[0]["lr"], "data_share": stats["data_share"],
                          "epoch_time_s": stats["time_s"]}
                # 2. precise BN statistics before a validation and at the end; 3. validation
                last = epoch + 1 == fs.max_epoch
                validate = run.val_set is not None and ((epoch + 1) % fs.eval_period == 0 or last)
                a = _precise_bn_and_validate(run, fs, epoch, validate, last)
                if validate:
                    record.update(val_top1=a["top1"], val_top5=a["top5"], val_mean_class_acc=a["mean_class_acc"])
                    val_results.append({"epoch": epoch + 1, **a})
                    logger.info(f"epoch {epoch + 1}: loss {stats['loss']:.4f}, val top-1 {a['top1']:.2f}% "
                                f"top-5 {a['top5']:.2f}% ({a['videos']} videos)")
                # 4. checkpoint every TRAIN.CHECKPOINT_PERIOD epochs and at the end, and the best validation
                #    top-1 so far (TRAIN.KEEP_BEST); the epoch's record
                due = last or (fs.checkpoints.period and (epoch + 1) % fs.checkpoints.period == 0)
                best = validate and fs.checkpoints.keep_best and a["top1"] > state["best"].get("top1", -1.0)
                if best:
                    state["best"] = {"top1": a["top1"], "epoch": epoch + 1}
                if due or best:
                    path = save(epoch + 1, 0, regular=bool(due), best=best)
                    last_ckpt = path if due else last_ckpt
                if best:
                    logger.info(f"epoch {epoch + 1}: best val top-1 so far, saved "
                                f"{best_checkpoint_path(fs.output_dir)}")
                logger.log_epoch(record)
        finally:
            run.loader.close()  # the persistent workers end before the final test forks its own
            logger.close()
    if not last_ckpt and run.main:
        found = list_checkpoints(fs.output_dir)
        last_ckpt = found[-1] if found else None
    return {"global_iter": state["global_iter"], "checkpoint": last_ckpt, "val": val_results}


def _resume_note(output_dir: str, auto_resume: bool, main: bool) -> str:
    """What running the same command again resumes from (rank 0 reads and verifies it, as the resume
    will: a damaged newest checkpoint is set aside here and the message names the one before)."""
    if not main or not auto_resume:
        return f"the checkpoints in {checkpoint_dir(output_dir)} are unchanged" + \
            ("" if auto_resume else " (TRAIN.AUTO_RESUME is off: running the same command again starts afresh)")
    found = load_latest_checkpoint(output_dir)
    if found is None:
        return f"no readable checkpoint in {checkpoint_dir(output_dir)}: running the same command again starts afresh"
    path, ck = found
    return (f"the checkpoints are unchanged: running the same command again resumes from {path} (epoch "
            f"{ck['next_epoch'] + 1}, iteration {ck['next_iter']})")


def _precise_bn_and_validate(run: _Run, fs: FitSettings, epoch: int, validate: bool, last: bool) -> Optional[Dict]:
    """Precise BN statistics (before a validation and at the end; no RNG is used), the same BN
    statistics on every process, then the validation metrics over all videos (None without)."""
    if fs.precise_bn_batches > 0 and (validate or last):
        # the epoch's first training batches, from the training loader's workers (no second set)
        precise_bn(run.model, run.loader.epoch(epoch, 0), fs.precise_bn_batches, fs.prep, run.amp_dtype,
                   fs.accum_steps)
    du.broadcast_buffers(run.model)  # every process evaluates (and rank 0 saves) the same BN statistics
    if not validate:
        return None
    ev = fs.eval
    loader = build_eval_loader(run.val_set, ev.batch_size, ev.loader.num_workers, False)
    return evaluate(run.eval_model, loader, ev.prep, num_classes=ev.num_classes, ensemble_method=ev.ensemble_method,
                    amp_dtype=run.amp_dtype).metrics["all"]


def _final_test(run: _Run, last_ckpt: Optional[str], settings: TestSettings, stops: StopSignals) -> Optional[Dict]:
    stops.note = (f"{'before' if stops.name else 'during'} the final test: training is finished and saved "
                  f"({last_ckpt}); run the same command again to run the test")
    if stops.name:  # the signal came during the last epoch's validation
        stops.stop_now(stops.name, 128 + signal.Signals[stops.name])
    tag = os.path.splitext(os.path.basename(last_ckpt))[0] if last_ckpt else "final"
    return run_test(run.eval_model, run.test_set, settings, tag)


def _video_paths(dataset: Dataset) -> Optional[List[str]]:
    """The video paths of a ``VideoDataset`` (None for datasets without ``records``)."""
    records = getattr(dataset, "records", None)
    return [r.path for r in records] if records is not None else None
