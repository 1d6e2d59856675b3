"""Training: ``train(cfg)`` sets a run up and loops over epochs; ``train_one_epoch`` is one epoch.

The same code runs one CPU process, one GPU, or ``torchrun`` over many machines
(DDP; nccl on GPUs, gloo on CPUs). Restarting the same command resumes from the
newest complete checkpoint in OUTPUT_DIR; with TRAIN.DETERMINISTIC a run killed
mid-epoch ends with the same weights as an uninterrupted one, because the
checkpoint holds the position inside the epoch and every RNG state, the sampler
order depends only on (SEED, epoch), and data augmentation only on
(SEED, epoch, index).
"""
from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fvcore.common.config import CfgNode
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from gcvideo.config import dump_cfg
from gcvideo.engine import distributed as du
from gcvideo.engine.checkpoint import (FORMAT, get_rng_state, load_latest_checkpoint, remove_stale_temporaries,
                                       save_checkpoint, set_rng_state)
from gcvideo.engine.common import (autocast, autocast_dtype, model_channels_last, select_device, seed_everything,
                                   set_determinism, to_device, tune_cpu_memory)
from gcvideo.engine.logger import RunLogger, format_duration
from gcvideo.engine.optim import WarmupCosineSchedule, build_optimizer, build_schedule, scaled_lr
from gcvideo.engine.tester import build_eval_loader, evaluate, run_test
from gcvideo.utils.io import atomic_write_text, load_checkpoint_file, path_manager

__all__ = ["train", "train_one_epoch", "TrainState", "NonFiniteLossError", "TrainingStopped"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped before the weights were updated."""


class TrainingStopped(SystemExit):
    """SIGTERM: a checkpoint was saved and the run exits (restart the same command to resume)."""


@dataclass
class TrainState:
    """Everything ``train_one_epoch`` needs besides the model, optimizer and data."""
    cfg: CfgNode
    device: torch.device
    epoch: int  # 0-based epoch being trained
    start_iter: int  # iterations of this epoch already done (resume)
    global_iter: int  # iterations done over all epochs
    iters_per_epoch: int
    amp_dtype: Optional[torch.dtype]
    logger: RunLogger
    broken: Any  # BrokenVideoTracker or None
    save: Callable[[int, int], Optional[str]]  # (next_epoch, next_iter) -> checkpoint path
    stop_requested: Callable[[], bool]
    run_start: float = field(default_factory=time.perf_counter)
    iters_this_run: int = 0


# ---------------------------------------------------------------------------
# One epoch
# ---------------------------------------------------------------------------
def train_one_epoch(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                    schedule: WarmupCosineSchedule, scaler: torch.amp.GradScaler, st: TrainState) -> Dict:
    """Train one epoch (from ``st.start_iter``); returns the epoch's mean loss and timings."""
    cfg, device = st.cfg, st.device
    clip_norm, log_period = cfg.SOLVER.CLIP_GRAD_NORM, cfg.TRAIN.LOG_PERIOD
    world = du.get_world_size()
    model.train()
    bar = st.logger.progress_bar(st.iters_per_epoch, st.start_iter, f"epoch {st.epoch + 1}/{cfg.SOLVER.MAX_EPOCH}")
    loss_sum, loss_n, data_wait, busy, stop = 0.0, 0, 0.0, 0.0, False
    window = {"loss": 0.0, "n": 0, "data": 0.0, "time": 0.0, "clips": 0}
    tic = time.perf_counter()
    for it, batch in enumerate(loader, start=st.start_iter):
        # 1. time spent waiting for the loader
        t_data = time.perf_counter() - tic
        # 2. learning rate of this iteration (warmup, then cosine)
        lr = schedule.step(st.global_iter)
        # 3. clips and labels to the device: (B, 3, T, H, W), (B,) (B = videos x DATA.NUM_SAMPLES;
        #    uint8 clips are normalised there)
        x = to_device(batch["video"], device, cfg.TRAIN.CHANNELS_LAST, cfg.DATA.MEAN, cfg.DATA.STD)
        y = batch["label"].to(device, non_blocking=True)
        # 4. forward and cross-entropy (in autocast when mixed precision is on)
        with autocast(device, st.amp_dtype):
            logits = model(x)  # (B, K)
        loss = F.cross_entropy(logits.float(), y)
        # 5. one all-reduce: mean loss, stop request, videos skipped as broken
        skipped = [s for s in batch.get("skipped", []) if s]
        flags = torch.tensor([loss.item(), float(st.stop_requested()), float(len(skipped))], dtype=torch.float64)
        flags = du.all_reduce_sum(flags.to(device)).cpu() if world > 1 else flags
        mean_loss, stop, n_skipped = flags[0].item() / world, flags[1].item() > 0, int(flags[2].item())
        # 6. a NaN / infinite loss stops training before the weights change
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(
                f"loss is {mean_loss} at epoch {st.epoch + 1}, iteration {it + 1} of {st.iters_per_epoch} "
                f"(global iteration {st.global_iter + 1}); stopping. The last good checkpoint in "
                f"{os.path.join(cfg.OUTPUT_DIR, 'checkpoints')} is unchanged; lower SOLVER.BASE_LR or "
                "set SOLVER.CLIP_GRAD_NORM and restart.")
        # 7. backward; gradient norm (clipped if asked); a NaN / infinite gradient also stops
        #    training before the weights change (with fp16 the grad scaler skips such steps instead)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # no-op without fp16
        if clip_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
        if not scaler.is_enabled() and not math.isfinite(float(grad_norm)):
            raise NonFiniteLossError(
                f"gradient norm is {float(grad_norm)} (loss {mean_loss:.4g}) at epoch {st.epoch + 1}, iteration "
                f"{it + 1} of {st.iters_per_epoch}; stopping before the weights change. The last good checkpoint "
                f"in {os.path.join(cfg.OUTPUT_DIR, 'checkpoints')} is unchanged; lower SOLVER.BASE_LR or set "
                "SOLVER.CLIP_GRAD_NORM and restart.")
        scaler.step(optimizer)
        scaler.update()
        st.global_iter += 1
        st.iters_this_run += 1
        # 8. broken videos the loader replaced: every process learns them, rank 0 writes the list
        if n_skipped and st.broken is not None:
            for lines in du.all_gather_object(skipped):
                _feed_broken(st.broken, lines)
        # 9. meters, JSON log line, progress bar
        t_iter = time.perf_counter() - tic
        loss_sum, loss_n, data_wait, busy = loss_sum + mean_loss, loss_n + 1, data_wait + t_data, busy + t_iter
        window = {"loss": window["loss"] + mean_loss, "n": window["n"] + 1, "data": window["data"] + t_data,
                  "time": window["time"] + t_iter, "clips": window["clips"] + x.shape[0] * world}
        remaining = (cfg.SOLVER.MAX_EPOCH * st.iters_per_epoch - st.global_iter)
        eta = remaining * (time.perf_counter() - st.run_start) / st.iters_this_run
        if (it + 1) % log_period == 0 or it + 1 == st.iters_per_epoch:
            st.logger.log_iter({"epoch": st.epoch + 1, "iter": it + 1, "global_iter": st.global_iter,
                                "epoch_progress": st.epoch + (it + 1) / st.iters_per_epoch,
                                "loss": window["loss"] / window["n"], "lr": lr,
                                "clips_per_s": window["clips"] / window["time"],
                                "data_share": window["data"] / window["time"], "eta_s": eta})
            window = {"loss": 0.0, "n": 0, "data": 0.0, "time": 0.0, "clips": 0}
        if bar is not None:
            bar.set_postfix_str(f"loss {mean_loss:.3f} lr {lr:.4g} {x.shape[0] * world / t_iter:.1f} clips/s "
                                f"data {100 * data_wait / busy:.0f}% eta {format_duration(eta)}", refresh=False)
            bar.update(1)
        # 10. checkpoint every TRAIN.CHECKPOINT_ITERS iterations; on SIGTERM save and exit
        done = it + 1
        if done < st.iters_per_epoch and (stop or (cfg.TRAIN.CHECKPOINT_ITERS
                                                   and done % cfg.TRAIN.CHECKPOINT_ITERS == 0)):
            path = st.save(st.epoch, done)
            if stop:
                if bar is not None:
                    bar.close()
                st.logger.info(f"SIGTERM: saved {path}; run the same command again to resume")
                raise TrainingStopped(143)
        tic = time.perf_counter()
    if bar is not None:
        bar.close()
    # (a stop requested in the last iteration is handled by the caller after the epoch checkpoint)
    return {"loss": loss_sum / max(loss_n, 1), "data_share": data_wait / max(busy, 1e-9),
            "iters": loss_n, "time_s": busy, "stop": stop}


def _feed_broken(tracker, lines: List[str]) -> None:
    """Give the tracker each ``path<TAB>reason`` line of a batch's ``skipped`` field."""
    tracker.update(lines)  # raises TooManyBrokenVideos past DATA.MAX_BROKEN_FRACTION


# ---------------------------------------------------------------------------
# Whole run
# ---------------------------------------------------------------------------
def _default_builder(cfg: CfgNode, split: str) -> Dataset:
    from gcvideo.data import build_dataset

    return build_dataset(cfg, split)


def _prepare_output_dir(cfg: CfgNode) -> None:
    """Create OUTPUT_DIR and save the resolved config; refuse a folder with someone else's files."""
    out = cfg.OUTPUT_DIR
    cfg_path = os.path.join(out, "config.yaml")
    if path_manager.exists(out):
        entries = [e for e in path_manager.ls(out) if not e.startswith(".")]
        if entries and not path_manager.exists(cfg_path):
            raise FileExistsError(
                f"OUTPUT_DIR = {out!r} already holds files not written by gcvideo ({', '.join(sorted(entries)[:5])}"
                f"{', ...' if len(entries) > 5 else ''}); choose an empty or new folder so nothing is overwritten")
    path_manager.mkdirs(out)
    text = dump_cfg(cfg)
    if path_manager.exists(cfg_path):
        with path_manager.open(cfg_path, "r") as f:
            old = f.read()
        if old != text:  # keep the earlier run's config beside the new one
            n = 1
            while path_manager.exists(os.path.join(out, f"config.{n}.yaml")):
                n += 1
            atomic_write_text(os.path.join(out, f"config.{n}.yaml"), old)
    atomic_write_text(cfg_path, text)


def _make_broken_tracker(cfg: CfgNode, num_videos: int, write: bool):
    try:
        from gcvideo.data import BrokenVideoTracker
    except ImportError:
        return None
    return BrokenVideoTracker(output_dir=cfg.OUTPUT_DIR if write else None, num_videos=num_videos,
                              max_fraction=cfg.DATA.MAX_BROKEN_FRACTION)


def _bn_modules(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def precise_bn(model: nn.Module, loader: DataLoader, num_batches: int, device: torch.device,
               amp_dtype: Optional[torch.dtype], channels_last: bool, mean: Optional[List[float]] = None,
               std: Optional[List[float]] = None) -> int:
    """Recompute BN running statistics as the plain average over ``num_batches`` training batches.

    Runs ``forward_features`` (the BN layers; no dropout, so no RNG is used) in train
    mode, then averages the statistics over processes. Returns the batches used.
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
        with autocast(device, amp_dtype):
            model.forward_features(to_device(batch["video"], device, channels_last, mean, std))
        used += 1
    for bn, m in zip(bns, saved):
        bn.momentum = m
        if du.get_world_size() > 1:
            for buf in (bn.running_mean, bn.running_var):
                du.all_reduce_sum(buf).div_(du.get_world_size())
    model.train(was_training)
    return used


def train(cfg: CfgNode, *, dataset_builder: Optional[Callable[[CfgNode, str], Dataset]] = None) -> Dict:
    """Train the model of ``cfg`` (resuming automatically), validate, and test at the end.

    ``dataset_builder(cfg, split)`` defaults to ``gcvideo.data.build_dataset``.
    Returns (on every process) ``{"epochs", "global_iter", "checkpoint", "val", "test"}``.
    """
    device = select_device(cfg)
    with du.process_group(device.type):
        return _train(cfg, device, dataset_builder or _default_builder)


def _train(cfg: CfgNode, device: torch.device, builder: Callable[[CfgNode, str], Dataset]) -> Dict:
    from gcvideo.models import build_model

    t, s = cfg.TRAIN, cfg.SOLVER
    rank, world = du.get_rank(), du.get_world_size()
    main = rank == 0
    # -- output folder, config copy, leftovers of killed checkpoint writes
    if main:
        _prepare_output_dir(cfg)
        remove_stale_temporaries(cfg.OUTPUT_DIR)
    du.barrier()
    set_determinism(t.DETERMINISTIC, device)
    memory_note = tune_cpu_memory(cfg, device)
    amp_dtype = autocast_dtype(cfg, device)
    # -- data
    train_set = builder(cfg, "train")
    sampler = du.TrainSampler(len(train_set), t.BATCH_SIZE, rank, world, cfg.SEED)
    iters_per_epoch = sampler.iters_per_epoch
    val_set = builder(cfg, "val") if t.EVAL_PERIOD > 0 else None
    # -- model (same initial weights on every process), optimizer, schedule, grad scaler
    seed_everything(cfg.SEED)
    model = build_model(cfg)
    resume = None
    if t.AUTO_RESUME:
        # rank 0 picks the checkpoint and every process loads that one (a stale view of a shared
        # folder on one machine must not make it start over while the others resume)
        found = load_latest_checkpoint(cfg.OUTPUT_DIR) if main else None
        path = du.broadcast_object(found[0] if found else None)
        if path is not None:
            resume = found if main else (path, load_checkpoint_file(path))
    if resume is None and t.INIT_FROM:
        from gcvideo.models import load_pretrained

        report = load_pretrained(model, t.INIT_FROM)
        if main:
            print(f"initialised from {t.INIT_FROM}:\n{getattr(report, 'summary', lambda: report)()}", flush=True)
    if t.SYNC_BN and world > 1:
        model = du.convert_sync_batchnorm(model, device.type)
    model.to(device)
    if t.CHANNELS_LAST:
        model_channels_last(model)
    optimizer = build_optimizer(cfg, model)
    schedule = build_schedule(cfg, optimizer, iters_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    # -- resume: weights, optimizer, position, RNG states of this process
    next_epoch, next_iter, global_iter = 0, 0, 0
    rng, pending_stats = None, None
    if resume is not None:
        path, ck = resume
        try:
            model.load_state_dict(ck["model"])
        except RuntimeError as e:
            raise RuntimeError(f"checkpoint {path} does not fit the model of this config; use a new "
                               f"OUTPUT_DIR for a different model: {str(e).splitlines()[0]}") from e
        optimizer.load_state_dict(ck["optimizer"])
        schedule.load_state_dict(ck["scheduler"])
        if ck.get("grad_scaler"):
            scaler.load_state_dict(ck["grad_scaler"])
        next_epoch, next_iter, global_iter = ck["next_epoch"], ck["next_iter"], ck["global_iter"]
        if ck.get("iters_per_epoch") not in (None, iters_per_epoch) and next_iter:
            raise RuntimeError(f"checkpoint {path} was written mid-epoch with {ck['iters_per_epoch']} iterations "
                               f"per epoch but this run has {iters_per_epoch} (dataset or TRAIN.BATCH_SIZE changed)")
        # a SIGTERM in an epoch's last iteration saved before that epoch's end-of-epoch work
        # (precise BN, validation, epoch checkpoint, log record): its training stats come along
        if next_iter == iters_per_epoch:
            pending_stats = ck.get("epoch_stats")
        rng = ck["rng"][rank] if rank < len(ck["rng"]) else ck["rng"][0]
        if main:
            print(f"resuming from {path}: epoch {next_epoch + 1}, iteration {next_iter}", flush=True)
    seed_everything(cfg.SEED * 1000 + rank)  # per-process RNG streams (dropout) from here on
    if rng is not None:
        set_rng_state(rng)
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) \
        if world > 1 else model
    # -- logging, broken-video tracking, SIGTERM
    logger = RunLogger(cfg.OUTPUT_DIR, enabled=main, resume_iter=global_iter)
    broken = _make_broken_tracker(cfg, len(train_set), write=main)
    stop = {"requested": False}
    old_handler = None
    try:
        old_handler = signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    except ValueError:  # not the main thread
        pass

    def save(next_e: int, next_i: int, extra: Optional[Dict] = None) -> Optional[str]:
        rngs = du.all_gather_object(get_rng_state())
        path = None
        if main:
            state = {"format": FORMAT, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": schedule.state_dict(), "grad_scaler": scaler.state_dict() if scaler.is_enabled() else {},
                     "next_epoch": next_e, "next_iter": next_i, "global_iter": st.global_iter,
                     "iters_per_epoch": iters_per_epoch, "world_size": world, "config": dump_cfg(cfg), "rng": rngs,
                     **(extra or {})}
            path = save_checkpoint(cfg.OUTPUT_DIR, state, t.KEEP_LAST)
        du.barrier()
        return path

    st = TrainState(cfg=cfg, device=device, epoch=next_epoch, start_iter=next_iter, global_iter=global_iter,
                    iters_per_epoch=iters_per_epoch, amp_dtype=amp_dtype, logger=logger, broken=broken,
                    save=save, stop_requested=lambda: stop["requested"])
    logger.info(f"training {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters on {world} x "
                f"{device.type}, {len(train_set)} clips, {iters_per_epoch} iterations/epoch, global batch "
                f"{t.BATCH_SIZE}, LR {scaled_lr(cfg):.4g}, precision {t.MIXED_PRECISION}; output {cfg.OUTPUT_DIR}"
                + (f"; {memory_note}" if memory_note else ""))
    val_results: List[Dict] = []
    last_ckpt = None
    try:
        for epoch in range(next_epoch, s.MAX_EPOCH):
            st.epoch, st.start_iter = epoch, (next_iter if epoch == next_epoch else 0)
            # per-epoch order and augmentation, workers seeded from (SEED, epoch, rank)
            sampler.set_epoch(epoch, st.start_iter)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            gen = torch.Generator().manual_seed(cfg.SEED * 7919 + epoch * 104729 + rank)
            loader = DataLoader(train_set, batch_size=sampler.local_batch, sampler=sampler,
                                num_workers=cfg.DATA.NUM_WORKERS, drop_last=True, generator=gen,
                                pin_memory=cfg.DATA.PIN_MEMORY and device.type == "cuda",
                                collate_fn=getattr(train_set, "collate", None))  # K clips per video as K rows
            stats = train_one_epoch(ddp, loader, optimizer, schedule, scaler, st)
            if stats["stop"]:  # SIGTERM seen during the epoch's last iteration: save at "all iterations
                # done", so that the run resumed with the same command does this epoch's evaluation
                done = {k: v for k, v in stats.items() if k != "stop"}
                last_ckpt = save(epoch, iters_per_epoch, {"epoch_stats": done})
                logger.info(f"SIGTERM: saved {last_ckpt}; run the same command again to resume")
                raise TrainingStopped(143)
            if stats["iters"] == 0 and pending_stats is not None and epoch == next_epoch:
                stats = dict(pending_stats, stop=False)  # resumed after that save: the epoch's own stats
            record = {"epoch": epoch + 1, "global_iter": st.global_iter, "loss": stats["loss"],
                      "lr": optimizer.param_groups[0]["lr"], "data_share": stats["data_share"],
                      "epoch_time_s": stats["time_s"]}
            # precise BN statistics before a validation and at the end (neither uses the RNGs)
            last = epoch + 1 == s.MAX_EPOCH
            validate = val_set is not None and ((epoch + 1) % t.EVAL_PERIOD == 0 or last)
            if t.PRECISE_BN_BATCHES > 0 and (validate or last):
                sampler.set_epoch(epoch, 0)
                bn_loader = DataLoader(train_set, batch_size=sampler.local_batch, sampler=sampler,
                                       num_workers=cfg.DATA.NUM_WORKERS, drop_last=True,
                                       generator=torch.Generator().manual_seed(cfg.SEED + epoch),
                                       collate_fn=getattr(train_set, "collate", None))
                precise_bn(model, bn_loader, t.PRECISE_BN_BATCHES, device, amp_dtype, t.CHANNELS_LAST,
                           cfg.DATA.MEAN, cfg.DATA.STD)
            du.broadcast_buffers(model)  # every process evaluates (and rank 0 saves) the same BN statistics
            if validate:
                res = evaluate(model, build_eval_loader(val_set, cfg.TEST.BATCH_SIZE, cfg.DATA.NUM_WORKERS, False),
                               num_classes=cfg.MODEL.NUM_CLASSES, device=device,
                               ensemble_method=cfg.TEST.ENSEMBLE_METHOD, amp_dtype=amp_dtype,
                               channels_last=t.CHANNELS_LAST, mean=cfg.DATA.MEAN, std=cfg.DATA.STD)
                a = res.metrics["all"]
                record.update(val_top1=a["top1"], val_top5=a["top5"], val_mean_class_acc=a["mean_class_acc"])
                val_results.append({"epoch": epoch + 1, **a})
                logger.info(f"epoch {epoch + 1}: loss {stats['loss']:.4f}, val top-1 {a['top1']:.2f}% "
                            f"top-5 {a['top5']:.2f}% ({a['videos']} videos)")
            # checkpoint every TRAIN.CHECKPOINT_PERIOD epochs and at the end
            if last or (t.CHECKPOINT_PERIOD and (epoch + 1) % t.CHECKPOINT_PERIOD == 0):
                last_ckpt = save(epoch + 1, 0)
            logger.log_epoch(record)
        if not last_ckpt and main:
            from gcvideo.engine.checkpoint import list_checkpoints
            found = list_checkpoints(cfg.OUTPUT_DIR)
            last_ckpt = found[-1] if found else None
        # full multi-view test of the final weights
        test_result = None
        if t.TEST_AT_END:
            tag = os.path.splitext(os.path.basename(last_ckpt))[0] if last_ckpt else "final"
            test_result = run_test(cfg, model, device, tag=tag, dataset_builder=builder)
        return {"epochs": s.MAX_EPOCH, "global_iter": st.global_iter, "checkpoint": last_ckpt,
                "val": val_results, "test": test_result}
    finally:
        logger.close()
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
